"""Subject-level stratified splits, split warnings and the leakage audit on small frames made here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alzlib import splits


def make_frame(subjects_per_class: dict[str, int], slices: int = 3) -> pd.DataFrame:
    """Return a manifest-like frame: `slices` rows per subject, unique hashes."""
    rows = []
    for label, count in subjects_per_class.items():
        for subject in range(count):
            for slice_index in range(slices):
                rows.append({"path": f"/data/{label}/{label}_{subject:03d}_{slice_index}.png", "label": label,
                             "subject_id": f"{label}_{subject:03d}", "sha256": f"{label}{subject}{slice_index}"})
    return pd.DataFrame(rows)


def test_subject_split_is_70_15_15_by_subject_and_stratified():
    frame = make_frame({"NonDemented": 20, "MildDemented": 20, "ModerateDemented": 7})
    split = splits.subject_split(frame, seed=1)
    assert frame.assign(split=split).groupby("subject_id")["split"].nunique().eq(1).all()
    per_class = frame.assign(split=split).groupby(["label", "split"])["subject_id"].nunique().unstack()
    assert per_class.loc["NonDemented"].to_dict() == {"test": 3, "train": 14, "val": 3}
    assert per_class.loc["ModerateDemented"].to_dict() == {"test": 1, "train": 5, "val": 1}
    assert splits.split_warnings(frame.assign(split=split)) == []


def test_subject_split_is_deterministic_for_a_seed():
    frame = make_frame({"NC": 12, "AD": 9})
    first, second = splits.subject_split(frame, seed=5), splits.subject_split(frame, seed=5)
    assert first.equals(second)
    assert not first.equals(splits.subject_split(frame, seed=6))
    shuffled = frame.sample(frac=1, random_state=0)
    assert splits.subject_split(shuffled, seed=5).sort_index().equals(first)


def test_class_with_too_few_subjects_goes_to_train_with_a_warning():
    frame = make_frame({"NonDemented": 6, "ModerateDemented": 2})
    split = splits.subject_split(frame, seed=0)
    assert set(split[frame["label"] == "ModerateDemented"]) == {"train"}
    warnings = splits.split_warnings(frame.assign(split=split))
    assert len(warnings) == 1 and "'ModerateDemented' has 2 subject(s)" in warnings[0] and "val, test" in warnings[0]


@pytest.mark.parametrize("subjects, expected", [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (4, (2, 1, 1)),
                                                (10, (6, 2, 2)), (100, (70, 15, 15))])
def test_split_counts(subjects, expected):
    assert splits.split_counts(subjects, splits.DEFAULT_FRACTIONS) == expected


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.15, 0.15), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_named(fractions):
    with pytest.raises(ValueError, match="fractions must be three"):
        splits.subject_split(make_frame({"NC": 4, "AD": 4}), seed=0, fractions=fractions)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['subject_id'\]"):
        splits.subject_split(pd.DataFrame({"label": ["NC"]}), seed=0)


def test_subject_label_is_the_majority_label():
    frame = pd.DataFrame({"subject_id": ["a", "a", "a", "b"], "label": ["AD", "AD", "NC", "NC"]})
    assert splits.subject_labels(frame).to_dict() == {"a": "AD", "b": "NC"}


def test_shipped_policy_keeps_test_and_carves_val_by_subject():
    frame = make_frame({"NC": 10, "AD": 10}, slices=4)
    frame["shipped_split"] = np.where(frame["path"].str.endswith("_3.png"), "test", "train")
    split = splits.shipped_policy_split(frame, seed=0)
    assert (split[frame["shipped_split"] == "test"] == "test").all()
    train_part = frame.assign(split=split)[frame["shipped_split"] == "train"]
    assert set(train_part["split"]) == {"train", "val"}
    assert train_part.groupby("subject_id")["split"].nunique().eq(1).all()
    with pytest.raises(ValueError, match="ships no train/test split"):
        splits.shipped_policy_split(frame.assign(shipped_split=None), seed=0)


def test_leakage_audit_counts_shared_subjects_and_duplicates_across_splits():
    frame = make_frame({"NC": 3, "AD": 3}, slices=2)
    frame["split"] = ["train", "test"] * 3 + ["train", "train", "val", "val", "test", "test"]
    frame.loc[11, "sha256"] = frame.loc[8, "sha256"]  # exact copy of a val image in test
    frame["near_duplicate_group"] = pd.array([None] * 12, dtype="Int64")
    frame.loc[[0, 9], "near_duplicate_group"] = 0
    audit = splits.leakage_audit(frame, "split")
    assert audit["subjects_shared"] == 3 and audit["shared_by_pair"] == {"test-train": 3}
    assert audit["exact_duplicates_across_splits"]["groups"] == 1
    assert audit["exact_duplicates_across_splits"]["images"] == 2
    assert audit["near_duplicates_across_splits"]["groups"] == 1 and audit["leaks"]
    assert audit["pixel_neighbours"] is None


def test_pixel_neighbour_check_finds_near_copies_of_test_images_in_train():
    generator = np.random.default_rng(0)
    base = generator.normal(size=(6, 50))
    features = np.concatenate([base, base[:3] + generator.normal(scale=0.05, size=(3, 50))])
    features = (features - features.mean(1, keepdims=True))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    frame = pd.DataFrame({"path": [f"p{index}" for index in range(9)], "subject_id": [str(index) for index in range(9)],
                          "sha256": [str(index) for index in range(9)], "label": list("ABABABABA"),
                          "split": ["train"] * 6 + ["test"] * 3})
    check = splits.leakage_audit(frame, "split", features.astype(np.float32))["pixel_neighbours"]
    assert check["val"] is None
    assert check["test"]["images"] == 3 and check["test"]["near_identical_share"] == 1.0
    assert check["test"]["nearest_neighbour_accuracy"] == 1.0 and check["test"]["majority_class_rate"] == 0.5
    with pytest.raises(ValueError, match="must align"):
        splits.leakage_audit(frame, "split", features[:4])
