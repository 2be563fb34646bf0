"""Model comparison: speed measurement, tables read from evaluation files, the stage's files and a non-Keras model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alzlib import comparison, config, evaluation
from alzlib.storage import write_json, write_parquet

CLASSES = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]


def _tiny_model(image_size: int):
    """Return a small untrained classifier of image_size x image_size x 3 images."""
    import keras

    inputs = keras.Input((image_size, image_size, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    return keras.Model(inputs, outputs)


def _manifest() -> pd.DataFrame:
    """Return val and test rows: 16 subjects per split, 2 slices each, labels cycling through the classes."""
    subjects = np.arange(32)
    return pd.DataFrame({"path": [f"/data/{index}.jpg" for index in range(64)],
                         "subject_id": np.repeat([f"SYN{index:04d}" for index in subjects], 2),
                         "split": np.repeat(np.where(subjects < 16, "val", "test"), 2),
                         "label_index": np.repeat(subjects % 4, 2)})


def _probabilities(manifest: pd.DataFrame, wrong: np.ndarray) -> np.ndarray:
    """Return confident probabilities that are right except on the rows in `wrong`."""
    predicted = manifest["label_index"].to_numpy().copy()
    predicted[wrong] = (predicted[wrong] + 1) % 4
    return np.full((len(manifest), 4), 0.05) + 0.8 * np.eye(4)[predicted]


def _write_model_files(outputs, name: str, wrong: np.ndarray, parameters: tuple[int, int], seconds: float) -> None:
    """Write a model's evaluation files (via evaluation) and a recipe record shaped like training's."""
    manifest = _manifest()
    frame = evaluation.predictions_frame(manifest, _probabilities(manifest, wrong), CLASSES)
    write_parquet(outputs.evaluation / name / "predictions.parquet", frame)
    evaluation.evaluate_predictions(frame, CLASSES, outputs.evaluation / name, seed=0, data_label="synthetic cohort",
                                    model_name=name, n_bootstrap=200, figures=False)
    write_json(outputs.models / f"{name}.json",
               {"model": name, "trainable_parameters": parameters[0], "non_trainable_parameters": parameters[1],
                "model_info": {"total_parameters": sum(parameters)}, "training_seconds": seconds,
                "epochs_run": 3, "weights": "random"})


# Test rows are 32..63. Model A misses 8 test slices that B gets right; B misses 2 that A gets right.
A_ONLY_WRONG = np.arange(32, 40)
B_ONLY_WRONG = np.arange(40, 42)


@pytest.fixture()
def outputs(tmp_path, monkeypatch):
    """Output paths of the smoke profile under a temporary folder, with two evaluated models."""
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))
    paths = config.output_paths("smoke")
    _write_model_files(paths, "baseline_cnn", A_ONLY_WRONG, (1000, 50), 12.5)
    _write_model_files(paths, "resnet50", B_ONLY_WRONG, (20000, 500), 80.0)
    return paths


def test_measure_inference_reports_latency_and_throughput():
    model = _tiny_model(32)
    result = comparison.measure_inference(model, 32, repeats=5, batch_size=8, warmup=1)
    assert result["latency_ms_median"] > 0 and result["latency_ms_p90"] >= result["latency_ms_median"]
    assert result["throughput_images_per_second"] > 0 and result["throughput_batch"] == 8
    assert result["latency_repeats"] == 5 and result["channels"] == 3
    with pytest.raises(ValueError, match="repeats"):
        comparison.measure_inference(model, 32, repeats=0)


def test_table_reads_records_and_metrics_without_recomputing(outputs):
    inference = {"baseline_cnn": {"latency_ms_median": 2.0}, "resnet50": {"latency_ms_median": 20.0}}
    table, skipped = comparison.comparison_table(outputs.models, outputs.evaluation,
                                                 ["baseline_cnn", "resnet50", "efficientnetb0"], inference)
    assert table["model"].tolist() == ["baseline_cnn", "resnet50"]
    assert skipped[0]["model"] == "efficientnetb0" and "does not exist" in skipped[0]["reason"]
    row = table.set_index("model").loc["resnet50"]
    assert row["parameters"] == 20500 and row["trainable_parameters"] == 20000 and row["training_seconds"] == 80.0
    assert row["latency_ms_median"] == 20.0
    written = json.loads((outputs.evaluation / "resnet50" / "metrics.json").read_text())
    interval = written["splits"]["test"]["slice"]["intervals"]["balanced_accuracy"]
    assert (row["balanced_accuracy"], row["balanced_accuracy_low"], row["balanced_accuracy_high"]) == (
        interval["estimate"], interval["low"], interval["high"])
    assert row["accuracy"] == pytest.approx(30 / 32)


def test_holm_adjustment_on_a_known_case():
    assert comparison.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert comparison.holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_compare_models_measures_saved_models_and_writes_the_stage(outputs):
    settings = config.load_settings("smoke")
    for name in ("baseline_cnn", "resnet50"):
        _tiny_model(settings.profile.image_size).save(settings.paths.models / f"{name}.keras")
    record = comparison.compare_models(settings, "synthetic cohort", ["baseline_cnn", "resnet50", "efficientnetb0"],
                                       repeats=3)
    folder = settings.paths.comparison
    assert record["models"] == ["baseline_cnn", "resnet50"]
    assert record["skipped"][0]["model"] == "efficientnetb0"
    table = pd.read_csv(folder / "table.csv")
    assert (table["latency_ms_median"] > 0).all() and (table["file_size_mb"] > 0).all()
    differences = pd.read_csv(folder / "paired_differences.csv")
    assert sorted(differences["level"]) == ["slice", "subject"] and not list(folder.glob("mcnemar*"))
    for name in ("metrics_bars.png", "accuracy_latency.png", "paired_differences.png"):
        assert name in record["figures"] and (folder / name).stat().st_size > 1000
    written = json.loads((folder / "comparison.json").read_text())
    assert written["data_label"] == "synthetic cohort" and "mcnemar" not in written
    assert written["paired_differences"]["rule"] == comparison.SUPPORT_RULE
    assert written["paired_differences"]["sentences"][0].startswith("baseline_cnn vs resnet50: ")
    assert "skipped" in written["paired_differences_crossval"]
    assert not (folder / "paired_differences_crossval.csv").exists()


def _oof_predictions(wrong: np.ndarray) -> pd.DataFrame:
    """Return pooled out-of-fold predictions shaped like crossval's: every subject once as test, a fold column."""
    manifest = _manifest().assign(split="test")
    frame = evaluation.predictions_frame(manifest, _probabilities(manifest, wrong), CLASSES)
    return frame.assign(fold=np.repeat(np.arange(32) % 4, 2))


