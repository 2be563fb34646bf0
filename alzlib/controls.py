"""Leakage controls (notebooks 05 and 09): the random-label control and the leakage demonstration.

The random-label control follows Yagis et al. (Sci Rep 2021): every subject gets one random label (the subjects'
own labels permuted, so the class counts per subject stay), all of its slices carry it in every split, and the
control is trained, selected and scored on those random labels. A model can only beat chance on them by
recognising subjects it saw in training, so it scores at chance under a split that keeps subjects apart and far
above chance under one that does not (Yagis et al.: about 96% under a slice split, 50% under a subject split).

The leakage demonstration trains the same control budget under {subject split, the shipped split where there is
one, a slice split} x {true labels, random subject labels} and scores each on its own test split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from alzlib import config, evaluation, preprocessing, sampling, splits, training
from alzlib.storage import write_csv, write_json

ARCHITECTURE = "baseline_cnn"
LABEL_CONDITIONS = ("true", "random")
# A stream number of its own, so the random labels do not repeat the draws of any other seeded step.
RANDOM_LABEL_STREAM = 7919
# At least this many subjects, so that a 15% test split holds 10 or more (evaluation.MIN_CONTROL_TEST_SUBJECTS).
MIN_SUBSET_SUBJECTS = 70
# The control's budget. The recipe's own (Adam 1e-4 with plateau decay, strong augmentation, dropout, 4 epochs at
# the cpu profile) cannot memorise: measured on the cpu cohort under a slice split, random-label test balanced
# accuracy stayed at 0.25 after 30 epochs with dropout on (train accuracy 0.38). Without augmentation and dropout,
# at a constant 1e-3, it rose to 0.46 after 25 epochs on 504 training images, while the same budget under a subject
# split stayed at chance. A control that cannot memorise cannot detect leakage. On a Kaggle-like fixture (100
# scans x 32 slices, the shipped split holding each scan's last 7 slices) the shipped-split control scored 0.31
# [0.26, 0.35] at 64 px / 30 epochs and 0.38 [0.33, 0.43] at 32 px / 60 epochs keeping the last epoch, in less
# time (142 s against 219 s); a raw-pixel 1-NN on the same random labels scored 0.41. Hence the profile's
# control_image_size and control_epochs.
CONTROL_LEARNING_RATE = 1e-3
BUDGET_REASON = ("memorisation budget: the recipe's augmentation, dropout and short schedule stop a CNN from "
                 "memorising subjects, so a control trained with them could not detect leakage; the last epoch is "
                 "kept because a validation split of held-out subjects scores random labels at chance whatever the "
                 "epoch, so selecting on it picks noise")
DEMONSTRATION_FOLDER = "leakage_demonstration"


def control_budget(profile: config.Profile) -> dict:
    """Return the budget every control and demonstration model trains with under `profile` (image size separate)."""
    return {"epochs": profile.control_epochs, "learning_rate": CONTROL_LEARNING_RATE, "augmentation": False,
            "dropout": False, "keep": "last epoch", "reason": BUDGET_REASON}


def random_subject_labels(frame: pd.DataFrame, seed: int) -> pd.Series:
    """Return one random label per subject (indexed by subject id): the subjects' labels permuted with `seed`."""
    labels = splits.subject_labels(frame)
    order = np.random.default_rng([seed, RANDOM_LABEL_STREAM]).permutation(len(labels))
    return pd.Series(labels.to_numpy()[order], index=labels.index, name="random_label")


def with_random_labels(frame: pd.DataFrame, seed: int, class_names: list[str] | None = None) -> pd.DataFrame:
    """Return `frame` with each row's label replaced by its subject's random label (the true one kept as true_label).

    `class_names` (None: those of `frame`) give the label indices: the task's, when `frame` is a subset.
    """
    names = list(class_names) if class_names is not None else training.class_names_of(frame)
    random = frame["subject_id"].map(random_subject_labels(frame, seed))
    return frame.assign(true_label=frame["label"], label=random,
                        label_index=random.map({name: index for index, name in enumerate(names)}).astype(int))


