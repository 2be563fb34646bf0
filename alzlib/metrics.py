"""Scores the stages share outside evaluation (EDA audit, feature maps, robustness, training's validation callback).

Each is scikit-learn's, so every stage computes a score the same way evaluation.py does.
"""

from __future__ import annotations

import warnings

import numpy as np


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
