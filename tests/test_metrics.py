"""Shared scores against scikit-learn: ordinal kappa and stage error, and the vectorised confusion-matrix scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from alzlib import metrics


def _random_labels(seed: int, count: int = 300, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Return random true and predicted class indices, the predictions right about half the time."""
    generator = np.random.default_rng(seed)
    truth = generator.integers(0, classes, count)
    predicted = np.where(generator.random(count) < 0.5, truth, generator.integers(0, classes, count))
    return truth, predicted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_and_stage_error_equal_scikit_learn_on_random_data(seed):
    truth, predicted = _random_labels(seed)
    assert metrics.quadratic_weighted_kappa(truth, predicted, 4) == pytest.approx(
        sk.cohen_kappa_score(truth, predicted, weights="quadratic"))
    assert metrics.mean_absolute_stage_error(truth, predicted) == pytest.approx(
        sk.mean_absolute_error(truth, predicted))


def test_kappa_weights_stage_distance_even_when_a_stage_is_absent():
    # Stage 2 absent: calling 3 a 1 is two stages off, not one (scikit-learn would renumber without the labels).
    truth, predicted = np.array([0, 1, 3, 3]), np.array([0, 1, 1, 3])
    assert metrics.quadratic_weighted_kappa(truth, predicted, 4) == pytest.approx(
        sk.cohen_kappa_score(truth, predicted, labels=[0, 1, 2, 3], weights="quadratic"))
    assert metrics.mean_absolute_stage_error(truth, predicted) == pytest.approx(0.5)
    assert np.isnan(metrics.quadratic_weighted_kappa([0, 0], [0, 0], 4))  # no expected disagreement: undefined


@pytest.mark.parametrize("seed", [3, 4])
def test_confusion_scores_equal_scikit_learn(seed):
    truth, predicted = _random_labels(seed, count=80)
    predicted[predicted == 2] = 1  # a class never predicted
    confusion = sk.confusion_matrix(truth, predicted, labels=range(4))[None]
    scores = {name: values[0] for name, values in metrics.confusion_scores(confusion).items()}
    assert set(scores) == set(metrics.CONFUSION_METRICS)
    assert scores["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert scores["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(truth, predicted))
    assert scores["macro_f1"] == pytest.approx(sk.f1_score(truth, predicted, average="macro", zero_division=0))
    assert scores["weighted_f1"] == pytest.approx(sk.f1_score(truth, predicted, average="weighted", zero_division=0))
    assert scores["quadratic_kappa"] == pytest.approx(sk.cohen_kappa_score(truth, predicted, weights="quadratic"))
    assert scores["mean_absolute_error"] == pytest.approx(sk.mean_absolute_error(truth, predicted))


def test_confusion_scores_reject_a_non_square_batch():
    with pytest.raises(ValueError, match="square"):
        metrics.confusion_scores(np.ones((2, 4, 3)))
