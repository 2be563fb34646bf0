"""Paired differences between models: a paired, class-stratified subject bootstrap with Holm's correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alzlib import comparison


def _subject_frame(labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """Return subject-level predictions: one row per subject S000, S001..."""
    return pd.DataFrame({"subject_id": [f"S{index:03d}" for index in range(len(labels))], "label_index": labels,
                         "pred_index": predicted})


def _with_errors(labels: np.ndarray, error_rate: float, seed: int) -> np.ndarray:
    """Return predictions that are wrong (one stage up) on about `error_rate` of the subjects."""
    wrong = np.random.default_rng(seed).random(len(labels)) < error_rate
    return np.where(wrong, (labels + 1) % 4, labels)


LABELS = np.arange(40) % 4


def test_identical_models_differ_by_exactly_zero():
    predicted = _with_errors(LABELS, 0.4, seed=0)
    table = comparison.paired_differences({"a": _subject_frame(LABELS, predicted),
                                           "b": _subject_frame(LABELS, predicted.copy())}, n_bootstrap=500)
    row = table.iloc[0]
    assert row["difference"] == 0.0 and row["low"] == 0.0 and row["high"] == 0.0  # zero-centred, contains 0
    assert row["p_value"] == 1.0 and not row["supported"]
    assert row["sentence"] == "a vs b: +0.00 [0.00, 0.00], not supported by the data (Holm p = 1.00)"


def test_a_clearly_better_model_has_a_positive_difference_above_zero():
    frames = {"good": _subject_frame(LABELS, _with_errors(LABELS, 0.05, seed=1)),
              "poor": _subject_frame(LABELS, _with_errors(LABELS, 0.7, seed=2))}
    row = comparison.paired_differences(frames, n_bootstrap=1000, seed=3).iloc[0]
    assert row["difference"] > 0.4 and row["low"] > 0 and row["p_value_holm"] < 0.05 and row["supported"]
    assert row["score_a"] - row["score_b"] == pytest.approx(row["difference"])
    assert "supported by the data: good is better" in row["sentence"]
    reversed_row = comparison.paired_differences({"poor": frames["poor"], "good": frames["good"]},
                                                 n_bootstrap=1000, seed=3).iloc[0]
    assert reversed_row["difference"] == pytest.approx(-row["difference"]) and reversed_row["high"] < 0
    # A lower error is better: the sentence names the same model for the stage error.
    error_row = comparison.paired_differences(frames, metric="mean_absolute_error", n_bootstrap=1000, seed=3).iloc[0]
    assert error_row["difference"] < 0 and "supported by the data: good is better" in error_row["sentence"]


def test_resamples_keep_every_class_and_pair_the_same_subjects():
    # One subject of class 3 (always right for a, always wrong for b): a resample without it would drop a recall.
    labels = np.r_[np.zeros(10), np.ones(8), np.full(6, 2), [3]].astype(int)
    first = labels.copy()
    second = np.where(labels == 3, 0, labels)
    row = comparison.paired_differences({"a": _subject_frame(labels, first), "b": _subject_frame(labels, second)},
                                        n_bootstrap=500).iloc[0]
    # Every resample holds the class-3 subject, so the difference is 1/4 in every one of them.
    assert row["undefined_resamples"] == 0
    assert row["difference"] == row["low"] == row["high"] == pytest.approx(0.25)


def test_holm_runs_over_every_pair_and_the_rule_is_stated():
    frames = {name: _subject_frame(LABELS, _with_errors(LABELS, rate, seed))
              for name, rate, seed in (("a", 0.1, 4), ("b", 0.3, 5), ("c", 0.6, 6))}
    table = comparison.paired_differences(frames, n_bootstrap=400)
    assert list(zip(table["model_a"], table["model_b"], strict=True)) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert table["p_value_holm"].tolist() == pytest.approx(comparison.holm_adjust(table["p_value"]))
    assert (table["rule"] == comparison.SUPPORT_RULE_SHORT).all()
    assert "Holm" in comparison.SUPPORT_RULE and "excludes 0" in comparison.SUPPORT_RULE
    supported = (table["p_value_holm"] < 0.05) & ((table["low"] > 0) | (table["high"] < 0))
    assert table["supported"].tolist() == supported.tolist()


def test_bootstrap_p_value_counts_both_tails():
    assert comparison.bootstrap_p_value(np.zeros(99)) == 1.0
    assert comparison.bootstrap_p_value(np.ones(99)) == pytest.approx(2 / 100)
    assert comparison.bootstrap_p_value(np.r_[np.full(9, -1.0), np.ones(90)]) == pytest.approx(2 * 10 / 100)


def _slice_frame(labels: np.ndarray, predicted: np.ndarray, slices: int, split: str = "test") -> pd.DataFrame:
    """Return slice predictions: every subject's slices identical, with prob_ columns that vote to `predicted`."""
    subjects = np.repeat([f"S{index:03d}" for index in range(len(labels))], slices)
    frame = pd.DataFrame({"path": [f"/data/{index}.png" for index in range(len(subjects))], "subject_id": subjects,
                          "split": split, "label_index": np.repeat(labels, slices),
                          "pred_index": np.repeat(predicted, slices)})
    probabilities = np.eye(4)[frame["pred_index"]] * 0.6 + 0.1
    return frame.assign(**{f"prob_{index}": probabilities[:, index] for index in range(4)})


