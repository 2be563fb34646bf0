"""Evaluation (notebook 09): metrics with subject-bootstrap intervals, calibration, subject votes and figures."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import backend, config
from alzlib.metrics import ORDINAL_METRICS, confusion_scores, mean_absolute_stage_error, quadratic_weighted_kappa
from alzlib.storage import read_json, save_figure, write_csv, write_json, write_parquet

CONFIDENCE = 0.95
ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc")
# Every name the vectorised bootstrap knows: the ordinal scores are reported for the 4-class task only.
BOOTSTRAP_METRICS = (*INTERVAL_METRICS, *ORDINAL_METRICS)
EVALUATED_SPLITS = ("val", "test")
LEVELS = ("slice", "subject")
PREDICTION_COLUMNS = ("path", "subject_id", "split", "label_index")
# Temperatures searched on a log scale: below 0.05 or above 20 a model is broken, not miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Keeps the (resamples x slices) weight matrix of one bootstrap chunk near 400 MB at most.
BOOTSTRAP_CHUNK_ELEMENTS = 50_000_000
PROBABILITY_EPSILON = 1e-12
# Largest gap allowed between the model's own probabilities and the softmax of the logits computed beside them. On
# CPU they agree to about 1e-7 (measured on all four architectures); on Ampere and Hopper GPUs TensorFlow and JAX run
# float32 matrix products in TF32 (10-bit mantissa) by default, which can move a probability by about 1e-3. A layer
# that is not what it seems gives gaps of order 0.1.
LOGIT_CHECK_TOLERANCE = 1e-2
# Below this many validation subjects a temperature for the subject vote would be fitted on too few points to trust.
MIN_VOTE_CALIBRATION_SUBJECTS = 10
# Below this many test subjects a subject bootstrap has too few distinct resamples for its interval to mean much
# (the smoke profile has 4): the random-label control then says 'inconclusive' instead of passing or failing.
MIN_CONTROL_TEST_SUBJECTS = 10


# ----------------------------------------------------------------------------------------------- checks


def _check_labels_and_probabilities(y_true, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Return labels (int, N) and probabilities (float, N x K), raising ValueError on bad shapes or values."""
    labels = np.asarray(y_true)
    scores = np.asarray(probabilities, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"probabilities must be a 2-D array (images x classes, at least 2 classes); "
                         f"got shape {scores.shape}.")
    if labels.ndim != 1 or len(labels) != len(scores):
        raise ValueError(f"y_true must be 1-D with one label per probability row ({len(scores)}); "
                         f"got shape {labels.shape}.")
    if len(labels) == 0:
        raise ValueError("No predictions to evaluate: y_true is empty.")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError("y_true must hold integer class indices.")
        labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"y_true holds class indices outside 0..{scores.shape[1] - 1}: "
                         f"{sorted(set(labels.tolist()))}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("probabilities contain NaN or infinite values.")
    return labels.astype(np.int64), scores


