"""Calibration from logits: logits saved beside probabilities, temperatures fitted on them, ECE intervals and
classwise ECE, and the subject vote's own temperature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alzlib import evaluation

CLASSES = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]


def _sampled_labels(generator: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """Return one label per row drawn from softmax(logits)."""
    cumulative = np.cumsum(evaluation.softmax(logits), axis=1)
    return (generator.random(len(logits))[:, None] > cumulative).sum(axis=1)


def test_temperature_of_an_overconfident_model_is_recovered_from_its_logits():
    generator = np.random.default_rng(0)
    true_logits = generator.normal(scale=1.5, size=(20000, 4))
    labels = _sampled_labels(generator, true_logits)
    overconfident = true_logits * 12.5
    assert evaluation.TEMPERATURE_BOUNDS[0] < 12.5 < evaluation.TEMPERATURE_BOUNDS[1]
    fitted = evaluation.fit_temperature(overconfident, labels, kind="logits")
    assert fitted == pytest.approx(12.5, rel=0.05)
    # The stored float32 probabilities lose the small ones: fitted on them, the temperature comes out far too low.
    stored = evaluation.softmax(overconfident).astype(np.float32)
    assert evaluation.fit_temperature(stored, labels, kind="probabilities") < 0.9 * 12.5


def _tiny_functional_model():
    """Return a small functional Keras model ending in Dense(softmax), like alzlib.models' heads."""
    import keras

    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Dense(5, activation="relu")(keras.layers.Flatten()(inputs))
    outputs = keras.layers.Dense(4, activation="softmax", dtype="float32", name="predictions")(features)
    return keras.Model(inputs, outputs)


def test_logits_are_the_final_dense_layer_before_softmax(tmp_path):
    import keras

    images = np.random.default_rng(1).random((10, 8, 8, 3)).astype(np.float32)
    model = _tiny_functional_model()
    model.save(tmp_path / "tiny.keras")
    loaded = keras.saving.load_model(tmp_path / "tiny.keras")
    probabilities, logits, source = evaluation.predict_with_logits(loaded, images, batch_size=4)
    assert "final Dense layer 'predictions'" in source
    features = keras.Model(loaded.inputs, loaded.layers[-2].output).predict(images, verbose=0)
    kernel, bias = (np.asarray(weight) for weight in loaded.layers[-1].get_weights())
    assert np.allclose(logits, features.astype(np.float64) @ kernel + bias, atol=1e-5)
    assert np.allclose(evaluation.softmax(logits), probabilities, atol=1e-6)
    assert np.allclose(probabilities, loaded.predict(images, verbose=0), atol=1e-6)


def test_models_without_a_softmax_dense_end_fall_back_or_output_logits():
    import keras

    images = np.random.default_rng(2).random((6, 8, 8, 3)).astype(np.float32)
    linear = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    probabilities, logits, source = evaluation.predict_with_logits(linear, images)
    assert np.allclose(logits, linear.predict(images, verbose=0), atol=1e-6) and "without activation" in source
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    softmax_layer = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4),
                                      keras.layers.Softmax()])
    probabilities, logits, source = evaluation.predict_with_logits(softmax_layer, images)
    assert logits is None and source.startswith("none")
    with pytest.raises(ValueError, match="No images"):
        evaluation.predict_with_logits(linear, images[:0])


def test_logits_that_do_not_reproduce_the_output_are_not_saved(monkeypatch):
    images = np.random.default_rng(3).random((4, 8, 8, 3)).astype(np.float32)
    monkeypatch.setattr(evaluation, "LOGIT_CHECK_TOLERANCE", -1.0)  # no gap passes: the check must refuse
    probabilities, logits, source = evaluation.predict_with_logits(_tiny_functional_model(), images)
    assert logits is None and source.startswith("none: the softmax of the computed logits")
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def _frame_with_logits(logit_scale: float, subjects: int = 60, slices: int = 4, seed: int = 3) -> pd.DataFrame:
    """Return val and test predictions of an overconfident model (logits x `logit_scale`) with logit columns."""
    generator = np.random.default_rng(seed)
    subject_labels = np.arange(subjects) % 4
    labels = np.repeat(subject_labels, slices)
    true_logits = generator.normal(scale=1.0, size=(len(labels), 4)) + 2.0 * np.eye(4)[labels]
    logits = true_logits * logit_scale
    manifest = pd.DataFrame({"path": [f"/data/{index}.png" for index in range(len(labels))],
                             "subject_id": np.repeat([f"S{index:03d}" for index in range(subjects)], slices),
                             "split": np.repeat(np.where(np.arange(subjects) % 2 == 0, "val", "test"), slices),
                             "label_index": labels})
    probabilities = evaluation.softmax(logits).astype(np.float32).astype(np.float64)
    return evaluation.predictions_frame(manifest, probabilities, CLASSES, logits)