def test_slice_level_resamples_subjects_as_clusters():
    first, second = _with_errors(LABELS, 0.2, seed=7), _with_errors(LABELS, 0.5, seed=8)
    subject = comparison.paired_differences({"a": _subject_frame(LABELS, first), "b": _subject_frame(LABELS, second)},
                                            n_bootstrap=300, seed=1).iloc[0]
    slices = {"a": _slice_frame(LABELS, first, 5), "b": _slice_frame(LABELS, second, 5)}
    by_slice = comparison.paired_differences(slices, level="slice", n_bootstrap=300, seed=1).iloc[0]
    # Identical slices per subject carry no more information than the subject: the same resamples, the same interval.
    assert by_slice["rows"] == 200 and by_slice["subjects"] == 40
    for key in ("difference", "low", "high", "p_value"):
        assert by_slice[key] == pytest.approx(subject[key])
    # At subject level, slice rows with probabilities are soft-voted first.
    voted = comparison.paired_differences(slices, level="subject", n_bootstrap=300, seed=1).iloc[0]
    assert voted["rows"] == 40 and voted["difference"] == pytest.approx(subject["difference"])


def test_only_rows_both_models_predicted_are_paired():
    first = _subject_frame(LABELS, LABELS)
    second = _subject_frame(LABELS, LABELS).iloc[8:]
    row = comparison.paired_differences({"a": first, "b": second}, n_bootstrap=100).iloc[0]
    assert row["subjects"] == 32 and row["rows"] == 32


def test_too_few_subjects_are_inconclusive_however_large_the_difference():
    # One subject per class: every class-stratified resample is the same, so the interval has zero width and the
    # p-value is tiny (measured on the smoke run); the rule must not call that supported.
    labels = np.arange(4)
    frames = {"right": _subject_frame(labels, labels), "wrong": _subject_frame(labels, (labels + 1) % 4)}
    row = comparison.paired_differences(frames, n_bootstrap=200).iloc[0]
    assert row["low"] == row["high"] == row["difference"] == 1.0 and row["p_value_holm"] < 0.05
    assert not row["supported"] and "inconclusive: 4 paired subjects are too few" in row["sentence"]
    enough = np.arange(comparison.MIN_PAIRED_SUBJECTS) % 4
    row = comparison.paired_differences({"right": _subject_frame(enough, enough),
                                         "wrong": _subject_frame(enough, (enough + 1) % 4)}, n_bootstrap=200).iloc[0]
    assert row["supported"]


def test_bad_inputs_raise_one_line_errors():
    frame = _subject_frame(LABELS, LABELS)
    with pytest.raises(ValueError, match="level must be one of"):
        comparison.paired_differences({"a": frame, "b": frame}, level="scan")
    with pytest.raises(ValueError, match="metric must be one of"):
        comparison.paired_differences({"a": frame, "b": frame}, metric="auc")
    with pytest.raises(ValueError, match="at least two models"):
        comparison.paired_differences({"a": frame})
    with pytest.raises(ValueError, match="need columns"):
        comparison.paired_differences({"a": frame, "b": frame.drop(columns="pred_index")})
    with pytest.raises(ValueError, match="mix splits"):
        mixed = pd.concat([_slice_frame(LABELS, LABELS, 1), _slice_frame(LABELS, LABELS, 1, "val")])
        comparison.paired_differences({"a": mixed, "b": mixed}, level="slice")
    with pytest.raises(ValueError, match="different labels"):
        comparison.paired_differences({"a": frame, "b": frame.assign(label_index=(LABELS + 1) % 4)})
    with pytest.raises(ValueError, match="share no subjects"):
        comparison.paired_differences({"a": frame, "b": frame.assign(subject_id=frame["subject_id"] + "x")})
    with pytest.raises(ValueError, match="no prob_<class> columns"):
        repeated = pd.concat([frame, frame])
        comparison.paired_differences({"a": repeated, "b": repeated})