def _is_probability_matrix(values: np.ndarray) -> bool:
    """True when every row is non-negative and sums to 1 (softmax output)."""
    return bool(values.min() >= 0 and values.max() <= 1 and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


def _finite_or_none(value):
    """Return a float, or None where the value is undefined (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def strict_json(value):
    """Replace NaN and infinities by None recursively so the result can be written as strict JSON."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, (float, np.floating)):
        return _finite_or_none(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# ----------------------------------------------------------------------------------------------- metrics


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return row-wise softmax probabilities of `logits` (numerically stable)."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def one_vs_rest_roc(y_true, probabilities, class_names: Sequence[str] | None = None) -> dict:
    """Return per-class one-vs-rest ROC AUC and curves; a class with no positives or negatives gets None, a reason."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    names = _class_names(class_names, scores.shape[1])
    per_class, curves = {}, {}
    for index, name in enumerate(names):
        positive = labels == index
        if positive.all() or not positive.any():
            reason = "class absent from the split" if not positive.any() else "no other class in the split"
            per_class[name] = {"auc": None, "reason": reason, "positives": int(positive.sum())}
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(positive, scores[:, index])
        per_class[name] = {"auc": float(roc_auc_score(positive, scores[:, index])), "positives": int(positive.sum())}
        curves[name] = {"false_positive_rate": false_positive_rate.tolist(),
                        "true_positive_rate": true_positive_rate.tolist()}
    defined = [entry["auc"] for entry in per_class.values() if entry["auc"] is not None]
    macro = float(np.mean(defined)) if defined else None
    return {"per_class": per_class, "macro_auc": macro, "classes_scored": len(defined), "curves": curves}


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Return the class names, or class_0.. when none were given, checking their count."""
    if class_names is None:
        return [f"class_{index}" for index in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} probability columns.")
    return list(class_names)


def confusion_matrices(y_true, predictions, num_classes: int) -> dict:
    """Return the confusion matrix (rows true, columns predicted) as counts and row-normalised (None for empty rows)."""
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(y_true, predictions, labels=list(range(num_classes)))
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(row_totals > 0, counts / np.maximum(row_totals, 1), np.nan)
    return {"counts": counts.tolist(), "row_normalised": strict_json(normalised)}


def classification_metrics(y_true, probabilities, class_names: Sequence[str] | None = None) -> dict:
    """Return accuracy, balanced accuracy, macro/weighted F1, per-class scores, OvR ROC AUC and confusion matrices."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    names = _class_names(class_names, scores.shape[1])
    predictions = scores.argmax(axis=1)
    with warnings.catch_warnings():
        # A class predicted but absent from y_true is expected on small splits; its recall is simply undefined.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(labels, predictions)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(len(names))), zero_division=np.nan)
    per_class = {name: {"precision": _finite_or_none(precision[i]), "recall": _finite_or_none(recall[i]),
                        "f1": _finite_or_none(f1[i]), "support": int(support[i])} for i, name in enumerate(names)}
    roc = one_vs_rest_roc(labels, scores, names)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
        "macro_auc": roc["macro_auc"],
        "per_class": per_class,
        "roc_auc": roc["per_class"],
        "confusion_matrix": confusion_matrices(labels, predictions, len(names)),
        **ordinal_metrics(labels, predictions, names if class_names is not None else None),
    }


def is_ordinal_task(class_names: Sequence[str] | None) -> bool:
    """True for the 4-class task in stage order (config.CLASS_NAMES): the one task whose class indices are stages."""
    return class_names is not None and tuple(class_names) == tuple(config.CLASS_NAMES)


def ordinal_metrics(y_true, predictions, class_names: Sequence[str] | None) -> dict:
    """Return quadratic weighted kappa and mean absolute error in stages, or None for both with the reason."""
    if not is_ordinal_task(class_names):
        reason = (f"ordinal metrics apply to the 4-class task in stage order {' < '.join(config.CLASS_NAMES)}; "
                  f"this task's classes are {list(class_names) if class_names is not None else 'not named'}")
        return {"quadratic_kappa": None, "mean_absolute_error": None, "ordinal_reason": reason}
    kappa = quadratic_weighted_kappa(y_true, predictions, len(config.CLASS_NAMES))
    reason = None if math.isfinite(kappa) else "kappa undefined: a single class in both truth and prediction"
    return {"quadratic_kappa": _finite_or_none(kappa),
            "mean_absolute_error": mean_absolute_stage_error(y_true, predictions), "ordinal_reason": reason}


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Return the equal-width bin (0..bins-1) of each value in [0, 1]; bins are (lower, upper], 0 in the first."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}.")
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, bins - 1)


def calibration_bins(y_true, probabilities, bins: int = ECE_BINS) -> dict:
    """Return the equal-width bins of max-probability confidence with count, mean confidence and accuracy per bin."""
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    confidence = scores.max(axis=1)
    correct = (scores.argmax(axis=1) == labels).astype(np.float64)
    index = _bin_index(confidence, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return {"lower": edges[:-1], "upper": edges[1:], "count": counts, "confidence": mean_confidence,
            "accuracy": accuracy}


def expected_calibration_error(y_true, probabilities, bins: int = ECE_BINS) -> float:
    """Return the ECE: the count-weighted mean gap between accuracy and confidence over equal-width bins."""
    table = calibration_bins(y_true, probabilities, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float(np.sum(table["count"][filled] * gaps) / table["count"].sum())


def _calibration_gaps(scores: np.ndarray, outcomes: np.ndarray, bins: int) -> np.ndarray:
    """Return per image its bin membership and its signed gap (outcome - score) in that bin (images x 2 bins)."""
    membership = np.eye(bins)[_bin_index(scores, bins)]
    return np.hstack([membership, membership * (np.asarray(outcomes, dtype=np.float64) - scores)[:, None]])


def _calibration_error_from_sums(sums: np.ndarray) -> np.ndarray:
    """Return the binned calibration error of each row of summed `_calibration_gaps` (resamples x 2 bins)."""
    bins = sums.shape[1] // 2
    return np.abs(sums[:, bins:]).sum(axis=1) / sums[:, :bins].sum(axis=1)


def _calibration_tables(labels: np.ndarray, scores: np.ndarray, bins: int) -> list[np.ndarray]:
    """Return the gap tables of the top-label calibration, then of each class one-vs-rest."""
    top_label = _calibration_gaps(scores.max(axis=1), scores.argmax(axis=1) == labels, bins)
    return [top_label, *(_calibration_gaps(scores[:, index], labels == index, bins)
                         for index in range(scores.shape[1]))]


def classwise_calibration_error(y_true, probabilities, class_names: Sequence[str] | None = None,
                                bins: int = ECE_BINS) -> dict:
    """Return each class's one-vs-rest ECE (its probability against being that class) and their mean (Kull 2019)."""
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    names = _class_names(class_names, scores.shape[1])
    errors = [float(_calibration_error_from_sums(table.sum(axis=0, keepdims=True))[0])
              for table in _calibration_tables(labels, scores, bins)[1:]]
    return {"per_class": dict(zip(names, errors, strict=True)), "mean": float(np.mean(errors))}


def calibration_intervals(y_true, probabilities, subject_ids, n: int = BOOTSTRAP_RESAMPLES,
                          seed: int = config.DEFAULT_SEED, bins: int = ECE_BINS,
                          confidence: float = CONFIDENCE) -> dict:
    """Return subject-bootstrap percentile intervals of the ECE and the mean classwise ECE.

    The resamples are those of `bootstrap_intervals` for the same seed (subjects drawn within their class).
    """
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    codes, counts, num_subjects = _bootstrap_counts(labels, subject_ids, n, seed)
    tables = _calibration_tables(labels, scores, bins)
    estimates = [_calibration_error_from_sums(table.sum(axis=0, keepdims=True))[0] for table in tables]
    values = [_calibration_error_from_sums(counts @ subject_sums(codes, num_subjects, table)) for table in tables]
    intervals = {"ece": percentile_interval(values[0], estimates[0], confidence),
                 "classwise_ece": percentile_interval(np.mean(values[1:], axis=0), np.mean(estimates[1:]), confidence)}
    for entry in intervals.values():
        entry["subjects"] = num_subjects
    return intervals


def brier_score(y_true, probabilities) -> float:
    """Return the multi-class Brier score: mean over images of the squared distance to the one-hot label."""
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    one_hot = np.eye(scores.shape[1])[labels]
    return float(np.mean(np.sum((scores - one_hot) ** 2, axis=1)))


def negative_log_likelihood(y_true, probabilities) -> float:
    """Return the mean negative log-probability of the true class."""
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    return float(-np.mean(np.log(np.clip(scores[np.arange(len(labels)), labels], PROBABILITY_EPSILON, None))))


def _to_logits(logits_or_probs, kind: str) -> np.ndarray:
    """Return logits; probabilities are turned into log-probabilities (softmax-equivalent logits)."""
    values = np.asarray(logits_or_probs, dtype=np.float64)
    if kind not in ("auto", "logits", "probabilities"):
        raise ValueError(f"kind must be 'auto', 'logits' or 'probabilities', got {kind!r}.")
    if kind == "probabilities" or (kind == "auto" and _is_probability_matrix(values)):
        return np.log(np.clip(values, PROBABILITY_EPSILON, None))
    return values


def apply_temperature(logits_or_probs, temperature: float, kind: str = "auto") -> np.ndarray:
    """Return softmax(logits / temperature); probabilities are first turned into log-probabilities."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    return softmax(_to_logits(logits_or_probs, kind) / temperature)


def fit_temperature(logits_or_probs, y_true, kind: str = "auto") -> float:
    """Return the temperature that minimises the negative log-likelihood of `y_true` (fit on validation only)."""
    from scipy.optimize import minimize_scalar

    logits = _to_logits(logits_or_probs, kind)
    labels, _ = _check_labels_and_probabilities(y_true, logits)

    def loss(log_temperature: float) -> float:
        scaled = logits / np.exp(log_temperature)
        shifted = scaled - scaled.max(axis=1, keepdims=True)
        log_normaliser = np.log(np.exp(shifted).sum(axis=1))
        return float(np.mean(log_normaliser - shifted[np.arange(len(labels)), labels]))

    bounds = (math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1]))
    result = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


# ----------------------------------------------------------------------------------------------- subjects and bootstrap


def soft_vote(probabilities, subject_ids, y_true) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (subject ids, subject labels, mean probability over each subject's slices), in first-seen order."""
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    subjects = np.asarray(subject_ids)
    if len(subjects) != len(labels):
        raise ValueError(f"subject_ids has {len(subjects)} entries for {len(labels)} predictions.")
    if pd.isna(subjects).any():
        raise ValueError("subject_ids contains missing values: every image needs a subject to be voted.")
    frame = pd.DataFrame(scores).assign(subject_id=subjects, label=labels)
    label_counts = frame.groupby("subject_id", sort=False)["label"].nunique()
    mixed = label_counts[label_counts > 1]
    if len(mixed):
        raise ValueError(f"Subjects with slices of more than one label cannot be voted: {list(mixed.index[:5])}.")
    grouped = frame.groupby("subject_id", sort=False)
    mean_scores = grouped[list(range(scores.shape[1]))].mean()
    subject_labels = grouped["label"].first().loc[mean_scores.index]
    return mean_scores.index.to_numpy(), subject_labels.to_numpy(np.int64), mean_scores.to_numpy(np.float64)


def subject_codes(subject_ids, count: int) -> tuple[np.ndarray, int]:
    """Return an integer code per slice for its subject and the number of subjects."""
    subjects = np.asarray(subject_ids)
    if len(subjects) != count:
        raise ValueError(f"subject_ids has {len(subjects)} entries for {count} predictions.")
    if pd.isna(subjects).any():
        raise ValueError("subject_ids contains missing values: every image needs a subject for the subject bootstrap.")
    codes, uniques = pd.factorize(subjects)
    return codes.astype(np.int64), len(uniques)


def subject_strata(codes: np.ndarray, labels: np.ndarray, num_subjects: int) -> np.ndarray:
    """Return the class each subject is resampled within: its most frequent label (ties: the lower), as in splits."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.zeros((num_subjects, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (codes, labels), 1)
    return counts.argmax(axis=1)


def resample_subject_counts(classes: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Return how often each subject is drawn in each resample (resamples x subjects), drawing within each class.

    Each resample draws, with replacement, as many subjects of each class as the data has of that class, so that no
    resample lacks a class and every score that averages over classes is defined in every resample.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"The number of bootstrap resamples must be a positive integer, got {resamples!r}.")
    generator = np.random.default_rng(seed)
    classes = np.asarray(classes)
    counts = np.zeros((int(resamples), len(classes)), dtype=np.int64)
    for label in np.unique(classes):
        members = np.flatnonzero(classes == label)
        # Drawing n subjects of a class with replacement is a multinomial draw of their counts.
        counts[:, members] = generator.multinomial(len(members), np.full(len(members), 1.0 / len(members)),
                                                   size=int(resamples))
    return counts


def subject_sums(codes: np.ndarray, num_subjects: int, values: np.ndarray) -> np.ndarray:
    """Return the column sums of `values` (slices x columns) per subject (subjects x columns)."""
    sums = np.zeros((num_subjects, values.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, values)
    return sums


def subject_confusions(codes: np.ndarray, num_subjects: int, labels: np.ndarray, predictions: np.ndarray,
                       num_classes: int) -> np.ndarray:
    """Return each subject's confusion counts, flattened (subjects x classes²): resample counts @ this = confusions."""
    pairs = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predictions, dtype=np.int64)
    return subject_sums(codes, num_subjects, np.eye(num_classes * num_classes)[pairs])


def _confusion_batch(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """Return weighted confusion matrices, one per weight row (resamples x true x predicted)."""
    pair = labels * num_classes + predictions
    one_hot = np.zeros((len(labels), num_classes * num_classes))
    one_hot[np.arange(len(labels)), pair] = 1.0
    return (weights @ one_hot).reshape(len(weights), num_classes, num_classes)


def _weighted_auc_batch(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the weighted Mann-Whitney AUC (ties count half) of one score column for each weight row."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order]
    sorted_weights = weights[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
    positive_mass = np.add.reduceat(sorted_weights * sorted_positive, starts, axis=1)
    negative_mass = np.add.reduceat(sorted_weights * ~sorted_positive, starts, axis=1)
    negatives_below = np.cumsum(negative_mass, axis=1) - negative_mass
    positive_total, negative_total = positive_mass.sum(axis=1), negative_mass.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pairs_ranked_right = np.sum(positive_mass * (negatives_below + 0.5 * negative_mass), axis=1)
        area = pairs_ranked_right / (positive_total * negative_total)
    return np.where((positive_total > 0) & (negative_total > 0), area, np.nan)


def _macro_auc_batch(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the macro one-vs-rest AUC over classes defined in each resample."""
    per_class = np.stack([_weighted_auc_batch(scores[:, index], labels == index, weights)
                          for index in range(scores.shape[1])], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_class, axis=1)


def _weighted_metrics(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, metrics: Sequence[str]) -> dict:
    """Return each named metric for every weight row (one row per resample)."""
    results = {}
    confusion_names = [name for name in metrics if name != "macro_auc"]
    if confusion_names:
        batch = confusion_scores(_confusion_batch(labels, scores.argmax(axis=1), weights, scores.shape[1]))
        results.update({name: batch[name] for name in confusion_names})
    if "macro_auc" in metrics:
        results["macro_auc"] = _macro_auc_batch(labels, scores, weights)
    return results


def percentile_interval(values: np.ndarray, estimate, confidence: float = CONFIDENCE) -> dict:
    """Return the percentile interval of the defined bootstrap values (undefined ones counted) around `estimate`."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[np.isfinite(values)]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = (np.percentile(defined, [tail, 100.0 - tail]) if len(defined) else (np.nan, np.nan))
    return {"estimate": _finite_or_none(estimate), "low": _finite_or_none(low), "high": _finite_or_none(high),
            "confidence": confidence, "resamples": int(len(values)),
            "undefined_resamples": int(len(values) - len(defined))}


def _bootstrap_counts(labels: np.ndarray, subject_ids, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Return slice subject codes, the class-stratified resample counts (n x subjects) and the subject count."""
    codes, num_subjects = subject_codes(subject_ids, len(labels))
    counts = resample_subject_counts(subject_strata(codes, labels, num_subjects), n, seed)
    return codes, counts, num_subjects


def bootstrap_intervals(y_true, probabilities, subject_ids, metrics: Sequence[str] = INTERVAL_METRICS,
                        n: int = BOOTSTRAP_RESAMPLES, seed: int = config.DEFAULT_SEED,
                        confidence: float = CONFIDENCE) -> dict:
    """Return percentile intervals of several metrics from one seeded bootstrap that resamples subjects.

    Subjects are drawn with replacement within each class (stratified), so every resample holds every class.
    """
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    unknown = set(metrics) - set(BOOTSTRAP_METRICS)
    if unknown:
        raise ValueError(f"Unknown metric(s) {sorted(unknown)}: expected names from {BOOTSTRAP_METRICS} or a callable.")
    if n < 1 or not 0 < confidence < 1:
        raise ValueError(f"Need n >= 1 resamples and 0 < confidence < 1; got n={n}, confidence={confidence}.")
    estimates, values, num_subjects = bootstrap_values(labels, scores, subject_ids, metrics, n, seed)
    intervals = {name: percentile_interval(values[name], estimates[name], confidence) for name in metrics}
    for entry in intervals.values():
        entry["subjects"] = num_subjects
    return intervals


def bootstrap_values(y_true, probabilities, subject_ids, metrics: Sequence[str] = ("balanced_accuracy",),
                     n: int = BOOTSTRAP_RESAMPLES, seed: int = config.DEFAULT_SEED
                     ) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
    """Return (point estimates, the n resampled values per metric, subject count) of a class-stratified subject
    bootstrap: the replicates themselves, for differences between two independent samples (alzlib.external)."""
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    codes, counts, num_subjects = _bootstrap_counts(labels, subject_ids, n, seed)
    estimates = _weighted_metrics(labels, scores, np.ones((1, len(labels))), metrics)
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // len(labels))
    parts = [_weighted_metrics(labels, scores, counts[start:start + chunk][:, codes].astype(np.float64), metrics)
             for start in range(0, n, chunk)]
    values = {name: np.concatenate([part[name] for part in parts]) for name in metrics}
    return {name: float(estimates[name][0]) for name in metrics}, values, num_subjects


def subject_bootstrap(y_true, probabilities, subject_ids, metric: str | Callable = "balanced_accuracy",
                      n: int = BOOTSTRAP_RESAMPLES, seed: int = config.DEFAULT_SEED,
                      confidence: float = CONFIDENCE) -> dict:
    """Return the point estimate and percentile interval of `metric` from a bootstrap that resamples subjects.

    `metric` is a name from BOOTSTRAP_METRICS (vectorised) or a callable `metric(y_true, probabilities) -> float`
    evaluated on each resample (slower). Slices of one subject always enter or leave a resample together, and
    subjects are drawn within their class (the same resamples as `bootstrap_intervals` for the same seed).
    """
    if not callable(metric):
        return bootstrap_intervals(y_true, probabilities, subject_ids, (metric,), n, seed, confidence)[metric]
    labels, scores = _check_labels_and_probabilities(y_true, probabilities)
    codes, counts, num_subjects = _bootstrap_counts(labels, subject_ids, n, seed)
    values = []
    for row in counts:
        selected = np.repeat(np.arange(len(labels)), row[codes])
        values.append(metric(labels[selected], scores[selected]))
    result = percentile_interval(np.asarray(values, dtype=np.float64), metric(labels, scores), confidence)
    result["subjects"] = num_subjects
    return result


# ----------------------------------------------------------------------------------------------- predictions


def predict_probabilities(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Return the model's class probabilities for model-ready images, predicted in batches."""
    if len(images) == 0:
        raise ValueError("No images to predict.")
    outputs = np.asarray(backend.predict(model, images, batch_size), dtype=np.float64)
    if outputs.ndim != 2:
        raise ValueError(f"The model must output one score per class (2-D); it gave shape {outputs.shape}.")
    # A model that ends in logits is scored on their softmax so every later step sees probabilities.
    return outputs if _is_probability_matrix(outputs) else softmax(outputs)


def _final_dense(model):
    """Return the model's last layer when it is a Dense layer ending in softmax or no activation, else None."""
    import keras

    layers = getattr(model, "layers", None) or [None]
    final = layers[-1]
    activation = getattr(getattr(final, "activation", None), "__name__", "")
    return final if isinstance(final, keras.layers.Dense) and activation in ("softmax", "linear") else None


def predict_with_logits(model, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Return (probabilities, logits or None, where the logits came from), predicted in one pass.

    The project's models end in Dense(softmax) (alzlib.models): their logits are the penultimate features @ kernel +
    bias of that layer, computed here in float64 from a sub-model that outputs those features beside the
    probabilities. A model ending in a Dense layer without activation outputs its logits directly. Any other model
    gets logits None, and temperature scaling falls back to its probabilities.
    """
    import keras

    if len(images) == 0:
        raise ValueError("No images to predict.")
    final = _final_dense(model)
    if final is None:
        return predict_probabilities(model, images, batch_size), None, "none: the model does not end in a Dense layer"
    if final.activation.__name__ == "linear":
        logits = np.asarray(backend.predict(model, images, batch_size), dtype=np.float64)
        return softmax(logits), logits, "model output (final Dense without activation)"
    both = keras.Model(model.inputs, [final.input, model.outputs[0]])
    features, probabilities = backend.predict(both, images, batch_size)
    kernel = np.asarray(keras.ops.convert_to_numpy(final.kernel), dtype=np.float64)
    bias = (np.asarray(keras.ops.convert_to_numpy(final.bias), dtype=np.float64) if final.use_bias
            else np.zeros(kernel.shape[1]))
    logits = np.asarray(features, dtype=np.float64) @ kernel + bias
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not np.allclose(softmax(logits), probabilities, atol=LOGIT_CHECK_TOLERANCE):
        reason = f"none: the softmax of the computed logits is off the model's output by over {LOGIT_CHECK_TOLERANCE}"
        return probabilities, None, reason
    return probabilities, logits, f"penultimate features @ kernel + bias of the final Dense layer {final.name!r}"


def prepare_for_model(images: np.ndarray, spec: dict | None) -> np.ndarray:
    """Return model-ready float images: `prepare_images(images, spec)`, or the arrays as float32 when spec is None."""
    if spec is not None:
        from alzlib.preprocessing import prepare_images

        return np.asarray(prepare_images(images, spec))
    arrays = np.asarray(images, dtype=np.float32)
    return arrays[..., np.newaxis] if arrays.ndim == 3 else arrays


def predictions_frame(manifest: pd.DataFrame, probabilities: np.ndarray, class_names: Sequence[str],
                      logits: np.ndarray | None = None) -> pd.DataFrame:
    """Return the predictions table: path, subject_id, split, label_index, prob_<class>..., pred_index, logit_<class>...

    The logit columns are written only when `logits` are given.
    """
    missing = [column for column in PREDICTION_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"The manifest lacks column(s) {missing} needed for predictions.")
    scores = np.asarray(probabilities, dtype=np.float64)
    if len(scores) != len(manifest):
        raise ValueError(f"{len(scores)} probability rows for {len(manifest)} manifest rows: images and manifest "
                         f"must align.")
    if logits is not None and np.shape(logits) != scores.shape:
        raise ValueError(f"logits have shape {np.shape(logits)}; expected the probabilities' shape {scores.shape}.")
    names = _class_names(class_names, scores.shape[1])
    frame = manifest.loc[:, list(PREDICTION_COLUMNS)].reset_index(drop=True).copy()
    frame["label_index"] = frame["label_index"].astype(np.int64)
    for index, name in enumerate(names):
        frame[f"prob_{name}"] = scores[:, index]
    frame["pred_index"] = scores.argmax(axis=1).astype(np.int64)
    for index, name in enumerate(names if logits is not None else []):
        frame[f"logit_{name}"] = np.asarray(logits, dtype=np.float64)[:, index]
    return frame


def probability_columns(frame: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
    """Return the prob_<class> columns of a predictions table as an array, naming a missing column."""
    columns = [f"prob_{name}" for name in class_names]
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"The predictions table lacks {missing}: were they written for other class names?")
    return frame[columns].to_numpy(np.float64)


def logit_columns(frame: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray | None:
    """Return the logit_<class> columns as an array, or None when the table has no complete, finite logits."""
    columns = [f"logit_{name}" for name in class_names]
    if not set(columns) <= set(frame.columns):
        return None
    values = frame[columns].to_numpy(np.float64)
    return values if np.isfinite(values).all() else None


def subject_predictions_frame(frame: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Return the soft-vote table per split: subject_id, split, label_index, prob_<class>..., pred_index, slices."""
    parts = []
    for split, rows in frame.groupby("split", sort=False):
        subjects, labels, scores = soft_vote(probability_columns(rows, class_names), rows["subject_id"],
                                             rows["label_index"])
        part = pd.DataFrame({"subject_id": subjects, "split": split, "label_index": labels})
        for index, name in enumerate(class_names):
            part[f"prob_{name}"] = scores[:, index]
        part["pred_index"] = scores.argmax(axis=1)
        part["slices"] = rows.groupby("subject_id", sort=False).size().loc[subjects].to_numpy()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------------------------- figures


def _title(model_name: str, what: str, split: str, data_label: str) -> str:
    """Return a figure title that always names the data (so synthetic results stay labelled)."""
    title = f"{model_name}: {what}, {split} split"
    return f"{title} ({data_label})" if data_label else title


def plot_confusion_matrices(confusion: dict, class_names: Sequence[str], title: str):
    """Return a figure with the confusion matrix as counts (left) and row-normalised (right)."""
    from matplotlib.figure import Figure

    counts = np.asarray(confusion["counts"], dtype=np.float64)
    normalised = np.array([[np.nan if value is None else value for value in row]
                           for row in confusion["row_normalised"]])
    figure = Figure(figsize=(11, 5), layout="constrained")
    for panel, (axis, matrix, label, fmt) in enumerate(zip(figure.subplots(1, 2), (counts, normalised),
                                                           ("counts", "row-normalised"), ("{:.0f}", "{:.2f}"))):
        image = axis.imshow(np.nan_to_num(matrix), cmap="Blues", vmin=0, vmax=None if label == "counts" else 1)
        figure.colorbar(image, ax=axis, fraction=0.046)
        threshold = np.nanmax(matrix) / 2 if np.isfinite(matrix).any() else 0
        for (row, column), value in np.ndenumerate(matrix):
            text = "n/a" if np.isnan(value) else fmt.format(value)
            axis.text(column, row, text, ha="center", va="center", fontsize=8,
                      color="white" if np.isfinite(value) and value > threshold else "black")
        axis.set(xticks=range(len(class_names)), yticks=range(len(class_names)), xlabel="predicted", ylabel="true",
                 title=label)
        axis.set_xticklabels(class_names, rotation=35, ha="right", fontsize=8)
        axis.set_yticklabels(class_names if panel == 0 else [], fontsize=8)
    figure.suptitle(title)
    return figure


def plot_roc_curves(roc: dict, title: str):
    """Return a figure of the one-vs-rest ROC curves; classes without a curve are named in the legend."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5))
    axis = figure.subplots()
    for name, entry in roc["per_class"].items():
        if entry["auc"] is None:
            axis.plot([], [], linestyle="none", label=f"{name}: no curve ({entry['reason']})")
            continue
        curve = roc["curves"][name]
        axis.plot(curve["false_positive_rate"], curve["true_positive_rate"], label=f"{name} (AUC {entry['auc']:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    axis.legend(fontsize=7, loc="lower right")
    return figure


def plot_reliability_diagram(tables: dict[str, dict], title: str):
    """Return a reliability diagram (accuracy against confidence per bin) for one or more calibration tables."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 6))
    axis, histogram = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for label, table in tables.items():
        filled = np.asarray(table["count"]) > 0
        centres = (np.asarray(table["lower"]) + np.asarray(table["upper"])) / 2
        axis.plot(np.asarray(table["confidence"])[filled], np.asarray(table["accuracy"])[filled], marker="o",
                  label=label)
        histogram.bar(centres, table["count"], width=np.diff(table["lower"][:2])[0] if len(table["lower"]) > 1 else 1,
                      alpha=0.4, label=label)
    axis.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    axis.legend(fontsize=8)
    histogram.set(xlabel="confidence (max probability)", ylabel="images")
    return figure


# ----------------------------------------------------------------------------------------------- per model


def calibration_summary(y_true, probabilities, bins: int = ECE_BINS, subject_ids=None,
                        n_bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int = config.DEFAULT_SEED,
                        class_names: Sequence[str] | None = None) -> dict:
    """Return ECE, classwise ECE, Brier score, negative log-likelihood and the reliability table.

    With `subject_ids`, also subject-bootstrap intervals of the ECE and the mean classwise ECE.
    """
    table = calibration_bins(y_true, probabilities, bins)
    summary = {"ece": expected_calibration_error(y_true, probabilities, bins),
               "classwise_ece": classwise_calibration_error(y_true, probabilities, class_names, bins),
               "brier": brier_score(y_true, probabilities), "nll": negative_log_likelihood(y_true, probabilities),
               "bins": strict_json(table)}
    if subject_ids is not None:
        intervals = calibration_intervals(y_true, probabilities, subject_ids, n_bootstrap, seed, bins)
        summary.update(ece_interval=intervals["ece"], classwise_ece_interval=intervals["classwise_ece"])
    return summary


def _level_results(labels, scores, subjects, class_names, n_bootstrap, seed, bins) -> dict:
    """Return the metrics, intervals and calibration of one split at one level (slice or subject)."""
    names = BOOTSTRAP_METRICS if is_ordinal_task(class_names) else INTERVAL_METRICS
    return {"metrics": classification_metrics(labels, scores, class_names),
            "intervals": bootstrap_intervals(labels, scores, subjects, names, n_bootstrap, seed),
            "calibration": calibration_summary(labels, scores, bins, subjects, n_bootstrap, seed, class_names),
            "images": int(len(labels)), "subjects": int(pd.Series(subjects).nunique())}


def _scaled_calibration(validation: tuple, test: tuple, kind: str, class_names: Sequence[str], bins: int,
                        n_bootstrap: int, seed: int) -> dict:
    """Fit a temperature on validation (labels, inputs, probabilities) and report test calibration before and after.

    Each tuple is (labels, temperature inputs of `kind`, the probabilities those inputs stand for, subject ids).
    """
    validation_labels, validation_inputs, validation_scores, _ = validation
    test_labels, test_inputs, test_scores, test_subjects = test
    temperature = fit_temperature(validation_inputs, validation_labels, kind=kind)
    scaled = apply_temperature(test_inputs, temperature, kind)
    at_bound = any(math.isclose(temperature, bound, rel_tol=1e-3) for bound in TEMPERATURE_BOUNDS)
    return {"temperature": temperature, "at_search_bound": at_bound,
            "val_nll_before": negative_log_likelihood(validation_labels, validation_scores),
            "val_nll_after": negative_log_likelihood(validation_labels,
                                                     apply_temperature(validation_inputs, temperature, kind)),
            "test_before": calibration_summary(test_labels, test_scores, bins, test_subjects, n_bootstrap, seed,
                                               class_names),
            "test_after": calibration_summary(test_labels, scaled, bins, test_subjects, n_bootstrap, seed, class_names),
            "test_accuracy_unchanged": bool(np.array_equal(scaled.argmax(axis=1), test_scores.argmax(axis=1)))}


def _split_inputs(rows: pd.DataFrame, class_names: Sequence[str], use_logits: bool) -> tuple:
    """Return (labels, temperature inputs, probabilities, subject ids) of one split's rows."""
    probabilities = probability_columns(rows, class_names)
    inputs = logit_columns(rows, class_names) if use_logits else probabilities
    return rows["label_index"].to_numpy(), inputs, probabilities, rows["subject_id"].to_numpy()


def _temperature_results(frame: pd.DataFrame, votes: pd.DataFrame, class_names: Sequence[str], bins: int,
                         n_bootstrap: int, seed: int) -> dict:
    """Fit temperatures on validation (slices on logits where saved; the subject vote) and report test calibration."""
    splits = set(frame["split"])
    if not {"val", "test"} <= splits:
        return {"skipped": f"temperature scaling needs val and test predictions; found {sorted(splits)}"}
    validation, test = frame[frame["split"] == "val"], frame[frame["split"] == "test"]
    use_logits = logit_columns(validation, class_names) is not None and logit_columns(test, class_names) is not None
    kind = "logits" if use_logits else "probabilities"
    result = {"fitted_on": "val", "fitted_on_logits": use_logits,
              "input": ("logits (logit_<class> columns of predictions.parquet)" if use_logits else
                        "log of the stored probabilities, clipped at 1e-12 (fallback: the predictions have no logits; "
                        "an overconfident model's temperature is underestimated this way)"),
              **_scaled_calibration(_split_inputs(validation, class_names, use_logits),
                                    _split_inputs(test, class_names, use_logits), kind, class_names, bins,
                                    n_bootstrap, seed)}
    result["subject_vote"] = _vote_temperature(votes, class_names, bins, n_bootstrap, seed)
    return result


def _vote_temperature(votes: pd.DataFrame, class_names: Sequence[str], bins: int, n_bootstrap: int, seed: int) -> dict:
    """Fit a temperature for the subject vote on the validation subjects' log mean probabilities, or say why not."""
    validation, test = votes[votes["split"] == "val"], votes[votes["split"] == "test"]
    if len(validation) < MIN_VOTE_CALIBRATION_SUBJECTS:
        return {"skipped": f"{len(validation)} validation subjects: too few to fit a temperature for the subject vote "
                           f"(at least {MIN_VOTE_CALIBRATION_SUBJECTS} needed)"}
    return {"fitted_on": "val subjects", "val_subjects": int(len(validation)),
            "input": "log of each subject's mean slice probability (the soft vote)",
            **_scaled_calibration(_split_inputs(validation, class_names, False),
                                  _split_inputs(test, class_names, False), "probabilities", class_names, bins,
                                  n_bootstrap, seed)}


def _write_figures(result: dict, frame: pd.DataFrame, class_names, out_dir: Path, model_name: str,
                   data_label: str, bins: int) -> list[str]:
    """Write confusion, ROC and reliability figures of the test split (slice and subject level); return the files."""
    written = []
    split = "test" if "test" in result["splits"] else next(iter(result["splits"]))
    for level in LEVELS:
        entry = result["splits"][split][level]
        figure = plot_confusion_matrices(entry["metrics"]["confusion_matrix"], class_names,
                                         _title(model_name, f"confusion matrix ({level} level)", split, data_label))
        written.append(save_figure(figure, out_dir / f"confusion_{split}_{level}.png").name)
    rows = frame[frame["split"] == split]
    roc = one_vs_rest_roc(rows["label_index"], probability_columns(rows, class_names), class_names)
    written.append(save_figure(plot_roc_curves(roc, _title(model_name, "one-vs-rest ROC", split, data_label)),
                               out_dir / f"roc_{split}.png").name)
    before = result["splits"][split]["slice"]["calibration"]
    tables = {f"before temperature scaling (ECE {before['ece']:.3f})": before["bins"]}
    if "temperature" in result["temperature_scaling"] and split == "test":
        temperature = result["temperature_scaling"]["temperature"]
        after = result["temperature_scaling"]["test_after"]
        tables[f"after, T = {temperature:.2f} (ECE {after['ece']:.3f})"] = after["bins"]
    figure = plot_reliability_diagram(tables, _title(model_name, f"reliability ({bins} bins)", split, data_label))
    written.append(save_figure(figure, out_dir / f"reliability_{split}.png").name)
    return written


def evaluate_predictions(frame: pd.DataFrame, class_names: Sequence[str], out_dir: str | Path,
                         seed: int = config.DEFAULT_SEED, data_label: str = "", model_name: str = "model",
                         n_bootstrap: int = BOOTSTRAP_RESAMPLES, bins: int = ECE_BINS, figures: bool = True,
                         scored_on: str = "true labels", *, logit_source: str | None = None) -> dict:
    """Compute every metric of a predictions table, write metrics.json, ROC curves and (optionally) figures.

    `logit_source` says how the table's logit_<class> columns were computed (recorded in metrics.json).
    """
    out_dir = Path(out_dir)
    names = list(class_names)
    has_logits = logit_columns(frame, names) is not None
    result = {"model": model_name, "data_label": data_label, "class_names": names, "seed": seed,
              "scored_on": scored_on,
              "bootstrap": {"resamples": n_bootstrap, "unit": "subject", "stratified_by": "class",
                            "confidence": CONFIDENCE, "method": "percentile"},
              "logits": {"saved": has_logits,
                         "source": logit_source or ("logit_<class> columns of the predictions table" if has_logits
                                                    else "none: the predictions table has no logit_<class> columns")},
              "ordinal_metrics": ("quadratic_kappa and mean_absolute_error (stages) with the other intervals"
                                  if is_ordinal_task(names) else ordinal_metrics([], [], names)["ordinal_reason"]),
              "ece_bins": bins, "splits": {}, "roc_curves": {}}
    subject_frame = subject_predictions_frame(frame, names)
    for split in [name for name in EVALUATED_SPLITS if name in set(frame["split"])]:
        rows, subject_rows = frame[frame["split"] == split], subject_frame[subject_frame["split"] == split]
        result["splits"][split] = {
            "slice": _level_results(rows["label_index"].to_numpy(), probability_columns(rows, names),
                                    rows["subject_id"].to_numpy(), names, n_bootstrap, seed, bins),
            "subject": _level_results(subject_rows["label_index"].to_numpy(), probability_columns(subject_rows, names),
                                      subject_rows["subject_id"].to_numpy(), names, n_bootstrap, seed, bins)}
        roc = one_vs_rest_roc(rows["label_index"], probability_columns(rows, names), names)
        result["roc_curves"][split] = roc["curves"]
    if not result["splits"]:
        raise ValueError(f"No val or test rows among the predictions (splits present: {sorted(set(frame['split']))}).")
    result["temperature_scaling"] = _temperature_results(frame, subject_frame, names, bins, n_bootstrap, seed)
    write_parquet(out_dir / "subject_predictions.parquet", subject_frame)
    result["figures"] = _write_figures(result, frame, names, out_dir, model_name, data_label, bins) if figures else []
    roc_curves = result.pop("roc_curves")
    write_json(out_dir / "roc_curves.json", strict_json(roc_curves))
    result = strict_json(result)
    write_json(out_dir / "metrics.json", result)
    return result


def evaluate_model(model, images: np.ndarray, manifest: pd.DataFrame, class_names: Sequence[str], spec: dict | None,
                   out_dir: str | Path, seed: int = config.DEFAULT_SEED, data_label: str = "",
                   model_name: str | None = None, batch_size: int = 32, n_bootstrap: int = BOOTSTRAP_RESAMPLES,
                   bins: int = ECE_BINS, figures: bool = True) -> dict:
    """Predict the val/test images, write predictions.parquet (with logits), metrics.json and figures; return metrics.

    `images` are the uint8 cache arrays aligned with `manifest` rows; `spec` is the model's recorded
    preprocessing spec (None: the images are already model-ready).
    """
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images for {len(manifest)} manifest rows: they must align row by row.")
    name = model_name or getattr(model, "name", "model")
    probabilities, logits, logit_source = predict_with_logits(model, prepare_for_model(images, spec), batch_size)
    frame = predictions_frame(manifest, probabilities, class_names, logits)
    write_parquet(Path(out_dir) / "predictions.parquet", frame)
    # A control's frame carries its true labels aside and random subject labels as label (alzlib.controls).
    scored_on = "random subject labels (control)" if "true_label" in manifest.columns else "true labels"
    return evaluate_predictions(frame, class_names, out_dir, seed, data_label, name, n_bootstrap, bins, figures,
                                scored_on, logit_source=logit_source)


# ----------------------------------------------------------------------------------------------- all models


def control_check(metrics: dict, num_classes: int | None = None, metric: str = "balanced_accuracy",
                  split: str = "test", level: str = "slice") -> dict:
    """Report whether the random-label control's interval of `metric` lies above chance, and what it could detect.

    The control is scored on its own random subject labels (alzlib.controls). Besides the verdict it reports the
    interval's upper bound (control scores above it are ruled out at the interval's confidence) and the smallest
    score it would have flagged with high probability: chance plus one interval width.
    """
    classes = num_classes or len(metrics.get("class_names", []))
    if classes < 2:
        raise ValueError(f"num_classes must be at least 2 to define chance; got {classes}.")
    try:
        interval = metrics["splits"][split][level]["intervals"][metric]
    except KeyError as error:
        raise ValueError(f"The control's metrics have no {level}-level {metric} interval on the {split} split "
                         f"(missing key {error}).") from error
    chance = 1.0 / classes
    if interval["low"] is None or interval["high"] is None:
        raise ValueError(f"The control's {metric} interval is undefined: too few subjects in the {split} split.")
    includes = interval["low"] <= chance <= interval["high"]
    width = interval["high"] - interval["low"]
    subjects = interval.get("subjects") or 0
    # One-sided: only a score above chance means test subjects were recognised. Below chance is no leak: with
    # random labels and few subjects a model's errors can line up with the held-out labels (measured on a planted
    # fixture: 0.07 on 11 clean test subjects).
    tripped = interval["low"] > chance
    verdict = (f"inconclusive: {subjects} test subjects are too few for a bootstrap interval to mean anything "
               f"(at least {MIN_CONTROL_TEST_SUBJECTS} needed)" if subjects < MIN_CONTROL_TEST_SUBJECTS else
               "FAILS: on random subject labels it scores above chance, so test subjects were recognised from "
               "training: the split leaks" if tripped else
               "passes: on random subject labels it is indistinguishable from chance, so held-out subjects were "
               "not recognised" if includes else
               "passes: on random subject labels it scores below chance, which is no sign of leakage (random "
               "labels on few subjects; look for a pipeline bug only if it persists across seeds)")
    return {"model": metrics.get("model"), "metric": metric, "split": split, "level": level, "chance": chance,
            "estimate": interval["estimate"], "low": interval["low"], "high": interval["high"],
            "subjects": interval.get("subjects"), "interval_width": width, "upper_bound": interval["high"],
            "detectable_score": min(1.0, chance + width), "includes_chance": bool(includes), "tripped": bool(tripped),
            "conclusive": subjects >= MIN_CONTROL_TEST_SUBJECTS, "verdict": verdict,
            "power_note": (f"with {interval.get('subjects')} test subjects the interval is {width:.2f} wide: a "
                           f"control score of {min(1.0, chance + width):.2f} or more would very likely have been "
                           f"flagged, and scores above {interval['high']:.2f} are ruled out; smaller leaks may pass "
                           f"unseen")}


def _temperature_row(scaling: dict, split: str) -> dict:
    """Return the temperature columns of a summary row: test calibration after the level's temperature, if fitted."""
    after = scaling.get("test_after") if split == "test" else None
    return {"temperature": scaling.get("temperature") if after else None,
            "temperature_on_logits": scaling.get("fitted_on_logits", False) if after else None,
            "ece_after_temperature": after["ece"] if after else None,
            "brier_after_temperature": after["brier"] if after else None}


def summary_rows(metrics: dict, split: str = "test") -> list[dict]:
    """Return the summary table rows (one per level) of one model's metrics.json content."""
    if split not in metrics["splits"]:
        raise ValueError(f"{metrics.get('model')} has no {split} results (splits: {list(metrics['splits'])}).")
    rows, scaling = [], metrics.get("temperature_scaling", {})
    for level in LEVELS:
        entry = metrics["splits"][split][level]
        row = {"model": metrics["model"], "split": split, "level": level, "images": entry["images"],
               "subjects": entry["subjects"], "data_label": metrics.get("data_label", ""),
               "scored_on": metrics.get("scored_on", "true labels")}
        for name in BOOTSTRAP_METRICS:  # the ordinal ones are None outside the 4-class task
            interval = entry["intervals"].get(name) or {}
            row.update({name: interval.get("estimate"), f"{name}_low": interval.get("low"),
                        f"{name}_high": interval.get("high")})
        calibration = entry["calibration"]
        ece_interval = calibration.get("ece_interval") or {}
        row.update({"ece": calibration["ece"], "ece_low": ece_interval.get("low"), "ece_high": ece_interval.get("high"),
                    "classwise_ece": (calibration.get("classwise_ece") or {}).get("mean"),
                    "brier": calibration["brier"], "nll": calibration["nll"]})
        row.update(_temperature_row(scaling if level == "slice" else scaling.get("subject_vote", {}), split))
        rows.append(row)
    return rows


def summary_names(settings: config.Settings) -> list[str]:
    """Return the models of this run's evaluation summary: its selection (settings.models), the random-label control
    and the non-deep baselines. A model another run evaluated in the same folder, with another MODELS, is left out."""
    return [*settings.models, *config.BASELINE_MODEL_NAMES, config.CONTROL_MODEL_NAME]


def summarise_evaluations(evaluation_dir: str | Path, model_names: Sequence[str] | None = None,
                          split: str = "test") -> pd.DataFrame:
    """Combine every model's metrics.json into evaluation/summary.csv and summary.json (with the control check).

    `model_names` None: the design's models, the random-label control and any other evaluated model found.
    """
    evaluation_dir = Path(evaluation_dir)
    names = list(model_names) if model_names is not None else list(dict.fromkeys(
        [*config.MODEL_NAMES, config.CONTROL_MODEL_NAME,
         *sorted(path.parent.name for path in evaluation_dir.glob("*/metrics.json"))]))
    rows, missing, control = [], [], None
    for name in names:
        path = evaluation_dir / name / "metrics.json"
        if not path.is_file():
            missing.append({"model": name, "reason": f"{path} does not exist (model not trained or not evaluated)"})
            continue
        metrics = read_json(path)
        rows.extend(summary_rows(metrics, split))
        if name == config.CONTROL_MODEL_NAME:
            try:
                control = control_check(metrics, split=split)
            except ValueError as error:  # an undefined interval is reported, not fatal to the summary
                control = {"skipped": str(error)}
    if not rows:
        raise FileNotFoundError(f"No metrics.json under {evaluation_dir} for any of {names}: run evaluate_model first.")
    table = pd.DataFrame(rows)
    write_csv(evaluation_dir / "summary.csv", table)
    control_entry = control or {"skipped": f"{config.CONTROL_MODEL_NAME} was not evaluated"}
    write_json(evaluation_dir / "summary.json", strict_json({"split": split, "rows": rows, "missing": missing,
                                                           "random_label_control": control_entry}))
    return table