def control_subset(frame: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """Return the rows the controls use: whole subjects drawn stratified by class, thinned to about `max_images`.

    At least MIN_SUBSET_SUBJECTS subjects are drawn (so a 15% test split still has 10 or more). Where they hold
    more than `max_images` images, every k-th slice of each subject is kept (in slice order where known): thinning
    keeps each scan's slices spread over its whole extent, so a leaky split still has near neighbours on both
    sides, while dropping subjects would leave too few to test.
    """
    from sklearn.model_selection import train_test_split

    if len(frame) <= max_images:
        return frame
    subjects = splits.subject_labels(frame)
    wanted = max(MIN_SUBSET_SUBJECTS, round(len(subjects) * max_images / len(frame)))
    if wanted < len(subjects):
        counts = subjects.value_counts()
        # Stratify where scikit-learn can (two subjects per class, room for every class on both sides).
        stratify = subjects if counts.min() >= 2 and min(wanted, len(subjects) - wanted) >= len(counts) else None
        chosen, _ = train_test_split(subjects.index.to_numpy(), train_size=wanted, random_state=seed,
                                     stratify=stratify)
        frame = frame[frame["subject_id"].isin(set(chosen))]
    return sampling.thin_slices(frame, max_images)


def policy_split(frame: pd.DataFrame, policy: str, seed: int) -> pd.Series:
    """Return the split of every row under `policy` (subject, shipped or slice), computed on the whole frame."""
    if policy == "subject":
        return splits.subject_split(frame, seed)
    if policy == "shipped":
        return splits.shipped_policy_split(frame, seed)
    if policy == "slice":
        return splits.slice_split(frame, seed)
    raise ValueError(f"Unknown split policy {policy!r}: expected one of {config.SPLIT_POLICIES}.")


def demonstration_policies(manifest: pd.DataFrame) -> list[str]:
    """Return the split policies the demonstration compares: subject, shipped (where the data ship one), slice."""
    shipped = "shipped_split" in manifest and manifest["shipped_split"].notna().all()
    return ["subject", *(["shipped"] if shipped else []), "slice"]


def control_frame(manifest: pd.DataFrame, settings: config.Settings, policy: str | None = None,
                  labels: str = "random") -> pd.DataFrame:
    """Return the rows (original index kept) and labels a control model trains and is scored on.

    `policy` None is the run's own split (the manifest's split column); `labels` is 'true' or 'random'.
    """
    if labels not in LABEL_CONDITIONS:
        raise ValueError(f"labels must be one of {LABEL_CONDITIONS}, got {labels!r}.")
    # Subjects are drawn on the true labels, so every cell of the demonstration uses the same subjects; the random
    # labels are those subjects' own labels permuted, so the subset keeps its class counts (drawn over the whole set,
    # a class of two subjects could vanish from a 74-subject subset: measured on a Kaggle-size set).
    rows = control_subset(manifest, settings.profile.control_images, settings.seed).index
    frame = manifest
    if policy is not None and policy != settings.split:
        frame = manifest.assign(split=policy_split(manifest, policy, settings.seed))
    frame = frame.loc[rows]
    return with_random_labels(frame, settings.seed, training.class_names_of(manifest)) if labels == "random" else frame


def control_description(frame: pd.DataFrame, manifest: pd.DataFrame, policy: str, labels: str,
                        profile: config.Profile) -> dict:
    """Return what a control run trains on, for its recipe record."""
    return {"kind": "random subject labels (Yagis et al. 2021)" if labels == "random" else "true labels",
            "labels": labels, "split_policy": policy, "leaky_split": policy in config.LEAKY_SPLIT_POLICIES,
            "images": int(len(frame)), "subjects": int(frame["subject_id"].nunique()),
            "of_images": int(len(manifest)), "of_subjects": int(manifest["subject_id"].nunique()),
            "image_size": profile.control_image_size, "budget": control_budget(profile)}


def frame_for_record(record: dict, manifest: pd.DataFrame, settings: config.Settings) -> pd.DataFrame:
    """Return the rows and labels a trained model is evaluated on: the manifest, or its control's own frame."""
    control = record.get("control")
    if not control:
        return manifest
    return control_frame(manifest, settings, control["split_policy"], control["labels"])


def _cell_settings(settings: config.Settings, is_control: bool) -> config.Settings:
    """Return settings at the control's image size, with outputs in the main folders (the control) or the demo's."""
    profile = dataclasses.replace(settings.profile, image_size=settings.profile.control_image_size)
    paths = settings.paths if is_control else config.OutputPaths(settings.paths.root / DEMONSTRATION_FOLDER)
    return dataclasses.replace(settings, profile=profile, paths=paths)


def control_images(images: np.ndarray, size: int) -> np.ndarray:
    """Return the cached images letterboxed to the control's size, exactly as evaluation prepares them."""
    if images.shape[1:] == (size, size):
        return images
    return np.stack([preprocessing.letterbox(image, size, interpolation="area") for image in images])


def train_control(settings: config.Settings, manifest: pd.DataFrame, images: np.ndarray, policy: str | None = None,
                  labels: str = "random", verbose: int = 0) -> dict:
    """Train the baseline CNN under the control budget on `policy` x `labels`; return its recipe record.

    The run's own split with random labels is the random-label control (models/baseline_cnn_random_labels);
    every other cell goes under leakage_demonstration/.
    """
    policy = policy or settings.split
    frame = control_frame(manifest, settings, policy, labels)
    is_control = policy == settings.split and labels == "random"
    name = config.CONTROL_MODEL_NAME if is_control else f"leakage_{policy}_{labels}"
    cell_settings = _cell_settings(settings, is_control)
    return training.train_model(ARCHITECTURE, cell_settings, frame.reset_index(drop=True),
                                control_images(images[frame.index.to_numpy()], cell_settings.profile.image_size),
                                output_name=name, verbose=verbose,
                                budget=control_budget(settings.profile), class_names=training.class_names_of(manifest),
                                control=control_description(frame, manifest, policy, labels, settings.profile))


def score_control(record: dict, settings: config.Settings, manifest: pd.DataFrame, images: np.ndarray) -> dict:
    """Return the test balanced accuracy of a control model on its own labels, with a subject-bootstrap interval."""
    control = record["control"]
    frame = control_frame(manifest, settings, control["split_policy"], control["labels"])
    test = frame[frame["split"] == "test"]
    if test.empty:
        raise ValueError(f"{record['model']}: its {control['split_policy']} split has no test images.")
    folder = settings.paths.models if record["model"] == config.CONTROL_MODEL_NAME else (
        settings.paths.root / DEMONSTRATION_FOLDER / "models")
    model = training.load_trained_model(folder / f"{record['model']}.keras")
    probabilities = evaluation.predict_probabilities(
        model, evaluation.prepare_for_model(images[test.index.to_numpy()], record["preprocessing"]))
    interval = evaluation.subject_bootstrap(test["label_index"].to_numpy(), probabilities,
                                            test["subject_id"].to_numpy(), "balanced_accuracy", seed=settings.seed)
    return {"split_policy": control["split_policy"], "labels": control["labels"],
            "leaky_split": control["leaky_split"], "model": record["model"], "test_images": int(len(test)),
            "test_subjects": int(test["subject_id"].nunique()), "balanced_accuracy": interval["estimate"],
            "low": interval["low"], "high": interval["high"], "chance": 1.0 / record["num_classes"],
            "includes_chance": bool(interval["low"] <= 1.0 / record["num_classes"] <= interval["high"]),
            "above_chance": bool(interval["low"] > 1.0 / record["num_classes"]),
            "best_epoch": record["best_epoch"], "epochs": record["epochs_run"]}


def _inflation(cells: list[dict]) -> dict | None:
    """Return the slice split's true-label score minus the subject split's (the accuracy leakage adds)."""
    scores = {cell["split_policy"]: cell["balanced_accuracy"] for cell in cells if cell["labels"] == "true"}
    if "slice" not in scores or "subject" not in scores:
        return None
    return {"slice_minus_subject": scores["slice"] - scores["subject"], "slice": scores["slice"],
            "subject": scores["subject"], "labels": "true",
            "note": "difference of two estimates on different test splits; no paired interval"}


def demonstration_verdict(cells: list[dict]) -> str:
    """Return one sentence on whether the random-label control tripped where it must and stayed quiet elsewhere."""
    random = {cell["split_policy"]: cell for cell in cells if cell["labels"] == "random"}
    parts = []
    for policy, cell in random.items():
        state = "includes chance" if cell["includes_chance"] else (
            "is above chance" if cell["above_chance"] else "is below chance (no sign of leakage)")
        parts.append(f"{policy} split: {cell['balanced_accuracy']:.2f} [{cell['low']:.2f}, {cell['high']:.2f}] {state}")
    slice_cell = random.get("slice")
    detects = bool(slice_cell and slice_cell["above_chance"])
    return (f"Random-label control, test balanced accuracy: {'; '.join(parts)}. "
            + ("It detects the leak of the slice split, so a clean result on another split means something."
               if detects else "It did NOT detect the slice split's leak at this budget: a clean result on the "
               "run's split is weak evidence."))


def leakage_demonstration(settings: config.Settings, manifest: pd.DataFrame, images: np.ndarray,
                          data_label: str, verbose: int = 0) -> dict:
    """Train and score every {split policy} x {true, random labels} cell; write leakage_demonstration.json/.csv."""
    cells = []
    for policy in demonstration_policies(manifest):
        for labels in LABEL_CONDITIONS:
            record = train_control(settings, manifest, images, policy, labels, verbose)
            cell = score_control(record, settings, manifest, images)
            cells.append({**cell, "run_split": policy == settings.split,
                          "training_seconds": record["training_seconds"]})
    result = {"data_label": data_label, "architecture": ARCHITECTURE, "run_split": settings.split,
              "budget": {**control_budget(settings.profile), "image_size": settings.profile.control_image_size},
              "metric": "test balanced accuracy, slice level, 95% "
              "subject-bootstrap interval", "cells": cells, "inflation": _inflation(cells),
              "verdict": demonstration_verdict(cells)}
    folder = settings.paths.evaluation
    write_json(folder / "leakage_demonstration.json", evaluation.strict_json(result))
    write_csv(folder / "leakage_demonstration.csv", demonstration_table(result))
    return result


def demonstration_table(result: dict) -> pd.DataFrame:
    """Return the demonstration as a table: one row per split policy, a column block per label condition."""
    rows = []
    for cell in result["cells"]:
        leak = " (leaks by design)" if cell["leaky_split"] else ""
        rows.append({"split": f"{cell['split_policy']}{leak}{' [this run]' if cell['run_split'] else ''}",
                     "labels": cell["labels"], "balanced_accuracy": round(cell["balanced_accuracy"], 3),
                     "interval": f"[{cell['low']:.3f}, {cell['high']:.3f}]", "test_subjects": cell["test_subjects"],
                     "test_images": cell["test_images"], "above_chance": cell["above_chance"]})
    return pd.DataFrame(rows)
