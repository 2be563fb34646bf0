"""Evaluation metrics against scikit-learn, the stratified subject bootstrap, calibration, logits and temperatures."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from alzlib import evaluation

CLASSES = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]


def _toy_predictions(seed: int = 0, images: int = 240, subjects: int = 30, classes: int = 4):
    """Return labels, probabilities and subject ids of a moderately good 4-class classifier."""
    generator = np.random.default_rng(seed)
    subject_of_image = generator.integers(0, subjects, images)
    subject_labels = generator.integers(0, classes, subjects)
    labels = subject_labels[subject_of_image]
    logits = generator.normal(size=(images, classes))
    logits[np.arange(images), labels] += 1.2
    return labels, evaluation.softmax(logits), np.array([f"S{index:03d}" for index in subject_of_image])


def test_classification_metrics_match_scikit_learn():
    labels, probabilities, _ = _toy_predictions()
    predictions = probabilities.argmax(axis=1)
    result = evaluation.classification_metrics(labels, probabilities, CLASSES)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions))
    assert result["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predictions))
    assert result["macro_f1"] == pytest.approx(sk.f1_score(labels, predictions, average="macro"))
    assert result["weighted_f1"] == pytest.approx(sk.f1_score(labels, predictions, average="weighted"))
    assert result["macro_auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr"))
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, predictions)
    for index, name in enumerate(CLASSES):
        assert result["per_class"][name]["precision"] == pytest.approx(precision[index])
        assert result["per_class"][name]["recall"] == pytest.approx(recall[index])
        assert result["per_class"][name]["f1"] == pytest.approx(f1[index])
        assert result["per_class"][name]["support"] == support[index]
    assert result["confusion_matrix"]["counts"] == sk.confusion_matrix(labels, predictions).tolist()
    normalised = np.asarray(result["confusion_matrix"]["row_normalised"])
    assert np.allclose(normalised.sum(axis=1), 1.0)


def test_hand_made_case_with_a_class_absent_from_the_split():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array([[0.8, 0.1, 0.05, 0.05], [0.3, 0.5, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1],
                              [0.1, 0.2, 0.6, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.2, 0.6]])
    result = evaluation.classification_metrics(labels, probabilities, CLASSES)
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert result["balanced_accuracy"] == pytest.approx(0.5)  # recall 1/2 in each of the three present classes
    absent = result["roc_auc"]["ModerateDemented"]
    assert absent["auc"] is None and absent["reason"] == "class absent from the split"
    present = [sk.roc_auc_score(labels == index, probabilities[:, index]) for index in range(3)]
    assert result["macro_auc"] == pytest.approx(np.mean(present))
    assert result["per_class"]["ModerateDemented"]["support"] == 0
    assert result["per_class"]["ModerateDemented"]["recall"] is None
    assert result["confusion_matrix"]["row_normalised"][3] == [None, None, None, None]
    json.dumps(result, allow_nan=False)  # the result is strict JSON


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        evaluation.classification_metrics([0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="outside"):
        evaluation.classification_metrics([0, 5], [[0.5, 0.5], [0.4, 0.6]])
    with pytest.raises(ValueError, match="one label per"):
        evaluation.brier_score([0, 1, 1], [[0.5, 0.5], [0.4, 0.6]])
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluation.subject_bootstrap([0, 1], [[0.9, 0.1], [0.1, 0.9]], ["a", "b"], "sensitivity")


def test_vectorised_bootstrap_equals_resampling_with_scikit_learn():
    labels, probabilities, subjects = _toy_predictions(seed=1)
    reference = {
        "accuracy": lambda y, p: sk.accuracy_score(y, p.argmax(1)),
        "balanced_accuracy": lambda y, p: sk.balanced_accuracy_score(y, p.argmax(1)),
        "macro_f1": lambda y, p: sk.f1_score(y, p.argmax(1), average="macro", zero_division=0),
        "weighted_f1": lambda y, p: sk.f1_score(y, p.argmax(1), average="weighted", zero_division=0),
        "macro_auc": lambda y, p: evaluation.one_vs_rest_roc(y, p)["macro_auc"],
        "quadratic_kappa": lambda y, p: sk.cohen_kappa_score(y, p.argmax(1), labels=range(4), weights="quadratic"),
        "mean_absolute_error": lambda y, p: sk.mean_absolute_error(y, p.argmax(1)),
    }
    vectorised = evaluation.bootstrap_intervals(labels, probabilities, subjects, evaluation.BOOTSTRAP_METRICS, n=40,
                                                seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, function in reference.items():
            looped = evaluation.subject_bootstrap(labels, probabilities, subjects, function, n=40, seed=7)
            assert vectorised[name]["estimate"] == pytest.approx(looped["estimate"])
            assert vectorised[name]["low"] == pytest.approx(looped["low"])
            assert vectorised[name]["high"] == pytest.approx(looped["high"])
    assert vectorised["accuracy"]["subjects"] == 30


def test_bootstrap_of_perfect_subjects_is_one_to_one():
    labels = np.repeat([0, 1, 2, 3, 0, 1], 5)
    probabilities = np.eye(4)[labels] * 0.9 + 0.025
    subjects = np.repeat([f"S{index}" for index in range(6)], 5)
    result = evaluation.subject_bootstrap(labels, probabilities, subjects, "accuracy", n=1000, seed=0)
    assert (result["estimate"], result["low"], result["high"]) == (1.0, 1.0, 1.0)


def test_subject_interval_is_wider_than_a_slice_interval_when_slices_repeat():
    # 20 subjects x 20 identical slices, half the subjects right: slices carry no more information than subjects.
    subjects = np.repeat(np.arange(20), 20)
    labels = np.zeros(len(subjects), dtype=int)
    right = np.repeat(np.arange(20) % 2 == 0, 20)
    probabilities = np.where(right[:, None], [0.8, 0.2], [0.3, 0.7])
    by_subject = evaluation.subject_bootstrap(labels, probabilities, subjects, "accuracy", n=1000, seed=0)
    by_slice = evaluation.subject_bootstrap(labels, probabilities, np.arange(len(subjects)), "accuracy", n=1000, seed=0)
    assert by_subject["estimate"] == by_slice["estimate"] == 0.5
    subject_width, slice_width = by_subject["high"] - by_subject["low"], by_slice["high"] - by_slice["low"]
    assert subject_width > 3 * slice_width
    assert 0.3 < subject_width < 0.6  # about 2 x 1.96 x sqrt(0.25 / 20)


def test_stratified_resamples_never_lack_a_class():
    # 13 subjects, one class with a single subject: an unstratified draw of 13 would miss it about 1/e of the time.
    classes = np.array([0] * 6 + [1] * 4 + [2] * 2 + [3])
    counts = evaluation.resample_subject_counts(classes, 2000, seed=0)
    for label in range(4):
        assert (counts[:, classes == label].sum(axis=1) == np.sum(classes == label)).all()
    assert (counts[:, classes == 3] == 1).all()
    assert counts[:, classes == 0].std() > 0  # still a bootstrap within the class
    with pytest.raises(ValueError, match="positive integer"):
        evaluation.resample_subject_counts(classes, 0, seed=0)


def test_every_bootstrap_resample_holds_every_class():
    # One ModerateDemented subject among 30: its recall must be defined in every resample.
    labels = np.repeat(np.r_[np.zeros(12), np.ones(10), np.full(7, 2), [3]].astype(int), 2)
    subjects = np.repeat([f"S{index}" for index in range(30)], 2)
    probabilities = np.eye(4)[labels] * 0.6 + 0.1
    result = evaluation.subject_bootstrap(labels, probabilities, subjects, "balanced_accuracy", n=500, seed=1)
    assert result["undefined_resamples"] == 0 and (result["low"], result["high"]) == (1.0, 1.0)


def test_ordinal_metrics_only_for_the_four_stage_task():
    labels, probabilities, _ = _toy_predictions(seed=4)
    predictions = probabilities.argmax(axis=1)
    four = evaluation.classification_metrics(labels, probabilities, CLASSES)
    assert four["quadratic_kappa"] == pytest.approx(sk.cohen_kappa_score(labels, predictions, weights="quadratic"))
    assert four["mean_absolute_error"] == pytest.approx(sk.mean_absolute_error(labels, predictions))
    assert four["ordinal_reason"] is None
    binary = evaluation.classification_metrics(labels % 2, probabilities[:, :2] / probabilities[:, :2].sum(1)[:, None],
                                               ["NC", "AD"])
    assert binary["quadratic_kappa"] is None and binary["mean_absolute_error"] is None
    assert "4-class task" in binary["ordinal_reason"]
    assert not evaluation.is_ordinal_task(list(reversed(CLASSES)))


def test_bootstrap_is_seeded():
    labels, probabilities, subjects = _toy_predictions(seed=2)
    first = evaluation.subject_bootstrap(labels, probabilities, subjects, "macro_f1", n=300, seed=3)
    again = evaluation.subject_bootstrap(labels, probabilities, subjects, "macro_f1", n=300, seed=3)
    other = evaluation.subject_bootstrap(labels, probabilities, subjects, "macro_f1", n=300, seed=4)
    assert first == again
    assert (first["low"], first["high"]) != (other["low"], other["high"])


def test_soft_vote_averages_each_subjects_slices():
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    subjects, labels, votes = evaluation.soft_vote(probabilities, ["b", "b", "a", "a"], [0, 0, 1, 1])
    assert subjects.tolist() == ["b", "a"] and labels.tolist() == [0, 1]
    assert np.allclose(votes, [[0.6, 0.4], [0.4, 0.6]])
    with pytest.raises(ValueError, match="more than one label"):
        evaluation.soft_vote(probabilities, ["b", "b", "a", "a"], [0, 1, 1, 1])
    with pytest.raises(ValueError, match="missing"):
        evaluation.soft_vote(probabilities, ["b", None, "a", "a"], [0, 0, 1, 1])


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    # Two bins: confidence 0.65 with 65% right, confidence 0.95 with 95% right.
    labels = np.zeros(40, dtype=int)
    confidence = np.r_[np.full(20, 0.65), np.full(20, 0.95)]
    right = np.r_[np.arange(20) < 13, np.arange(20) < 19]
    probabilities = np.where(right[:, None], np.c_[confidence, 1 - confidence], np.c_[1 - confidence, confidence])
    assert evaluation.expected_calibration_error(labels, probabilities) == pytest.approx(0.0, abs=1e-12)
    overconfident = np.tile([0.01, 0.99], (30, 1))
    assert evaluation.expected_calibration_error(np.zeros(30, dtype=int), overconfident) == pytest.approx(0.99)
    table = evaluation.calibration_bins(labels, probabilities, bins=15)
    assert table["count"].sum() == 40 and (table["count"] > 0).sum() == 2


def test_brier_score_matches_scikit_learn():
    labels, probabilities, _ = _toy_predictions(seed=3)
    assert evaluation.brier_score(labels, probabilities) == pytest.approx(sk.brier_score_loss(labels, probabilities))
    nll = evaluation.negative_log_likelihood(labels, probabilities)
    assert nll == pytest.approx(sk.log_loss(labels, probabilities))


def test_temperature_scaling_recovers_a_known_temperature():
    generator = np.random.default_rng(0)
    logits = generator.normal(scale=3.0, size=(20000, 4))
    true_temperature = 2.5
    calibrated = evaluation.softmax(logits / true_temperature)
    labels = (generator.random(len(logits))[:, None] > np.cumsum(calibrated, axis=1)).sum(axis=1)
    fitted = evaluation.fit_temperature(logits, labels, kind="logits")
    assert fitted == pytest.approx(true_temperature, rel=0.06)
    probabilities = evaluation.softmax(logits)  # the overconfident model's output
    assert evaluation.fit_temperature(probabilities, labels) == pytest.approx(fitted, rel=1e-3)
    scaled = evaluation.apply_temperature(probabilities, fitted)
    assert (evaluation.expected_calibration_error(labels, scaled)
            < evaluation.expected_calibration_error(labels, probabilities) / 3)
    assert np.array_equal(scaled.argmax(axis=1), probabilities.argmax(axis=1))


def _manifest_and_probabilities(seed: int = 0):
    """Return a val+test manifest of 24 subjects x 3 slices and matching probabilities."""
    subjects = np.repeat([f"SYN{index:04d}" for index in range(24)], 3)
    labels = np.repeat(np.arange(24) % 4, 3)
    generator = np.random.default_rng(seed)
    logits = generator.normal(size=(72, 4)) * 2
    logits[np.arange(72), labels] += 2.0
    manifest = pd.DataFrame({"path": [f"/data/{index}.jpg" for index in range(72)], "subject_id": subjects,
                             "split": np.where(np.arange(72) < 36, "val", "test"), "label_index": labels,
                             "label": [CLASSES[label] for label in labels]})
    return manifest, evaluation.softmax(logits)


def test_evaluate_predictions_writes_metrics_figures_and_summary(tmp_path):
    manifest, probabilities = _manifest_and_probabilities()
    frame = evaluation.predictions_frame(manifest, probabilities, CLASSES)
    assert list(frame.columns) == ["path", "subject_id", "split", "label_index", *[f"prob_{c}" for c in CLASSES],
                                   "pred_index"]
    result = evaluation.evaluate_predictions(frame, CLASSES, tmp_path / "evaluation" / "resnet50", seed=1,
                                             data_label="synthetic cohort", model_name="resnet50", n_bootstrap=200)
    folder = tmp_path / "evaluation" / "resnet50"
    assert json.loads((folder / "metrics.json").read_text()) == result
    for name in result["figures"]:
        assert (folder / name).stat().st_size > 1000
    test = result["splits"]["test"]
    assert test["slice"]["images"] == 36 and test["subject"]["images"] == 12 and test["subject"]["subjects"] == 12
    interval = test["slice"]["intervals"]["balanced_accuracy"]
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    scaling = result["temperature_scaling"]
    assert scaling["fitted_on"] == "val" and scaling["temperature"] > 0 and scaling["test_accuracy_unchanged"]
    assert scaling["val_nll_after"] <= scaling["val_nll_before"] + 1e-9
    assert not scaling["fitted_on_logits"] and "fallback" in scaling["input"]  # this table has no logits
    vote = scaling["subject_vote"]  # 12 validation subjects: enough to fit the vote's own temperature
    assert vote["val_subjects"] == 12 and vote["temperature"] > 0 and vote["test_accuracy_unchanged"]
    assert vote["val_nll_after"] <= vote["val_nll_before"] + 1e-9
    votes = pd.read_parquet(folder / "subject_predictions.parquet")
    assert len(votes) == 24 and set(votes["slices"]) == {3}
    ordinal = test["subject"]["intervals"]["quadratic_kappa"]
    assert ordinal["low"] <= ordinal["estimate"] <= ordinal["high"]
    assert test["subject"]["metrics"]["mean_absolute_error"] == test["subject"]["intervals"]["mean_absolute_error"][
        "estimate"]
    calibration = test["slice"]["calibration"]
    assert calibration["ece_interval"]["estimate"] == pytest.approx(calibration["ece"])
    assert calibration["ece_interval"]["low"] <= calibration["ece"] <= calibration["ece_interval"]["high"]
    assert set(calibration["classwise_ece"]["per_class"]) == set(CLASSES)

    summary = evaluation.summarise_evaluations(tmp_path / "evaluation", ["resnet50", "efficientnetb0"])
    assert list(summary["level"]) == ["slice", "subject"]
    for column in ("quadratic_kappa_low", "mean_absolute_error_high", "ece_low", "ece_high", "classwise_ece",
                   "temperature_on_logits"):
        assert column in summary.columns
    assert summary["quadratic_kappa"].notna().all()
    assert summary.set_index("level").loc["subject", "temperature"] == pytest.approx(vote["temperature"])
    written = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert written["missing"][0]["model"] == "efficientnetb0"
    assert "skipped" in written["random_label_control"]
    assert (tmp_path / "evaluation" / "summary.csv").is_file()


def test_evaluate_model_predicts_in_batches_and_writes_predictions(tmp_path):
    import keras

    from alzlib.preprocessing import prepare_images, preprocessing_spec

    manifest, _ = _manifest_and_probabilities()
    images = np.random.default_rng(0).integers(0, 255, (72, 8, 8), dtype=np.uint8)
    spec = preprocessing_spec("baseline_cnn", 8)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="softmax")])
    result = evaluation.evaluate_model(model, images, manifest, CLASSES, spec, tmp_path, seed=0,
                                       data_label="synthetic cohort", model_name="tiny", batch_size=16, n_bootstrap=50,
                                       figures=False)
    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    expected = model.predict(prepare_images(images, spec), verbose=0)
    assert np.allclose(predictions[[f"prob_{c}" for c in CLASSES]].to_numpy(), expected, atol=1e-6)
    assert predictions["pred_index"].tolist() == expected.argmax(axis=1).tolist()
    logits = predictions[[f"logit_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(evaluation.softmax(logits), expected, atol=1e-6)
    assert result["logits"]["saved"] and result["temperature_scaling"]["fitted_on_logits"]
    assert result["model"] == "tiny" and set(result["splits"]) == {"val", "test"}
    with pytest.raises(ValueError, match="align"):
        evaluation.evaluate_model(model, images[:10], manifest, CLASSES, spec, tmp_path)


def _control_metrics(low: float, high: float) -> dict:
    interval = {"estimate": (low + high) / 2, "low": low, "high": high, "subjects": 30}
    return {"model": "baseline_cnn_random_labels", "class_names": CLASSES,
            "splits": {"test": {"slice": {"intervals": {"balanced_accuracy": interval}}}}}


def test_control_check_reports_whether_the_control_is_above_chance():
    passing = evaluation.control_check(_control_metrics(0.15, 0.38))
    assert passing["includes_chance"] and passing["chance"] == 0.25 and not passing["tripped"]
    failing = evaluation.control_check(_control_metrics(0.55, 0.80))
    assert failing["tripped"] and "FAILS" in failing["verdict"]
    with pytest.raises(ValueError, match="no slice-level"):
        evaluation.control_check({"class_names": CLASSES, "splits": {}})


def test_chance_level_predictions_pass_the_control_check(tmp_path):
    # Predictions unrelated to the labels: each class's subjects are predicted as every class equally often.
    subjects = np.arange(96)
    labels, predicted = subjects % 4, (subjects // 4) % 4
    probabilities = np.repeat(np.full((96, 4), 0.1) + 0.6 * np.eye(4)[predicted], 3, axis=0)
    manifest = pd.DataFrame({"path": [f"/data/{index}.jpg" for index in range(288)],
                             "subject_id": np.repeat([f"SYN{index:04d}" for index in subjects], 3),
                             "split": np.repeat(np.where(subjects < 48, "val", "test"), 3),
                             "label_index": np.repeat(labels, 3)})
    frame = evaluation.predictions_frame(manifest, probabilities, CLASSES)
    metrics = evaluation.evaluate_predictions(frame, CLASSES, tmp_path / "baseline_cnn_random_labels", seed=0,
                                              data_label="synthetic cohort", model_name="baseline_cnn_random_labels",
                                              n_bootstrap=500, figures=False)
    check = evaluation.control_check(metrics)
    assert check["estimate"] == pytest.approx(0.25) and check["includes_chance"]
    assert check["low"] < 0.25 < check["high"]
