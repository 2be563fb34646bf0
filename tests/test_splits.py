"""Subject- and slice-level splits, split warnings and the leakage audit on small frames and rendered scans."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alzlib import grouping, splits
from fixtures import render_scans

SCANS, SLICES = 40, 12


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


# ------------------------------------------------------------------------ pixel evidence against a null


@pytest.fixture(scope="module")
def scans() -> tuple[pd.DataFrame, np.ndarray]:
    """40 rendered scans of 12 consecutive 64 px slices (neighbours correlate ~0.98); class by scan parity."""
    volumes = render_scans(SCANS, SLICES, seed=0, size=(64, 64))
    scan, slice_index = np.repeat(np.arange(SCANS), SLICES), np.tile(np.arange(SLICES), SCANS)
    frame = pd.DataFrame({"path": [f"/data/scan{s:02d}_{i:02d}.png" for s, i in zip(scan, slice_index)],
                          "subject_id": [f"S{s:02d}" for s in scan], "label": np.where(scan % 2, "AD", "NC"),
                          "scan": scan, "slice_index": slice_index})
    frame["sha256"] = frame["path"]
    return frame, grouping.unit_rows(np.stack(volumes).reshape(SCANS * SLICES, -1).astype(np.float32))


def slices_of_train_scans_held_out(frame: pd.DataFrame, split: str = "test", every: int = 4) -> pd.DataFrame:
    """Return a split whose `split` holds every `every`-th slice of train scans under new ids (4 scans in val)."""
    frame = frame.copy()
    frame["split"] = np.where(frame["slice_index"] % every == every - 1, split, "train")
    frame.loc[frame["scan"] % 10 == 0, "split"] = "val" if split == "test" else "test"
    held_out = frame["split"] == split
    # Deliberately wrong ids: as if grouping had cut each scan in two, no subject id is shared between splits.
    frame.loc[held_out, "subject_id"] = "ghost_" + frame.loc[held_out, "subject_id"]
    return frame


def test_pixel_check_trips_on_neighbouring_slices_of_train_scans_under_other_ids(scans):
    frame, features = scans
    audit = splits.leakage_audit(slices_of_train_scans_held_out(frame), "split", features)
    assert audit["subjects_shared"] == 0 and audit["exact_duplicates_across_splits"]["groups"] == 0
    assert audit["leaks"] and audit["tripped_by"] == ["pixel neighbours (test)"]
    check = audit["pixel_neighbours"]
    assert check["test"]["leaks"] and not check["val"]["leaks"]
    assert check["test"]["above_null_p_value"] < check["alpha_per_test"]
    assert check["test"]["above_null_share"] > 0.3 and check["test"]["nearest_neighbour_accuracy"] == 1.0
    assert check["null"]["images"] == audit["images_per_split"]["train"]
    assert check["sampling"] is None and "permutations" in check["rule"]


def test_pixel_check_trips_on_near_copies_of_train_images_under_other_ids(scans):
    frame, features = scans
    frame = frame.assign(split=splits.subject_split(frame, seed=0))
    copied = frame.index[frame["split"] == "train"][::10]
    noise = np.random.default_rng(1).normal(scale=0.3 / np.sqrt(features.shape[1]), size=(len(copied),
                                                                                          features.shape[1]))
    copies = frame.loc[copied].assign(split="test", path=lambda rows: rows["path"] + ".copy.png",
                                      sha256=lambda rows: rows["sha256"] + "copy",
                                      subject_id=lambda rows: "ghost_" + rows["subject_id"])
    audit = splits.leakage_audit(pd.concat([frame, copies], ignore_index=True), "split",
                                 grouping.unit_rows(np.concatenate([features, features[copied] + noise])))
    assert audit["subjects_shared"] == 0 and audit["tripped_by"] == ["pixel neighbours (test)"]


def test_pixel_check_stays_quiet_on_a_subject_split_of_independent_scans(scans):
    frame, features = scans
    audit = splits.leakage_audit(frame.assign(split=splits.subject_split(frame, seed=0)), "split", features)
    assert not audit["leaks"] and audit["tripped_by"] == []
    for split in ("val", "test"):
        evidence = audit["pixel_neighbours"][split]
        assert not evidence["leaks"] and evidence["halves_tested"] == 2
        assert min(evidence["above_null_p_value"], evidence["agreement_p_value"]) > 0.05
        assert evidence["near_identical_share"] < 0.1


def test_tripped_by_names_each_kind_of_evidence(scans):
    frame, features = scans
    frame = slices_of_train_scans_held_out(frame)
    val_scans = frame["scan"] % 10 == 0
    frame.loc[val_scans & (frame["slice_index"] % 3 == 0), "split"] = "train"  # val scans now straddle train
    leaky_val = frame.index[val_scans & (frame["split"] == "val")]
    frame.loc[leaky_val[1], "sha256"] = frame.loc[frame["split"] == "train", "sha256"].iloc[0]
    frame["near_duplicate_group"] = pd.array([None] * len(frame), dtype="Int64")
    frame.loc[[leaky_val[2], frame.index[frame["split"] == "test"][0]], "near_duplicate_group"] = 0
    audit = splits.leakage_audit(frame, "split", features)
    assert audit["tripped_by"] == ["subjects shared", "exact duplicates", "near duplicates",
                                   "pixel neighbours (val)", "pixel neighbours (test)"]
    assert audit["leaks"]


def test_grouping_confidence_is_recorded_and_low_only_adds_a_note(scans):
    frame = scans[0]
    clean = frame.assign(split=splits.subject_split(frame, seed=0))
    low = splits.leakage_audit(clean, "split", grouping_confidence="low")
    assert low["grouping_confidence"] == "low" and "uncertain" in low["subject_ids_note"]
    assert not low["leaks"] and low["tripped_by"] == []
    high = splits.leakage_audit(clean, "split", grouping_confidence="high")
    assert high["grouping_confidence"] == "high" and high["subject_ids_note"] is None
    assert splits.leakage_audit(clean, "split")["grouping_confidence"] is None
    with pytest.raises(ValueError, match="grouping_confidence must be one of"):
        splits.leakage_audit(clean, "split", grouping_confidence="unsure")


def test_pixel_check_on_a_hash_chosen_subset_says_so(scans, monkeypatch):
    frame, features = scans
    monkeypatch.setattr(splits, "MAX_COMPARED_IMAGES", 60)
    check = splits.leakage_audit(slices_of_train_scans_held_out(frame), "split", features)["pixel_neighbours"]
    assert check["null"]["images_compared"] == 60 and check["test"]["images_compared"] == 60
    assert check["val"]["images_compared"] == check["val"]["images"] == 48
    assert "null 60 of" in check["sampling"] and "test 60 of 108" in check["sampling"]
    assert check["test"]["leaks"]


def test_compared_rows_hash_choice_ignores_row_order():
    paths = np.array([f"/data/image{index}.png" for index in range(30)])
    chosen = set(paths[splits.compared_rows(paths, np.arange(30), limit=7)])
    order = np.random.default_rng(0).permutation(30)
    assert len(chosen) == 7 and set(paths[order][splits.compared_rows(paths[order], np.arange(30), limit=7)]) == chosen
    assert list(splits.compared_rows(paths, np.arange(5), limit=7)) == [0, 1, 2, 3, 4]


def test_nearest_by_part_matches_a_brute_force_search():
    features = grouping.unit_rows(np.random.default_rng(0).normal(size=(40, 16)))
    train_rows, query_rows = np.arange(0, 40, 2), np.arange(1, 40, 2)
    parts = np.arange(20) % 3
    index, value = splits.nearest_by_part(features, train_rows, parts, query_rows, block=4)
    similarity = features[query_rows] @ features[train_rows].T
    for part in range(3):
        columns = np.flatnonzero(parts == part)
        assert (index[part] == train_rows[columns[similarity[:, columns].argmax(1)]]).all()
        assert np.allclose(value[part], similarity[:, columns].max(1))
    nearest, correlation = splits.nearest_train_neighbours(features, train_rows, query_rows)
    assert (nearest == train_rows[similarity.argmax(1)]).all() and np.allclose(correlation, similarity.max(1))


def test_pixel_check_with_too_few_train_subjects_tests_nothing():
    frame = make_frame({"NC": 1, "AD": 1}, slices=4).assign(split=["train"] * 4 + ["test"] * 4)
    features = grouping.unit_rows(np.random.default_rng(0).normal(size=(8, 32)))
    check = splits.leakage_audit(frame, "split", features)["pixel_neighbours"]
    assert check["null"] is None and check["val"] is None
    assert check["test"]["halves_tested"] == 0 and not check["test"]["leaks"]
    assert check["test"]["images"] == 4 and check["test"]["above_null_p_value"] == 1.0


def test_train_halves_deal_subjects_alternately_class_by_class():
    frame = make_frame({"NC": 5, "AD": 3, "MCI": 1}, slices=2)
    table = frame.assign(half=splits.train_halves(frame, np.arange(len(frame))))
    assert table.groupby("subject_id")["half"].nunique().eq(1).all()
    subjects = table.drop_duplicates("subject_id")
    assert subjects["half"].sum() == 4  # 9 subjects: 5 and 4
    assert (subjects.groupby("label")["half"].agg(lambda half: abs(2 * half.sum() - len(half))) <= 1).all()


def test_subject_permutation_p_values_are_small_only_for_a_shifted_group():
    null = np.array([[10, 0, 5]] * 30 + [[10, 1, 5]] * 3, dtype=float)
    assert splits.subject_permutation_p_values(null[:6], null[6:]) == (1.0, 1.0)
    above, agreement = splits.subject_permutation_p_values(np.array([[10, 9, 10]] * 6, dtype=float), null)
    assert above == agreement == 1 / (splits.PERMUTATIONS + 1)


# ------------------------------------------------------------------------------------------ slice split


def test_slice_split_scatters_subjects_and_keeps_fractions_and_classes():
    frame = make_frame({"NonDemented": 20, "MildDemented": 20, "ModerateDemented": 7}, slices=8)
    split = splits.slice_split(frame, seed=3)
    assert split.name == "split" and split.index.equals(frame.index)
    per_subject = frame.assign(split=split).groupby("subject_id")["split"].nunique()
    assert (per_subject > 1).mean() > 0.8
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.01) and shares["test"] == pytest.approx(0.15, abs=0.01)
    per_class = pd.crosstab(frame["label"], split)[["train", "val", "test"]]
    expected = np.outer(per_class.sum(axis=1), splits.DEFAULT_FRACTIONS)
    assert np.abs(per_class.to_numpy() - expected).max() <= 1.5  # stratified: each class split 70/15/15


def test_slice_split_is_deterministic_per_seed_and_row_order():
    frame = make_frame({"NC": 12, "AD": 9}, slices=4)
    first = splits.slice_split(frame, seed=5)
    assert first.equals(splits.slice_split(frame, seed=5)) and not first.equals(splits.slice_split(frame, seed=6))
    shuffled = frame.sample(frac=1, random_state=0)
    assert splits.slice_split(shuffled, seed=5).sort_index().equals(first)
    with pytest.raises(ValueError, match="fractions must be three"):
        splits.slice_split(frame, seed=0, fractions=(0.5, 0.5))


def test_slice_split_edge_fractions_and_tiny_classes():
    frame = make_frame({"NC": 6, "AD": 1}, slices=1)
    assert set(splits.slice_split(frame, seed=0, fractions=(1.0, 0.0, 0.0))) == {"train"}
    assert set(splits.slice_split(frame, seed=0, fractions=(0.5, 0.0, 0.5))) == {"train", "test"}
    assert set(splits.slice_split(frame, seed=0)) <= {"train", "val", "test"}


def test_leakage_audit_reports_a_slice_split_as_leaking_by_shared_subjects(scans):
    frame, features = scans
    audit = splits.leakage_audit(frame.assign(split=splits.slice_split(frame, seed=0)), "split", features)
    assert audit["leaks"] and audit["tripped_by"][0] == "subjects shared"
    assert audit["subjects_total"] == SCANS and audit["subjects_shared"] >= 0.9 * SCANS
    assert "pixel neighbours (test)" in audit["tripped_by"]
