#!/usr/bin/env python
"""Can the baseline CNN beat the linear pixel baseline on the synthetic cohort, and at what budget?

    python bench/cnn_budget.py --version 2 --epochs 4,12 --learning-rates 1e-4,1e-3 --rotations 0.2,0.03
    python bench/cnn_budget.py --version 2 --slices 8 --subjects 1.0 --folds 5 --output /tmp/budget.json

Generates (or reuses) a cpu-profile synthetic cohort, deals its subjects into the same StratifiedGroupKFold folds
the pipeline uses (alzlib.crossval), and trains the linear baseline (alzlib.linear) and the baseline CNN under each
candidate recipe (epochs x learning rate x rotation) on every fold. For each recipe it prints the pooled
out-of-fold subject-level balanced accuracy of both and their paired subject-bootstrap difference
(alzlib.comparison.paired_differences: the pipeline's own rule), plus the CNN's training seconds per fold. The CNN
trains as training.train_model does: balanced class weights, batch-norm statistics re-estimated on clean images
after each epoch, the best validation epoch kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
from alzlib import config, synthetic


def cohort(version: str, slices: int, scale: float, seed: int, root: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Return (metadata with label_index, images letterboxed to 64 px) of a cpu-profile cohort, made if absent."""
    from alzlib import preprocessing

    profile = config.get_profile("cpu")
    subjects = {name: max(4, round(count * scale)) for name, count in profile.cohort_subjects.items()}
    profile = dataclasses.replace(profile, slices_per_subject=slices, cohort_subjects=subjects)
    folder = root / f"v{version}_s{slices}_x{scale:g}_seed{seed}"
    synthetic.ensure_cohort(profile, seed, folder, version=version)
    frame = synthetic.load_metadata(folder)
    frame["label_index"] = frame.label.map({name: index for index, name in enumerate(config.CLASS_NAMES)})
    frame["path"] = [str(folder / name) for name in frame.file]
    images = np.stack([preprocessing.letterbox(synthetic._read_grey(folder / name), profile.image_size)
                       for name in frame.file])
    return frame, images


def fold_manifests(frame: pd.DataFrame, folds: int, seed: int) -> list[pd.DataFrame]:
    """Return one manifest per fold with the pipeline's train/val/test columns (alzlib.crossval)."""
    from alzlib import crossval

    assignment, _ = crossval.fold_assignments(frame, folds, seed)
    return [crossval.fold_manifest(frame, assignment, fold, seed) for fold in range(1, folds + 1)]


def train_cnn(manifest: pd.DataFrame, images: np.ndarray, epochs: int, learning_rate: float, rotation: float,
              seed: int) -> np.ndarray:
    """Train the baseline CNN on `manifest`'s train split and return its test-split probabilities."""
    import keras

    from alzlib import environment, models, preprocessing, training

    environment.set_seeds(seed, False)
    classes = len(config.CLASS_NAMES)
    spec = preprocessing.preprocessing_spec("baseline_cnn", images.shape[1])
    spec["augmentation"] = [dict(layer, factor=rotation) if layer["layer"] == "RandomRotation" else layer
                            for layer in spec["augmentation"]]
    network, _ = models.build_model("baseline_cnn", classes, images.shape[1])
    network.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    common.train_keeping_best_epoch(network, training.split_arrays(manifest, images, "train"),
                                    training.split_arrays(manifest, images, "val"), spec, epochs, 16, seed, classes)
    test_images, _ = training.split_arrays(manifest, images, "test")
    return network.predict(preprocessing.prepare_images(test_images, spec), verbose=0)


def linear_probabilities(manifest: pd.DataFrame, images: np.ndarray, seed: int) -> np.ndarray:
    """Fit the linear baseline on `manifest`'s train split (C on val) and return its test probabilities."""
    from alzlib import linear

    model, _ = linear.train(manifest, images, list(config.CLASS_NAMES), seed)
    test = (manifest.split == "test").to_numpy()
    return linear.predict(model, images[test], len(config.CLASS_NAMES))[0]


def prediction_frame(frame: pd.DataFrame, rows: list[np.ndarray], probabilities: list[np.ndarray]) -> pd.DataFrame:
    """Return the pooled out-of-fold predictions in comparison.paired_differences' layout."""
    tested = pd.concat([frame.loc[row] for row in rows], ignore_index=True)
    stacked = np.concatenate(probabilities)
    columns = {f"prob_{name}": stacked[:, index] for index, name in enumerate(config.CLASS_NAMES)}
    return tested[["path", "subject_id", "label_index"]].assign(pred_index=stacked.argmax(1), **columns)


def score(frame: pd.DataFrame) -> float:
    """Return the subject-level balanced accuracy of mean slice probabilities."""
    from alzlib.metrics import balanced_accuracy

    probabilities = frame.filter(like="prob_").groupby(frame.subject_id).mean()
    labels = frame.groupby("subject_id").label_index.first().loc[probabilities.index]
    return balanced_accuracy(labels, probabilities.to_numpy().argmax(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="2")
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--subjects", type=float, default=1.0, help="scale of the cpu profile's subject counts")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--epochs", default="4")
    parser.add_argument("--learning-rates", default="1e-4")
    parser.add_argument("--rotations", default="0.2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cnn_budget"))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    common.quiet_tensorflow()
    from alzlib import comparison

    frame, images = cohort(args.version, args.slices, args.subjects, args.seed, args.work)
    manifests = fold_manifests(frame, args.folds, args.seed)
    rows = [manifest.index[manifest.split == "test"].to_numpy() for manifest in manifests]
    linear = prediction_frame(frame, rows, [linear_probabilities(m, images, args.seed) for m in manifests])
    print(f"cohort v{args.version}: {frame.subject_id.nunique()} subjects x {args.slices} slices; "
          f"linear_pixels subject BA {score(linear):.3f}", flush=True)
    results = []
    for epochs, rate, rotation in itertools.product(map(int, args.epochs.split(",")),
                                                    map(float, args.learning_rates.split(",")),
                                                    map(float, args.rotations.split(","))):
        started = time.perf_counter()
        cnn = prediction_frame(frame, rows, [train_cnn(m, images, epochs, rate, rotation, args.seed)
                                             for m in manifests])
        seconds = (time.perf_counter() - started) / args.folds
        paired = comparison.paired_differences({"baseline_cnn": cnn, "linear_pixels": linear}).iloc[0]
        result = {"epochs": epochs, "learning_rate": rate, "rotation": rotation, "cnn": score(cnn),
                  "linear": score(linear), "difference": float(paired.difference), "low": float(paired.low),
                  "high": float(paired.high), "supported": bool(paired.supported), "seconds_per_fold": seconds}
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"arguments": vars(args) | {"work": str(args.work)}, "results": results},
                                          indent=2, default=str))


if __name__ == "__main__":
    main()
