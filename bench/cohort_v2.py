#!/usr/bin/env python
"""Synthetic cohort versions 1 and 2 (and version 2 at site B): generation time and difficulty calibration.

    python bench/cohort_v2.py                                  # cpu profile, seed 42, into a temp folder
    python bench/cohort_v2.py --profile smoke --cohorts 2A,2B --output /tmp/cohort_v2.json
    python bench/cohort_v2.py --cnn                            # also train the baseline CNN on one split (slow)

Per cohort it prints the generation seconds; the subject-level balanced accuracy of a logistic regression on
global statistics (whole-brain intensity, CSF fraction, brain area) against the same statistics inside the medial
temporal window (synthetic.feature_calibration); the project's linear baseline (alzlib.linear: PCA + logistic
regression on 32 x 32 pixels of the letterboxed images) under 5-fold subject cross-validation, at slice and
subject level; and the acquisition measurements that tell site B from site A. With --cnn, the baseline CNN
(4 epochs, the pipeline's recipe and augmentation) and the linear baseline are trained on the same 70/15/15
subject split and scored on its test subjects. Writes outputs/bench/cohort_v2.json unless --output says where.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
from alzlib import config, synthetic

COHORTS = {"1A": ("1", "A"), "2A": ("2", "A"), "2B": ("2", "B")}


def load_images(data_dir: Path, image_size: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Return the cohort's metadata (with label_index) and its images letterboxed to image_size, as the cache holds."""
    from alzlib import preprocessing

    frame = synthetic.load_metadata(data_dir)
    frame["label_index"] = frame.label.map({name: index for index, name in enumerate(config.CLASS_NAMES)})
    images = np.stack([preprocessing.letterbox(synthetic._read_grey(data_dir / name), image_size)
                       for name in frame.file])
    return frame, images


def _inner_split(frame: pd.DataFrame, rows: np.ndarray, seed: int) -> pd.Series:
    """Return train/val for the rows of one outer training fold: 20% of its subjects (stratified) validate."""
    from sklearn.model_selection import train_test_split

    subjects = frame[rows].groupby("subject_id").label.first()
    _, validation = train_test_split(subjects.index.to_numpy(), test_size=0.2, stratify=subjects.to_numpy(),
                                     random_state=seed)
    return frame.subject_id.isin(validation).map({True: "val", False: "train"})


