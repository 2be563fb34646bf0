"""Scores the stages share (evaluation, comparison, robustness, the EDA audit, feature maps, training's callback).

Each is scikit-learn's, so every stage computes a score the same way; `confusion_scores` is the vectorised form that
the bootstraps use, tested equal to scikit-learn's on every resample.
"""

from __future__ import annotations

import warnings

import numpy as np

# Scores that know the stages are ordered (NonDemented < VeryMild < Mild < Moderate): only for the 4-class task.
ORDINAL_METRICS = ("quadratic_kappa", "mean_absolute_error")
CONFUSION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", *ORDINAL_METRICS)


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Return scikit-learn's balanced accuracy: the mean recall over the classes present in `truth`."""
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        # Both warnings are about cases this score handles as intended, and would repeat for every model, epoch and
        # permutation: a predicted class absent from `truth` has no recall and is left out of the mean (a test set
        # without a class); one class in both `truth` and `predicted` gives a 1 x 1 confusion matrix, its recall.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        return float(balanced_accuracy_score(truth, predicted))


def quadratic_weighted_kappa(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Return scikit-learn's Cohen's kappa with quadratic weights over class indices 0..num_classes-1 (NaN: undefined).

    The labels are passed explicitly so that the weight of a disagreement is the squared distance in stages even
    when a class is absent (scikit-learn would otherwise renumber the classes present).
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        # Undefined (one class in both truth and prediction) is returned as NaN and reported as such by the caller.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(cohen_kappa_score(truth, predicted, labels=list(range(num_classes)), weights="quadratic"))


def mean_absolute_stage_error(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Return scikit-learn's mean absolute error between class indices: how many stages off a prediction is."""
    from sklearn.metrics import mean_absolute_error

    return float(mean_absolute_error(np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)))


def confusion_scores(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """Return every CONFUSION_METRICS score for a batch of confusion matrices (resamples x true x predicted).

    The rules are scikit-learn's: balanced accuracy and macro F1 average over the classes present in the truth
    (F1 also over predicted-only classes, as zero); kappa weights disagreements by squared class distance; NaN where
    a score is undefined (no images, or kappa with no expected disagreement).
    """
    confusions = np.asarray(confusions, dtype=np.float64)
    if confusions.ndim != 3 or confusions.shape[1] != confusions.shape[2]:
        raise ValueError(f"confusions must be a batch of square matrices (resamples x K x K); got {confusions.shape}.")
    true_positive = np.diagonal(confusions, axis1=1, axis2=2)
    support, predicted = confusions.sum(axis=2), confusions.sum(axis=1)
    total = support.sum(axis=1)
    classes = np.arange(confusions.shape[1])
    distance = np.abs(classes[:, None] - classes[None, :])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN: undefined, handled by the caller
        recall = np.where(support > 0, true_positive / support, np.nan)
        f1_denominator = support + predicted
        f1 = np.where(f1_denominator > 0, 2 * true_positive / f1_denominator, np.nan)
        expected = support[:, :, None] * predicted[:, None, :] / total[:, None, None]
        expected_disagreement = np.sum(distance**2 * expected, axis=(1, 2))
        kappa = 1.0 - np.sum(distance**2 * confusions, axis=(1, 2)) / expected_disagreement
        return {"accuracy": true_positive.sum(axis=1) / total,
                "balanced_accuracy": np.nanmean(recall, axis=1),
                "macro_f1": np.nanmean(f1, axis=1),
                "weighted_f1": np.nansum(np.where(support > 0, f1 * support, 0.0), axis=1) / total,
                "quadratic_kappa": np.where(expected_disagreement > 0, kappa, np.nan),
                "mean_absolute_error": np.sum(distance * confusions, axis=(1, 2)) / total}
