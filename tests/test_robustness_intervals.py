"""Corruption errors with subject-bootstrap intervals, a named reference model and a floor under its rise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from alzlib import evaluation, robustness

SUBJECTS, SLICES = 24, 3


def _predictions(drops: dict[str, dict[str, float]], seed: int = 0) -> pd.DataFrame:
    """Return a predict_corrupted-shaped table: per model a clean skill and, per corruption, an error rise per severity.

    `drops` maps model -> {"clean": accuracy, corruption: accuracy lost per severity step}.
    """
    generator = np.random.default_rng(seed)
    subjects = np.repeat([f"S{index:02d}" for index in range(SUBJECTS)], SLICES)
    labels = np.repeat(np.arange(SUBJECTS) % 4, SLICES)
    parts = []
    for model, settings in drops.items():
        conditions = [("clean", 0, 0.0)] + [(name, severity, rise * severity) for name, rise in settings.items()
                                            if name != "clean" for severity in robustness.SEVERITIES]
        for corruption, severity, drop in conditions:
            right = generator.random(len(labels)) < settings["clean"] - drop
            predicted = np.where(right, labels, (labels + 1) % 4)
            probabilities = np.eye(4)[predicted] * 0.6 + 0.1
            part = pd.DataFrame({"model": model, "corruption": corruption, "severity": severity,
                                 "image": np.arange(len(labels)), "subject_id": subjects, "label_index": labels,
                                 "mean_abs_difference": float(severity)})
            parts.append(part.assign(**{f"prob_{index}": probabilities[:, index] for index in range(4)},
                                     pred_index=predicted))
    return pd.concat(parts, ignore_index=True)


DROPS = {"baseline_cnn": {"clean": 0.8, "blur": 0.1, "noise": 0.005},
         "resnet50": {"clean": 0.9, "blur": 0.05, "noise": 0.05}}


def test_point_estimates_equal_the_aggregated_table_and_intervals_hold_them():
    predictions = _predictions(DROPS)
    with_intervals = robustness.corruption_error_intervals(predictions, n_bootstrap=300, seed=1)
    point = robustness.corruption_errors(robustness.score_corrupted(predictions))
    for column in ("clean_error", "ce", "relative_ce", "corruptions_used", "relative_corruptions_used"):
        pd.testing.assert_series_equal(with_intervals[column], point[column])
    defined = with_intervals.dropna(subset=["ce"])
    assert (defined["ce_low"] <= defined["ce"] + 1e-9).all() and (defined["ce"] <= defined["ce_high"] + 1e-9).all()
    assert set(with_intervals["reference_model"]) == {"baseline_cnn"}
    resnet_blur = with_intervals.set_index(["model", "corruption"]).loc[("resnet50", "blur")]
    assert resnet_blur["ce_high"] > resnet_blur["ce_low"]  # a real interval, not a point


def test_a_reference_rise_below_the_floor_leaves_the_relative_ce_undefined_with_a_reason():
    # The reference barely moves under noise (0.005 per severity step): its rise is within one subject's noise.
    predictions = _predictions(DROPS)
    table = robustness.corruption_error_intervals(predictions, n_bootstrap=200).set_index(["model", "corruption"])
    noise = table.loc[("resnet50", "noise")]
    assert pd.isna(noise["relative_ce"]) and pd.isna(noise["relative_ce_low"]) and pd.isna(noise["relative_ce_high"])
    assert "below the floor 0.05" in noise["relative_ce_undefined_reason"]
    assert "baseline_cnn" in noise["relative_ce_undefined_reason"]
    mean = table.loc[("resnet50", "mean")]
    assert mean["relative_corruptions_used"] == 1 and mean["corruptions_used"] == 2
    assert mean["relative_ce"] == pytest.approx(table.loc[("resnet50", "blur"), "relative_ce"])
    assert "{floor}" not in robustness.FLOOR_RULE.format(floor=robustness.REFERENCE_ERROR_FLOOR)


def test_errors_are_recomputed_inside_each_resample():
    predictions = _predictions(DROPS, seed=2)
    table = robustness.corruption_error_intervals(predictions, n_bootstrap=50, seed=4).set_index(
        ["model", "corruption"])
    # The same stratified resamples, scored by looping with scikit-learn over the drawn slices.
    first = predictions.drop_duplicates("image").sort_values("image")
    codes, subjects = pd.factorize(first["subject_id"])
    classes = evaluation.subject_strata(codes, first["label_index"].to_numpy(), len(subjects))
    counts = evaluation.resample_subject_counts(classes, 50, seed=4)
    rows = predictions[(predictions["model"] == "resnet50") & (predictions["corruption"] == "blur")]
    errors = []
    for draw in counts:
        per_severity = []
        for _, group in rows.groupby("severity"):
            selected = np.repeat(np.arange(len(group)), draw[codes])
            truth, predicted = group["label_index"].to_numpy()[selected], group["pred_index"].to_numpy()[selected]
            per_severity.append(1 - balanced_accuracy_score(truth, predicted))
        errors.append(np.mean(per_severity))
    interval = evaluation.percentile_interval(np.asarray(errors), np.nan)
    assert table.loc[("resnet50", "blur"), "mean_error_low"] == pytest.approx(interval["low"])
    assert table.loc[("resnet50", "blur"), "mean_error_high"] == pytest.approx(interval["high"])


def test_subject_level_errors_and_bad_inputs():
    predictions = _predictions(DROPS, seed=3)
    subject_level = robustness.corruption_error_intervals(predictions, metric="subject_balanced_accuracy",
                                                          n_bootstrap=100)
    point = robustness.corruption_errors(robustness.score_corrupted(predictions), metric="subject_balanced_accuracy")
    pd.testing.assert_series_equal(subject_level["ce"], point["ce"])
    with pytest.raises(ValueError, match="metric must be one of"):
        robustness.corruption_error_intervals(predictions, metric="macro_f1")
    with pytest.raises(ValueError, match="Reference model 'vgg' is not in the table"):
        robustness.corruption_error_intervals(predictions, reference_model="vgg")
    with pytest.raises(ValueError, match="need a subject_id"):
        robustness.corruption_error_intervals(predictions.assign(subject_id=None))


def test_predict_corrupted_feeds_the_old_scores_and_the_written_files(tmp_path):
    images = np.stack([np.full((16, 16), value, dtype=np.uint8) for value in (20, 30, 200, 210)])
    labels, subjects = np.array([0, 0, 1, 1]), np.array(["A", "B", "C", "D"])

    def bright(batch):
        score = 1 / (1 + np.exp(-(batch.reshape(len(batch), -1).mean(axis=1) - 110) / 10))
        return np.stack([1 - score, score], axis=1)

    predictions = robustness.predict_corrupted({"baseline_cnn": bright}, images, labels, subjects,
                                               corruptions=["brightness"])
    assert len(predictions) == 4 * (1 + 5) and {"prob_0", "prob_1", "pred_index", "image"} <= set(predictions)
    table = robustness.score_corrupted(predictions)
    pd.testing.assert_frame_equal(table, robustness.evaluate_robustness(
        {"baseline_cnn": bright}, images, labels, subjects, corruptions=["brightness"]))
    errors = robustness.corruption_error_intervals(predictions, n_bootstrap=20)
    record = robustness.robustness_record("baseline_cnn", "balanced_accuracy", predictions, 20)
    written = robustness.write_robustness_tables(table, errors, tmp_path, predictions, record)
    summary = pd.read_csv(written["mce_summary"])
    assert {"reference_model", "mce_low", "mce_high", "relative_mce_low"} <= set(summary.columns)
    assert json.loads(written["record"].read_text())["reference_model"] == "baseline_cnn"
    assert len(pd.read_parquet(written["predictions"])) == len(predictions)


def test_run_robustness_scores_saved_models_and_writes_the_stage(tmp_path, monkeypatch):
    import keras

    from alzlib import config
    from alzlib.preprocessing import preprocessing_spec

    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))
    settings = config.load_settings("smoke")
    size = settings.profile.image_size
    subjects = np.arange(12)
    manifest = pd.DataFrame({"path": [f"/data/{index}.png" for index in range(24)],
                             "subject_id": np.repeat([f"S{index:02d}" for index in subjects], 2),
                             "split": np.repeat(np.where(subjects < 8, "test", "train"), 2),
                             "label_index": np.repeat(subjects % 2, 2)})
    manifest["label"] = manifest["label_index"].map({0: "NC", 1: "AD"})
    generator = np.random.default_rng(0)
    images = np.where(manifest["label_index"].to_numpy()[:, None, None] == 1, 170, 60).astype(np.uint8)
    images = np.clip(images + generator.normal(0, 10, (24, size, size)), 0, 255).astype(np.uint8)
    records = []
    for name in ("baseline_cnn", "resnet50"):
        inputs = keras.Input((size, size, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(pooled))
        path = settings.paths.models / f"{name}.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        records.append({"model": name, "model_path": str(path), "preprocessing": preprocessing_spec(name, size)})
    result = robustness.run_robustness(settings, manifest, images, records, seed=0, n_bootstrap=50)
    assert result["reference_model"] == "baseline_cnn" and result["record"]["subjects"] == 8
    folder = settings.paths.robustness
    for name in ("robustness.csv", "corruption_errors.csv", "mce_summary.csv", "predictions.parquet",
                 "robustness.json"):
        assert (folder / name).is_file()
    summary = pd.read_csv(folder / "mce_summary.csv")
    assert summary["reference_model"].tolist() == ["baseline_cnn", "baseline_cnn"]
    assert "below 0.05" in json.loads((folder / "robustness.json").read_text())["floor_rule"]
