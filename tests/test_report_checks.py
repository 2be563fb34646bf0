"""Each badge of the report's checks panel on a planted positive (fail or warn), a clean negative (pass) and an absent
file (not run, never pass)."""

from __future__ import annotations

import pandas as pd
import pytest

from alzlib import config, report_checks, storage
from alzlib.report_checks import FAIL, NOT_RUN, PASS, WARN


def ingestion(root, **changes) -> None:
    """Write an ingestion report of a clean subject split, with `changes` applied."""
    report = {"split_policy": "subject", "split_warnings": [],
              "leakage_audit": {"subject": {"subjects_shared": 0, "tripped_by": [], "leaks": False}},
              "counts": {"files_seen": 100, "images": 100, "skipped": 0,
                         "per_class": {"NonDemented": 40, "MildDemented": 30},
                         "subjects_per_class": {"NonDemented": 20, "MildDemented": 15}},
              "skipped": []}
    storage.write_json(root / "ingestion_report.json", {**report, **changes})


def control(root, low: float, subjects: int = 30, slice_above_chance: bool = True) -> None:
    """Write the random-label control's result and the leakage demonstration's slice/random cell."""
    storage.write_json(root / "evaluation" / "summary.json", {"random_label_control": {
        "estimate": low + 0.05, "low": low, "high": low + 0.1, "chance": 0.25, "subjects": subjects,
        "tripped": low > 0.25, "conclusive": subjects >= 10, "verdict": "..."}})
    storage.write_json(root / "evaluation" / "leakage_demonstration.json", {"cells": [
        {"split_policy": "slice", "labels": "random", "above_chance": slice_above_chance}]})


def test_every_badge_says_not_run_on_an_empty_folder(tmp_path):
    checks = report_checks.run_checks(tmp_path)
    assert len(checks) == 9 and {check.status for check in checks} == {NOT_RUN}


def test_leakage_audit_fails_on_a_leaky_audit_or_a_slice_split_and_passes_a_clean_one(tmp_path):
    ingestion(tmp_path)
    assert report_checks.leakage_audit(tmp_path).status == PASS
    ingestion(tmp_path, leakage_audit={"subject": {"subjects_shared": 3, "tripped_by": ["subjects"], "leaks": True}})
    check = report_checks.leakage_audit(tmp_path)
    assert check.status == FAIL and "LEAKS" in check.line
    ingestion(tmp_path, split_policy="slice", leakage_audit={"slice": {"leaks": False}})
    assert report_checks.leakage_audit(tmp_path).status == FAIL


def test_unreadable_file_warns_instead_of_passing(tmp_path):
    (tmp_path / "ingestion_report.json").write_text("{broken")
    assert report_checks.leakage_audit(tmp_path).status == WARN


def test_random_label_control_fails_above_chance_and_passes_at_chance(tmp_path):
    control(tmp_path, low=0.40)
    assert report_checks.random_label_control(tmp_path).status == FAIL
    control(tmp_path, low=0.15)
    assert report_checks.random_label_control(tmp_path).status == PASS
    control(tmp_path, low=0.15, subjects=4)
    assert report_checks.random_label_control(tmp_path).status == WARN  # inconclusive
    control(tmp_path, low=0.15, slice_above_chance=False)
    check = report_checks.random_label_control(tmp_path)
    assert check.status == WARN and "missed the planted slice-split leak" in check.line


def test_shortcut_audit_fails_on_a_shortcut_or_a_telling_file_name(tmp_path):
    path = tmp_path / "eda" / "shortcut_audit.json"
    storage.write_json(path, {"ran": True, "score": 0.3, "chance": 0.25, "warning": False,
                              "file_names": {"encodes_class": False}})
    assert report_checks.shortcut_audit(tmp_path).status == PASS
    storage.write_json(path, {"ran": True, "warning": "image size predicts the class"})
    assert report_checks.shortcut_audit(tmp_path).status == FAIL
    storage.write_json(path, {"ran": True, "warning": False, "file_names": {"encodes_class": True}})
    assert report_checks.shortcut_audit(tmp_path).status == FAIL
    storage.write_json(path, {"ran": False, "reason": "too few images"})
    assert report_checks.shortcut_audit(tmp_path).status == NOT_RUN