def test_cross_validated_predictions_are_compared_when_two_models_have_them(outputs):
    settings = config.load_settings("smoke")
    for name in ("baseline_cnn", "resnet50"):
        _tiny_model(settings.profile.image_size).save(settings.paths.models / f"{name}.keras")
    crossval = settings.paths.root / "crossval"
    write_parquet(crossval / "baseline_cnn" / "oof_predictions.parquet", _oof_predictions(np.arange(0, 24)))
    write_parquet(crossval / "resnet50" / "oof_predictions.parquet", _oof_predictions(np.arange(40, 42)))
    record = comparison.compare_models(settings, "synthetic cohort", ["baseline_cnn", "resnet50"], repeats=2)
    entry = record["paired_differences_crossval"]
    assert entry["rule"] == comparison.SUPPORT_RULE and "oof_predictions.parquet" in entry["source"]
    table = pd.read_csv(settings.paths.comparison / "paired_differences_crossval.csv")
    subject_row = table[table["level"] == "subject"].iloc[0]
    # 64 slices of 32 subjects pooled over folds; baseline_cnn misses 24 slices (12 subjects), resnet50 2 (1 subject).
    assert subject_row["subjects"] == 32 and subject_row["rows"] == 32 and subject_row["difference"] < 0
    assert table[table["level"] == "slice"].iloc[0]["rows"] == 64
    assert entry["sentences"] == [subject_row["sentence"]]


def test_a_model_without_a_keras_file_is_compared_without_latency(outputs, monkeypatch):
    settings = config.load_settings("smoke")
    _tiny_model(settings.profile.image_size).save(settings.paths.models / "baseline_cnn.keras")
    _write_model_files(outputs, "linear_pixels", np.arange(32, 36), (1028, 0), 3.0)
    (settings.paths.models / "linear_pixels.joblib").write_bytes(b"0" * 4096)
    monkeypatch.setattr(config, "BASELINE_MODEL_NAMES", ("linear_pixels",), raising=False)
    record = comparison.compare_models(settings, "synthetic cohort", repeats=2)
    # resnet50 has a record and evaluation files but no .keras file: a design model is compared only when trained.
    assert record["models"] == ["baseline_cnn", "linear_pixels"]
    assert any(entry["model"] == "resnet50" and "resnet50.keras" in entry["reason"] for entry in record["skipped"])
    table = pd.read_csv(settings.paths.comparison / "table.csv").set_index("model")
    assert "linear_pixels" in table.index and np.isnan(table.loc["linear_pixels", "latency_ms_median"])
    assert table.loc["linear_pixels", "latency_note"] == "not measured: linear_pixels is not a Keras model"
    assert table.loc["linear_pixels", "file_size_mb"] == pytest.approx(4096 / 2**20)
    pairs = pd.read_csv(settings.paths.comparison / "paired_differences.csv")
    assert ("baseline_cnn", "linear_pixels") in set(zip(pairs["model_a"], pairs["model_b"], strict=True))
    assert "accuracy_latency.png" in record["figures"]