def linear_cross_validation(frame: pd.DataFrame, images: np.ndarray, seed: int, folds: int = 5) -> dict:
    """Return the linear baseline's pooled out-of-fold balanced accuracy over subject folds (slice and subject)."""
    from sklearn.model_selection import StratifiedGroupKFold
    from threadpoolctl import threadpool_limits

    from alzlib import linear
    from alzlib.metrics import balanced_accuracy

    classes = list(config.CLASS_NAMES)
    probabilities = np.zeros((len(frame), len(classes)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):
        for train, test in splitter.split(images, frame.label_index, groups=frame.subject_id):
            rows = np.zeros(len(frame), dtype=bool)
            rows[train] = True
            manifest = frame.assign(split=np.where(rows, _inner_split(frame, rows, seed), "test"))
            model, _ = linear.train(manifest, images, classes, seed)
            probabilities[test] = linear.predict(model, images[test], len(classes))[0]
    return {"slice_balanced_accuracy": balanced_accuracy(frame.label_index, probabilities.argmax(1)),
            **_subject_score(frame, probabilities), "folds": folds}


def _subject_score(frame: pd.DataFrame, probabilities: np.ndarray) -> dict:
    """Return the subject-level balanced accuracy of slice probabilities averaged per subject."""
    from alzlib.metrics import balanced_accuracy

    per_subject = pd.DataFrame(probabilities).groupby(frame.subject_id.to_numpy()).mean()
    labels = frame.groupby("subject_id").label_index.first().loc[per_subject.index]
    return {"subject_balanced_accuracy": balanced_accuracy(labels, per_subject.to_numpy().argmax(1))}


def acquisition_properties(data_dir: Path, subjects: int = 12) -> dict:
    """Return the median of synthetic.acquisition_statistics over the first `subjects` subjects' slices."""
    frame = synthetic.load_metadata(data_dir)
    chosen = frame[frame.subject_id.isin(frame.subject_id.unique()[:subjects])]
    return pd.DataFrame([synthetic.acquisition_statistics(synthetic._read_grey(data_dir / name))
                         for name in chosen.file]).median().to_dict()


def cnn_against_linear(frame: pd.DataFrame, images: np.ndarray, profile: config.Profile, seed: int) -> dict:
    """Train the baseline CNN (profile epochs, pipeline recipe) and the linear baseline on one subject split."""
    common.quiet_tensorflow()
    from alzlib import linear, models, preprocessing, splits, training
    from alzlib.metrics import balanced_accuracy

    classes = list(config.CLASS_NAMES)
    manifest = frame.assign(split=splits.subject_split(frame, seed).to_numpy())
    started = time.perf_counter()
    model, _ = linear.train(manifest, images, classes, seed)
    test = (manifest.split == "test").to_numpy()
    linear_probabilities = linear.predict(model, images[test], len(classes))[0]
    linear_seconds = time.perf_counter() - started
    recipe = training.training_recipe("baseline_cnn", profile)
    spec = preprocessing.preprocessing_spec("baseline_cnn", profile.image_size)
    network, _ = models.build_model("baseline_cnn", len(classes), profile.image_size)
    training.compile_model(network, recipe)
    started = time.perf_counter()
    # As the pipeline trains it: batch-norm statistics re-estimated on clean images after each epoch, and the
    # epoch with the best validation balanced accuracy kept (no learning-rate plateau within 4 epochs).
    common.train_keeping_best_epoch(network, training.split_arrays(manifest, images, "train"),
                                    training.split_arrays(manifest, images, "val"), spec, profile.epochs,
                                    profile.batch_size, seed, len(classes))
    cnn_probabilities = network.predict(preprocessing.prepare_images(images[test], spec), verbose=0)
    cnn_seconds = time.perf_counter() - started
    labels = manifest.label_index.to_numpy()[test]
    tested = manifest[test].reset_index(drop=True)
    return {"test_subjects": int(tested.subject_id.nunique()), "test_images": int(test.sum()),
            "linear": {"slice_balanced_accuracy": balanced_accuracy(labels, linear_probabilities.argmax(1)),
                       **_subject_score(tested, linear_probabilities), "seconds": linear_seconds},
            "baseline_cnn": {"slice_balanced_accuracy": balanced_accuracy(labels, cnn_probabilities.argmax(1)),
                             **_subject_score(tested, cnn_probabilities), "seconds": cnn_seconds,
                             "epochs": profile.epochs},
            "note": "one split, one seed: the spread between seeds is large at this size"}


def measure(name: str, profile: config.Profile, seed: int, work: Path, cnn: bool) -> dict:
    """Generate one cohort and return its generation time, calibration and acquisition measurements."""
    version, site = COHORTS[name]
    started = time.perf_counter()
    folder = synthetic.generate_cohort(work / name, profile, seed, version, site)
    record = {"cohort": name, "version": version, "site": site, "profile": profile.name, "seed": seed,
              "generate_seconds": time.perf_counter() - started,
              "images": int(sum(profile.cohort_subjects.values()) * profile.slices_per_subject),
              "features": synthetic.feature_calibration(folder, seed), "acquisition": acquisition_properties(folder)}
    if version == "2":
        record["features_true_stage"] = synthetic.feature_calibration(folder, seed, label_column="true_label")
        record["label_noise"] = synthetic.read_json(folder / "cohort.json")["label_noise"]
    frame, images = load_images(folder, profile.image_size)
    record["linear"] = linear_cross_validation(frame, images, seed)
    if cnn:
        record["cnn_split"] = cnn_against_linear(frame, images, profile, seed)
    return record


def main() -> None:
    """Run the benchmark, print its tables and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(config.PROFILES))
    parser.add_argument("--cohorts", default="1A,2A,2B", type=lambda text: common.parse_names(text, COHORTS))
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--cnn", action="store_true", help="also train the baseline CNN on one subject split")
    common.add_output_argument(parser, "cohort_v2")
    arguments = parser.parse_args()
    profile = config.get_profile(arguments.profile)
    machine = common.machine_record()
    with tempfile.TemporaryDirectory(prefix="cohort_v2_bench_") as work:
        results = [measure(name, profile, arguments.seed, Path(work), arguments.cnn) for name in arguments.cohorts]
    rows = [{"cohort": item["cohort"], "images": item["images"], "seconds": item["generate_seconds"],
             "global": item["features"]["global"]["balanced_accuracy"],
             "focal": item["features"]["focal"]["balanced_accuracy"],
             "linear_slice": item["linear"]["slice_balanced_accuracy"],
             "linear_subject": item["linear"]["subject_balanced_accuracy"]} for item in results]
    common.print_table(rows, list(rows[0]), "Synthetic cohorts: subject-level balanced accuracy of global vs "
                                            "focal statistics, linear pixel baseline (5-fold by subject)")
    common.print_table([{"cohort": item["cohort"], **item["acquisition"]} for item in results],
                       ["cohort", "noise", "contrast", "sharpness", "brightness"], "Acquisition measurements")
    if arguments.cnn:
        pairs = [(model, level) for model in ("linear", "baseline_cnn") for level in ("slice", "subject")]
        rows = [{"cohort": item["cohort"], **{f"{model}_{level}": item["cnn_split"][model][f"{level}_balanced_accuracy"]
                                              for model, level in pairs}} for item in results]
        common.print_table(rows, list(rows[0]), "One 70/15/15 subject split: baseline CNN against the linear baseline")
    common.write_result("cohort_v2", arguments.output, {**machine, "results": results})


if __name__ == "__main__":
    main()
