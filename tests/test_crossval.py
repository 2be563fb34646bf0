"""Subject-level cross-validation and the non-deep baseline, on small data made here."""

import numpy as np
import pandas as pd
import pytest

from alzlib import config, crossval, linear
from alzlib.storage import read_json, read_parquet

CLASSES = list(config.CLASS_NAMES)


def cohort(subjects_per_class=(8, 7, 6, 5), slices=3, size=16, signal=1.0, seed=0):
    """Return a manifest and uint8 images: each class brightens its own quadrant by `signal` x 60 grey levels."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for label, count in enumerate(subjects_per_class):
        for subject in range(count):
            base = rng.normal(100, 10, (size, size))
            for index in range(slices):
                image = base + rng.normal(0, 5, (size, size))
                half = size // 2
                image[(label // 2) * half:(label // 2 + 1) * half, (label % 2) * half:(label % 2 + 1) * half] += (
                    60 * signal)
                images.append(np.clip(image, 0, 255).astype(np.uint8))
                rows.append({"path": f"/d/{CLASSES[label]}/s{label}_{subject}_{index}.png",
                             "subject_id": f"S{label}_{subject}", "label": CLASSES[label], "label_index": label,
                             "slice_index": index, "split": "train", "sha256": f"{label}{subject}{index}"})
    manifest = pd.DataFrame(rows)
    manifest["split"] = manifest["subject_id"].map(
        {subject: ("test" if n % 5 == 0 else "val" if n % 5 == 1 else "train")
         for n, subject in enumerate(sorted(manifest["subject_id"].unique()))})
    return manifest, np.stack(images)


def test_folds_are_disjoint_by_subject_and_cover_every_subject_once_as_test():
    manifest, _ = cohort()
    assignment, notes = crossval.fold_assignments(manifest, 5, seed=3)
    assert set(assignment.index) == set(manifest["subject_id"]) and set(assignment) == {1, 2, 3, 4, 5}
    tested = []
    for fold in range(1, 6):
        frame = crossval.fold_manifest(manifest, assignment, fold, seed=3)
        by_split = {split: set(rows["subject_id"]) for split, rows in frame.groupby("split")}
        assert set(by_split) == {"train", "val", "test"}
        assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                    or by_split["val"] & by_split["test"])
        assert frame.groupby("subject_id")["split"].nunique().max() == 1  # a subject's slices stay together
        tested.extend(by_split["test"])
    assert sorted(tested) == sorted(manifest["subject_id"].unique())  # each subject tested exactly once
    # Stratified: every class in every test fold here (5+ subjects per class for 5 folds), so no note.
    assert notes == []
    again, _ = crossval.fold_assignments(manifest, 5, seed=3)
    assert again.equals(assignment)


def test_thin_classes_are_reported_and_too_few_subjects_refused():
    manifest, _ = cohort(subjects_per_class=(6, 6, 6, 2))
    _, notes = crossval.fold_assignments(manifest, 5, seed=0)
    assert len(notes) == 1 and "ModerateDemented has 2 subjects for 5 folds: 3 test folds lack it" in notes[0]
    small, _ = cohort(subjects_per_class=(1, 1, 1, 0))
    with pytest.raises(ValueError, match="FOLDS=5 needs at least 5 subjects; the manifest has 3"):
        crossval.fold_assignments(small, 5, seed=0)
    with pytest.raises(ValueError, match="folds >= 2"):
        crossval.fold_assignments(manifest, 1, seed=0)


def test_linear_baseline_learns_a_planted_signal_and_stays_at_chance_without_one():
    manifest, images = cohort(subjects_per_class=(10, 10, 10, 10))
    class_names = CLASSES
    model, fit = linear.train(manifest, images, class_names, seed=0)
    test = (manifest["split"] == "test").to_numpy()
    probabilities, logits = linear.predict(model, images[test], 4)
    assert probabilities.shape == logits.shape == (test.sum(), 4)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    truth = manifest["label_index"].to_numpy()[test]
    assert np.mean(probabilities.argmax(axis=1) == truth) > 0.9
    assert fit["C"] in linear.C_GRID and fit["pca_components"] <= fit["train_images"] - 1
    null_manifest, null_images = cohort(subjects_per_class=(10, 10, 10, 10), signal=0.0, seed=1)
    null_model, _ = linear.train(null_manifest, null_images, class_names, seed=0)
    null_test = (null_manifest["split"] == "test").to_numpy()
    predicted = linear.predict(null_model, null_images[null_test], 4)[0].argmax(axis=1)
    assert np.mean(predicted == null_manifest["label_index"].to_numpy()[null_test]) < 0.6


def test_linear_baseline_keeps_a_column_for_a_class_the_train_split_lacks():
    manifest, images = cohort(subjects_per_class=(6, 6, 6, 0))
    model, _ = linear.train(manifest, images, CLASSES, seed=0)
    probabilities, logits = linear.predict(model, images[:5], 4)
    assert probabilities.shape == (5, 4) and np.all(probabilities[:, 3] < 1e-15)
    assert np.all(logits[:, 3] < logits[:, :3].min(axis=1))
    with pytest.raises(ValueError, match="must be a non-empty N x H x W"):
        linear.pixel_features(np.zeros((0, 8, 8)))


def test_cross_validating_the_linear_baseline_pools_every_subject_once_and_summarises(tmp_path, monkeypatch):
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))
    settings = config.load_settings("smoke", seed=1, data_dir=tmp_path, folds=3)
    manifest, images = cohort(subjects_per_class=(6, 5, 5, 4))
    lines = []
    record = crossval.run_model_folds("linear_pixels", settings, manifest, images, CLASSES, "test cohort",
                                      echo=lines.append)
    assert len(lines) == 3 and record["folds"] == 3
    oof = read_parquet(settings.paths.crossval / "linear_pixels" / "oof_predictions.parquet")
    assert len(oof) == len(manifest) and oof["path"].is_unique  # every image scored once, out of fold
    assert set(oof["fold"]) == {1, 2, 3} and oof.groupby("subject_id")["fold"].nunique().max() == 1
    for fold in (1, 2, 3):
        assert (settings.paths.folds / str(fold) / "evaluation" / "linear_pixels" / "metrics.json").is_file()
        fold_record = read_json(settings.paths.folds / str(fold) / "models" / "linear_pixels.json")
        assert fold_record["fold"]["fold"] == fold and fold_record["framework"] == "scikit-learn"
    summary = crossval.summarise(settings, manifest)
    assert summary["models"] == ["linear_pixels"]
    assert any("baseline_cnn" == entry["model"] for entry in summary["skipped"])
    subject_row = next(row for row in summary["rows"] if row["level"] == "subject")
    assert subject_row["subjects"] == manifest["subject_id"].nunique()
    assert 0.0 <= subject_row["balanced_accuracy_mean"] <= 1.0 and subject_row["balanced_accuracy_sd"] >= 0
    assert subject_row["balanced_accuracy_pooled_low"] <= subject_row["balanced_accuracy_pooled"]
    table = crossval.summary_table(summary)
    assert "balanced_accuracy (mean ± sd over folds)" in table.columns
    fold_metrics = pd.read_csv(settings.paths.crossval / "fold_metrics.csv")
    assert sorted(fold_metrics["fold"].unique()) == [1, 2, 3]
    # Folds made from other data are never summarised as if they were this run's.
    changed = manifest.assign(sha256=manifest["sha256"] + "x")
    stale = crossval.summarise(settings, changed)
    assert stale["models"] == [] and "stale" in stale["skipped"][0]["reason"]


def test_a_single_split_run_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))
    settings = config.load_settings("smoke", data_dir=tmp_path, folds=1)
    manifest, _ = cohort()
    record = crossval.summarise(settings, manifest)
    assert record["folds"] == 1 and "single split only" in record["note"]
    assert not crossval.cross_validated(settings, "baseline_cnn")
    assert crossval.cross_validated(config.load_settings("smoke", data_dir=tmp_path), "baseline_cnn")
    with pytest.raises(ValueError, match="FOLDS must be a positive integer"):
        config.load_settings("smoke", data_dir=tmp_path, folds=0)
