"""Tests of the MRI corruptions, the robustness table and ImageNet-C style corruption errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from alzlib import robustness


def make_phantom(size: int = 48, seed: int = 0) -> np.ndarray:
    """Return a small head-like uint8 image: skull, textured brain, dark ventricles, black background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size * 2 - 1
    head = ((x / 0.8) ** 2 + (y / 0.9) ** 2 < 1) * 60.0
    brain = ((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1) * (120 + 40 * np.sin(8 * x) * np.cos(6 * y))
    ventricles = ((x / 0.15) ** 2 + (y / 0.3) ** 2 < 1) * 100.0
    return np.clip(head + brain - ventricles + rng.normal(0, 3, (size, size)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return make_phantom()


def test_every_corruption_is_deterministic_for_a_seed(phantom):
    for name in robustness.CORRUPTIONS:
        first = robustness.corrupt(phantom, name, 3, seed=7)
        again = robustness.corrupt(phantom, name, 3, seed=7)
        np.testing.assert_array_equal(first, again, err_msg=name)
    noisy_seed_7 = robustness.corrupt(phantom, "rician_noise", 3, seed=7)
    noisy_seed_8 = robustness.corrupt(phantom, "rician_noise", 3, seed=8)
    assert not np.array_equal(noisy_seed_7, noisy_seed_8)


@pytest.mark.parametrize("name", list(robustness.CORRUPTIONS))
def test_mean_absolute_difference_rises_with_severity(phantom, name):
    for seed in (0, 1):
        differences = [np.abs(robustness.corrupt(phantom, name, severity, seed).astype(int) - phantom).mean()
                       for severity in robustness.SEVERITIES]
        assert differences[0] > 0, f"{name} at severity 1 left the image unchanged"
        assert np.all(np.diff(differences) > 0), f"{name} seed {seed}: {np.round(differences, 2)}"


@pytest.mark.parametrize("name", list(robustness.CORRUPTIONS))
def test_dtype_shape_and_range_are_preserved(name):
    # A non-square image with both extremes present checks clipping and axis handling.
    image = make_phantom(40)[:, 4:34].copy()
    image[0, 0], image[-1, -1] = 0, 255
    for severity in robustness.SEVERITIES:
        result = robustness.corrupt(image, name, severity, seed=3)
        assert result.dtype == np.uint8 and result.shape == image.shape
        assert int(result.min()) >= 0 and int(result.max()) <= 255


def test_input_image_is_left_untouched(phantom):
    copy = phantom.copy()
    for name in robustness.CORRUPTIONS:
        robustness.corrupt(phantom, name, 5, seed=1)
    np.testing.assert_array_equal(phantom, copy)


def test_unknown_name_severity_or_image_raise_value_error(phantom):
    with pytest.raises(ValueError, match="Unknown corruption 'snow'"):
        robustness.corrupt(phantom, "snow", 1)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity must be an integer"):
            robustness.corrupt(phantom, "gaussian_blur", severity)
    with pytest.raises(ValueError, match="uint8 greyscale"):
        robustness.corrupt(phantom.astype(np.float32), "gamma", 1)
    with pytest.raises(ValueError, match="uint8 greyscale"):
        robustness.corrupt(np.stack([phantom] * 3, axis=-1), "gamma", 1)


def test_brightness_and_contrast_follow_their_formulas(phantom):
    brightened = robustness.corrupt(phantom, "brightness", 1)
    np.testing.assert_array_equal(brightened, np.clip(phantom.astype(int) + 15, 0, 255))
    flat = np.full((8, 8), 100, dtype=np.uint8)
    np.testing.assert_array_equal(robustness.corrupt(flat, "contrast", 5), flat)


def mean_intensity_predictor(images: np.ndarray) -> np.ndarray:
    """Two-class probabilities from mean brightness: bright images are class 1."""
    score = 1 / (1 + np.exp(-(images.reshape(len(images), -1).mean(axis=1) - 60) / 5))
    return np.stack([1 - score, score], axis=1)


def make_cohort() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return 12 images: dim ones labelled 0, bright ones labelled 1, three images per subject."""
    dim = [(make_phantom(32, seed) * 0.5).astype(np.uint8) for seed in range(6)]
    bright = [make_phantom(32, seed) for seed in range(6, 12)]
    labels = np.array([0] * 6 + [1] * 6)
    subjects = np.repeat(["S1", "S2", "S3", "S4"], 3)
    return np.stack(dim + bright), labels, subjects


def test_evaluate_robustness_scores_every_model_corruption_and_severity():
    images, labels, subjects = make_cohort()
    models = {"bright": mean_intensity_predictor, "constant": lambda batch: np.tile([0.9, 0.1], (len(batch), 1))}
    table = robustness.evaluate_robustness(models, images, labels, subject_ids=subjects, seed=0)
    assert len(table) == 2 * (1 + len(robustness.CORRUPTIONS) * 5)
    clean = table[table["corruption"] == "clean"].set_index("model")
    assert clean.loc["bright", "accuracy"] == 1.0 and clean.loc["bright", "subject_accuracy"] == 1.0
    assert clean.loc["constant", "accuracy"] == 0.5 and clean.loc["constant", "balanced_accuracy"] == 0.5
    assert (clean["severity"] == 0).all() and (clean["mean_abs_difference"] == 0).all()
    # Adding 95 grey levels pushes every image above the threshold: dim ones are now called bright.
    worst = table.query("model == 'bright' and corruption == 'brightness' and severity == 5").iloc[0]
    assert worst["accuracy"] == 0.5 and worst["balanced_accuracy"] == 0.5 and worst["n_subjects"] == 4
    again = robustness.evaluate_robustness(models, images, labels, subject_ids=subjects, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_scores_average_recall_over_the_classes_present_without_warning():
    images, labels, subjects = make_cohort()

    def three_classes(batch):
        """Class 0 for dim images, class 2 (no one's label: no recall, must not count) for bright ones."""
        return np.where(mean_intensity_predictor(batch)[:, 1:] > 0.5, [0.1, 0.1, 0.8], [0.8, 0.1, 0.1])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = robustness.evaluate_robustness(three_classes, images, labels, subject_ids=subjects,
                                               corruptions=["gamma"], severities=[1])
    clean = table.iloc[0]
    assert clean["accuracy"] == 0.5 and clean["balanced_accuracy"] == 0.5  # recalls 1 (class 0) and 0 (class 1)
    assert clean["subject_accuracy"] == 0.5 and clean["subject_balanced_accuracy"] == 0.5


def test_evaluate_robustness_rejects_bad_inputs():
    images, labels, _ = make_cohort()
    with pytest.raises(ValueError, match="images_uint8"):
        robustness.evaluate_robustness(mean_intensity_predictor, images.astype(float), labels)
    with pytest.raises(ValueError, match="labels must be 12 integers"):
        robustness.evaluate_robustness(mean_intensity_predictor, images, labels[:5])
    with pytest.raises(ValueError, match="predict_fn must return"):
        robustness.evaluate_robustness(lambda batch: np.ones(len(batch)), images, labels, corruptions=["gamma"])
    with pytest.raises(ValueError, match="Unknown corruption 'fog'"):
        robustness.evaluate_robustness(mean_intensity_predictor, images, labels, corruptions=["gamma", "fog"])
    with pytest.raises(ValueError, match="severity must be an integer"):
        robustness.evaluate_robustness(mean_intensity_predictor, images, labels, severities=[1, 9])
    with pytest.raises(ValueError, match="more than one label"):
        robustness.evaluate_robustness(mean_intensity_predictor, images, labels, subject_ids=["S1"] * 12,
                                       corruptions=["gamma"])


def hand_made_table() -> pd.DataFrame:
    """Accuracies for two corruptions at two severities: reference errors clean .1, corrupted .2/.3/.4/.5."""
    accuracy = {
        ("baseline_cnn", "clean", 0): 0.9, ("baseline_cnn", "blur", 1): 0.8, ("baseline_cnn", "blur", 2): 0.7,
        ("baseline_cnn", "noise", 1): 0.6, ("baseline_cnn", "noise", 2): 0.5,
        ("resnet", "clean", 0): 0.95, ("resnet", "blur", 1): 0.9, ("resnet", "blur", 2): 0.85,
        ("resnet", "noise", 1): 0.75, ("resnet", "noise", 2): 0.45,
    }
    return pd.DataFrame([{"model": model, "corruption": corruption, "severity": severity,
                          "accuracy": value, "balanced_accuracy": value}
                         for (model, corruption, severity), value in accuracy.items()])


def test_corruption_error_arithmetic_on_a_hand_made_table():
    errors = robustness.corruption_errors(hand_made_table(), reference_model="baseline_cnn", metric="accuracy")
    values = errors.set_index(["model", "corruption"])
    assert values.loc[("baseline_cnn", "blur"), "ce"] == pytest.approx(100.0)
    assert values.loc[("baseline_cnn", "mean"), "ce"] == pytest.approx(100.0)
    assert values.loc[("baseline_cnn", "mean"), "relative_ce"] == pytest.approx(100.0)
    # resnet blur: errors .10 + .15 = .25 against .20 + .30 = .50 -> CE 50%;
    # relative: (.25 - 2 * .05) / (.50 - 2 * .10) = .15 / .30 -> 50%.
    assert values.loc[("resnet", "blur"), "ce"] == pytest.approx(50.0)
    assert values.loc[("resnet", "blur"), "relative_ce"] == pytest.approx(50.0)
    # resnet noise: .25 + .55 = .80 against .40 + .50 = .90 -> 88.9%; relative (.80 - .10) / (.90 - .20) = 100%.
    assert values.loc[("resnet", "noise"), "ce"] == pytest.approx(800 / 9)
    assert values.loc[("resnet", "noise"), "relative_ce"] == pytest.approx(100.0)
    assert values.loc[("resnet", "mean"), "ce"] == pytest.approx((50 + 800 / 9) / 2)
    assert values.loc[("resnet", "mean"), "relative_ce"] == pytest.approx(75.0)
    assert values.loc[("resnet", "mean"), "clean_error"] == pytest.approx(0.05)
    assert values.loc[("resnet", "mean"), "relative_corruptions_used"] == 2
    summary = robustness.summarise_corruption_errors(errors).set_index("model")
    assert summary.loc["baseline_cnn", "relative_mce"] == pytest.approx(100.0)
    assert summary.loc["resnet", "mce"] == pytest.approx((50 + 800 / 9) / 2)


def test_undefined_relative_errors_are_skipped_and_counted():
    # The reference's noise error falls below its clean error at severity 1 and sums to no rise: undefined ratio.
    table = hand_made_table()
    table.loc[(table["model"] == "baseline_cnn") & (table["corruption"] == "noise"), "accuracy"] = [0.95, 0.85]
    means = robustness.corruption_errors(table, metric="accuracy").set_index(["model", "corruption"])
    assert np.isnan(means.loc[("resnet", "noise"), "relative_ce"])
    assert means.loc[("resnet", "mean"), "relative_ce"] == pytest.approx(50.0)
    assert means.loc[("resnet", "mean"), "relative_corruptions_used"] == 1
    assert means.loc[("resnet", "mean"), "corruptions_used"] == 2


def test_corruption_errors_reject_a_missing_reference_or_clean_row():
    table = hand_made_table()
    with pytest.raises(ValueError, match="Reference model 'efficientnetb0' is not in the table"):
        robustness.corruption_errors(table, reference_model="efficientnetb0")
    without_clean = table[~((table["model"] == "resnet") & (table["corruption"] == "clean"))]
    with pytest.raises(ValueError, match=r"No clean row for models \['resnet'\]"):
        robustness.corruption_errors(without_clean)
    with pytest.raises(ValueError, match="metric must be one of"):
        robustness.corruption_errors(table, metric="f1")
    uneven = table.drop(index=table.index[-1])
    with pytest.raises(ValueError, match="differ in the severities of 'noise'"):
        robustness.corruption_errors(uneven)


def test_sample_test_rows_is_stratified_and_seeded():
    manifest = pd.DataFrame({"label": ["A"] * 30 + ["B"] * 10 + ["A"] * 5,
                             "split": ["test"] * 40 + ["train"] * 5, "path": [f"image{i}.jpg" for i in range(45)]})
    sample = robustness.sample_test_rows(manifest, 8, seed=1)
    assert sample["label"].value_counts().to_dict() == {"A": 6, "B": 2}
    assert set(sample["split"]) == {"test"}
    pd.testing.assert_frame_equal(sample, robustness.sample_test_rows(manifest, 8, seed=1))
    assert len(robustness.sample_test_rows(manifest, 100)) == 40
    # A class too small for its share of the sample still gets one image (sampling.stratified_sample).
    with_rare = pd.concat([manifest, pd.DataFrame({"label": ["C"], "split": ["test"], "path": ["rare.jpg"]})])
    assert robustness.sample_test_rows(with_rare, 8, seed=1)["label"].value_counts().to_dict() == {"A": 5, "B": 2,
                                                                                                  "C": 1}
    with pytest.raises(ValueError, match="no test rows"):
        robustness.sample_test_rows(manifest[manifest["split"] == "train"], 3)


def test_tables_are_written_and_plots_are_drawn(tmp_path):
    images, labels, _ = make_cohort()
    table = robustness.evaluate_robustness({"baseline_cnn": mean_intensity_predictor}, images[:4], labels[:4],
                                           corruptions=["gamma", "brightness"])
    errors = robustness.corruption_errors(table)
    written = robustness.write_robustness_tables(table, errors, tmp_path / "robustness")
    assert pd.read_csv(written["robustness"]).shape == table.shape
    assert pd.read_csv(written["mce_summary"])["mce"].tolist() == [100.0]
    figures = [robustness.plot_robustness_curves(table, chance=0.5), robustness.plot_robustness_heatmap(table),
               robustness.plot_corruption_grid(images[0], corruptions=["gamma", "motion_ghosting"])]
    for figure in figures:
        assert isinstance(figure, Figure)
    assert len(figures[0].axes) == 2 and len(figures[2].axes) == 2 * 6