def test_class_balance_fails_on_a_missing_class_and_warns_on_few_subjects(tmp_path):
    ingestion(tmp_path)
    assert report_checks.class_balance(tmp_path).status == PASS
    ingestion(tmp_path, split_warnings=["Class 'MildDemented' has 2 subject(s) and no images in test"])
    assert report_checks.class_balance(tmp_path).status == FAIL
    ingestion(tmp_path, counts={"per_class": {"A": 40, "B": 30}, "subjects_per_class": {"A": 20, "B": 4}})
    check = report_checks.class_balance(tmp_path)
    assert check.status == WARN and "B has only 4 subjects" in check.line


def calibration_summary(root, values: list[float]) -> None:
    """Write evaluation/summary.csv with these ECEs after temperature (slice level) and the control far worse."""
    rows = [{"model": f"model_{index}", "split": "test", "level": "slice", "ece_after_temperature": value}
            for index, value in enumerate(values)]
    rows.append({"model": config.CONTROL_MODEL_NAME, "split": "test", "level": "slice", "ece_after_temperature": 0.9})
    storage.write_csv(root / "evaluation" / "summary.csv", pd.DataFrame(rows))


@pytest.mark.parametrize(("values", "status"), [([0.03, 0.08], PASS), ([0.03, 0.15], WARN), ([0.31], FAIL)])
def test_calibration_grades_the_worst_model_after_temperature(tmp_path, values, status):
    calibration_summary(tmp_path, values)
    assert report_checks.calibration(tmp_path).status == status


def test_gradcam_sanity_fails_when_maps_survive_randomisation(tmp_path):
    path = tmp_path / "gradcam" / "summary.csv"
    storage.write_csv(path, pd.DataFrame({"model": ["a", "b"], "cascade_verdict": ["pass", "pass"]}))
    assert report_checks.gradcam_sanity(tmp_path).status == PASS
    storage.write_csv(path, pd.DataFrame({"model": ["a", "b"], "cascade_verdict": ["pass", "fail"]}))
    assert report_checks.gradcam_sanity(tmp_path).status == FAIL
    storage.write_csv(path, pd.DataFrame({"model": ["a", "b"], "cascade_verdict": ["pass", "too few subjects"]}))
    assert report_checks.gradcam_sanity(tmp_path).status == WARN


def test_weights_warn_when_imagenet_was_unavailable(tmp_path):
    path = tmp_path / "run_metadata.json"
    storage.write_json(path, {"weights_used": {"baseline_cnn": "random (from scratch)", "resnet50": "imagenet"}})
    assert report_checks.weights_used(tmp_path).status == PASS
    storage.write_json(path, {"weights_used": {"resnet50": "random (ImageNet weights unavailable: offline)"}})
    check = report_checks.weights_used(tmp_path)
    assert check.status == WARN and "resnet50" in check.line


def test_determinism_passes_only_with_op_determinism(tmp_path):
    storage.write_json(tmp_path / "run_metadata.json", {"settings": {"deterministic": True, "seed": 1}})
    assert report_checks.determinism(tmp_path).status == PASS
    storage.write_json(tmp_path / "run_metadata.json", {"settings": {"deterministic": False, "seed": 1}})
    assert report_checks.determinism(tmp_path).status == WARN


def test_skipped_files_warn_and_fail_above_a_tenth(tmp_path):
    ingestion(tmp_path)
    assert report_checks.skipped_files(tmp_path).status == PASS
    ingestion(tmp_path, counts={"files_seen": 100, "skipped": 2},
              skipped=[{"path": "x.jpg", "reason": "truncated JPEG"}] * 2)
    check = report_checks.skipped_files(tmp_path)
    assert check.status == WARN and "truncated JPEG" in check.line
    ingestion(tmp_path, counts={"files_seen": 100, "skipped": 20}, skipped=[])
    assert report_checks.skipped_files(tmp_path).status == FAIL


def test_a_file_in_an_unexpected_layout_warns_instead_of_crashing(tmp_path):
    storage.write_json(tmp_path / "evaluation" / "summary.json", {"random_label_control": {"verdict": "?"}})
    check = report_checks.run_checks(tmp_path)[1]
    assert check.status == WARN and "could not evaluate (KeyError" in check.line