def test_evaluation_fits_the_temperature_on_logits_and_calibrates_the_vote(tmp_path):
    frame = _frame_with_logits(6.0)
    assert [column for column in frame.columns if column.startswith("logit_")] == [f"logit_{c}" for c in CLASSES]
    result = evaluation.evaluate_predictions(frame, CLASSES, tmp_path, seed=0, n_bootstrap=100, figures=False,
                                             logit_source="made in the test")
    scaling = result["temperature_scaling"]
    assert scaling["fitted_on_logits"] and scaling["input"].startswith("logits")
    assert result["logits"] == {"saved": True, "source": "made in the test"}
    assert scaling["temperature"] > 2.0  # an overconfident model is cooled
    assert scaling["test_after"]["ece"] < scaling["test_before"]["ece"]
    assert scaling["test_after"]["ece_interval"]["low"] <= scaling["test_after"]["ece"]
    vote = scaling["subject_vote"]
    assert vote["fitted_on"] == "val subjects" and vote["val_subjects"] == 30
    without_logits = frame.drop(columns=[f"logit_{c}" for c in CLASSES])
    fallback = evaluation.evaluate_predictions(without_logits, CLASSES, tmp_path / "fallback", n_bootstrap=50,
                                               figures=False)["temperature_scaling"]
    assert not fallback["fitted_on_logits"] and "clipped" in fallback["input"]


def test_the_vote_is_not_calibrated_on_too_few_validation_subjects(tmp_path):
    frame = _frame_with_logits(3.0, subjects=12)
    vote = evaluation.evaluate_predictions(frame, CLASSES, tmp_path, n_bootstrap=50, figures=False)[
        "temperature_scaling"]["subject_vote"]
    assert "6 validation subjects" in vote["skipped"]


def test_ece_interval_equals_a_looped_bootstrap_and_classwise_ece_a_hand_count():
    generator = np.random.default_rng(5)
    labels = np.repeat(np.arange(20) % 4, 3)
    subjects = np.repeat([f"S{index}" for index in range(20)], 3)
    probabilities = evaluation.softmax(generator.normal(size=(60, 4)) * 2 + np.eye(4)[labels])
    vectorised = evaluation.calibration_intervals(labels, probabilities, subjects, n=60, seed=9)
    looped = evaluation.subject_bootstrap(labels, probabilities, subjects, evaluation.expected_calibration_error,
                                          n=60, seed=9)
    for key in ("estimate", "low", "high"):
        assert vectorised["ece"][key] == pytest.approx(looped[key])
    classwise = evaluation.classwise_calibration_error(labels, probabilities, CLASSES)
    assert vectorised["classwise_ece"]["estimate"] == pytest.approx(classwise["mean"])
    # Hand count for one class: 15 equal-width bins of its probability, |share of the class - mean probability|.
    column, positive = probabilities[:, 2], labels == 2
    bins = np.clip(np.ceil(column * 15).astype(int) - 1, 0, 14)
    expected = sum(abs(positive[bins == b].sum() - column[bins == b].sum()) for b in range(15)) / len(labels)
    assert classwise["per_class"]["MildDemented"] == pytest.approx(expected)


def test_predictions_frame_refuses_misshapen_logits():
    manifest = pd.DataFrame({"path": ["a", "b"], "subject_id": ["S1", "S2"], "split": "test", "label_index": [0, 1]})
    with pytest.raises(ValueError, match="logits have shape"):
        evaluation.predictions_frame(manifest, np.full((2, 4), 0.25), CLASSES, np.zeros((2, 3)))
