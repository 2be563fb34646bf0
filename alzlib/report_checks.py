"""Checks at a glance: one pass / warn / fail badge per safeguard, each computed from the file that safeguard wrote.

A badge never passes on a missing file: where its file is absent it says "not run". Kept apart from `report.py`
because each rule is a small decision that deserves its own test (planted positive, clean negative).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alzlib import config
from alzlib.report_headline import read_csv

PASS, WARN, FAIL, NOT_RUN = "pass", "warn", "fail", "not run"
# Calibration: expected calibration error after temperature scaling on the test slices. 0.10 is the usual line
# between a usable and a poorly calibrated classifier (Guo et al. 2017 report 0.01-0.10 after scaling).
ECE_PASS, ECE_WARN = 0.10, 0.20
FEW_SUBJECTS = 10  # a class with fewer subjects than this gives wide per-class intervals
IMBALANCE_RATIO = 3.0  # most over fewest images per class
SKIPPED_FAIL_SHARE = 0.10
TRANSFER_MODELS = ("resnet50", "resnet50_attention", "efficientnetb0")


@dataclass(frozen=True)
class Check:
    """One badge: what was checked, its status, one line of why, the file it was read from and its detail's anchor."""

    name: str
    status: str
    line: str
    source: str
    anchor: str


def read_json(path: Path):
    """Return a parsed JSON file; None when missing; the string 'unreadable' when it cannot be parsed."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable"


def _absent(name: str, source: str, anchor: str, value) -> Check | None:
    """Return the neutral badge for a missing file, a warning for an unreadable one, else None."""
    if value is None:
        return Check(name, NOT_RUN, f"{source} not found", source, anchor)
    if not isinstance(value, dict):
        return Check(name, WARN, f"could not read {source}", source, anchor)
    return None


def leakage_audit(root: Path) -> Check:
    """Fail on a leaky split policy or an audit that found shared subjects or leaking images."""
    name, source, anchor = "Leakage audit", "ingestion_report.json", "leakage"
    report = read_json(root / source)
    if (early := _absent(name, source, anchor, report)) is not None:
        return early
    policy = report.get("split_policy")
    if policy in config.LEAKY_SPLIT_POLICIES:
        return Check(name, FAIL, f"the {policy} split puts one subject's slices on both sides (demonstration only)",
                     source, anchor)
    audit = (report.get("leakage_audit") or {}).get(policy)
    if not isinstance(audit, dict):
        return Check(name, NOT_RUN, f"no audit of the {policy} split in {source}", source, anchor)
    if audit.get("leaks") or (audit.get("subjects_shared") or 0) > 0:
        tripped = ", ".join(audit.get("tripped_by") or []) or f"{audit.get('subjects_shared', 0)} shared subjects"
        return Check(name, FAIL, f"the {policy} split LEAKS (tripped by: {tripped})", source, anchor)
    return Check(name, PASS, f"{policy} split: no subject on two sides, no duplicate or pixel-neighbour leak",
                 source, anchor)


def _demonstration_detects(root: Path) -> bool | None:
    """Return whether the random-label control scored above chance on the deliberately leaky slice split."""
    demonstration = read_json(root / "evaluation" / "leakage_demonstration.json")
    if not isinstance(demonstration, dict):
        return None
    cells = [cell for cell in demonstration.get("cells") or []
             if cell.get("split_policy") == "slice" and cell.get("labels") == "random"]
    return bool(cells[0].get("above_chance")) if cells else None


def random_label_control(root: Path) -> Check:
    """Fail when the control beats chance on the run's split; warn when inconclusive or blind to the planted leak."""
    name, source, anchor = "Random-label control and leakage demonstration", "evaluation/summary.json", "leakage"
    summary = read_json(root / source)
    if (early := _absent(name, source, anchor, summary)) is not None:
        return early
    control = summary.get("random_label_control")
    if not isinstance(control, dict) or "verdict" not in control:
        reason = (control or {}).get("skipped", "no control result") if isinstance(control, dict) else "no control"
        return Check(name, NOT_RUN, str(reason), source, anchor)
    score = f"{control['estimate']:.2f} [{control['low']:.2f}, {control['high']:.2f}], chance {control['chance']:.2f}"
    if control.get("tripped"):
        return Check(name, FAIL, f"scores above chance on random labels ({score}): the split leaks", source, anchor)
    if not control.get("conclusive"):
        return Check(name, WARN, f"inconclusive: {control.get('subjects')} test subjects ({score})", source, anchor)
    detects = _demonstration_detects(root)
    if detects is False:
        return Check(name, WARN, f"at chance ({score}), but it missed the planted slice-split leak: weak evidence",
                     source, anchor)
    shown = "" if detects else "; leakage demonstration not run"
    return Check(name, PASS, f"at chance on random labels ({score}){shown}", source, anchor)


def shortcut_audit(root: Path) -> Check:
    """Fail when image properties that carry no anatomy, or file names, predict the class."""
    name, source, anchor = "Shortcut audit", "eda/shortcut_audit.json", "data"
    audit = read_json(root / source)
    if (early := _absent(name, source, anchor, audit)) is not None:
        return early
    if audit.get("ran") is False:
        return Check(name, NOT_RUN, str(audit.get("reason", "the audit did not run")), source, anchor)
    if audit.get("warning") or (audit.get("file_names") or {}).get("encodes_class"):
        found = audit.get("warning") if isinstance(audit.get("warning"), str) else "a shortcut predicts the class"
        return Check(name, FAIL, found, source, anchor)
    score = audit.get("score")
    detail = f" (balanced accuracy {score:.2f}, chance {audit.get('chance', 0):.2f})" if score is not None else ""
    return Check(name, PASS, f"no shortcut found in format, size, borders or file names{detail}", source, anchor)


def class_balance(root: Path) -> Check:
    """Fail when a class is missing from a split; warn on classes with few subjects or strong imbalance."""
    name, source, anchor = "Class balance and subjects per class", "ingestion_report.json", "data"
    report = read_json(root / source)
    if (early := _absent(name, source, anchor, report)) is not None:
        return early
    if report.get("split_warnings"):
        return Check(name, FAIL, str(report["split_warnings"][0]), source, anchor)
    counts = report.get("counts") or {}
    subjects, images = counts.get("subjects_per_class") or {}, counts.get("per_class") or {}
    if not subjects or not images:
        return Check(name, NOT_RUN, f"no per-class counts in {source}", source, anchor)
    fewest = min(subjects, key=subjects.get)
    ratio = max(images.values()) / max(min(images.values()), 1)
    problems = ([f"{fewest} has only {subjects[fewest]} subjects"] if subjects[fewest] < FEW_SUBJECTS else [])
    problems += [f"images per class differ {ratio:.1f}-fold"] if ratio > IMBALANCE_RATIO else []
    if problems:
        return Check(name, WARN, "; ".join(problems), source, anchor)
    return Check(name, PASS, f"every class in every split; fewest subjects {subjects[fewest]} ({fewest}), "
                 f"imbalance {ratio:.1f}-fold", source, anchor)


def calibration(root: Path) -> Check:
    """Grade the worst model's test ECE after temperature scaling (pass <= 0.10, warn <= 0.20, else fail)."""
    name, source, anchor = "Calibration after temperature scaling", "evaluation/summary.csv", "evaluation"
    summary = read_csv(root / source)
    if summary is None or "ece_after_temperature" not in summary:
        return Check(name, NOT_RUN, f"{source} has no ECE after temperature", source, anchor)
    rows = summary[(summary["level"] == "slice") & (summary["model"] != config.CONTROL_MODEL_NAME)
                   & summary["ece_after_temperature"].notna()]
    if "split" in rows:
        rows = rows[rows["split"] == "test"]
    if rows.empty:
        return Check(name, NOT_RUN, "no model was temperature-scaled", source, anchor)
    worst = rows.loc[rows["ece_after_temperature"].idxmax()]
    value = float(worst["ece_after_temperature"])
    status = PASS if value <= ECE_PASS else WARN if value <= ECE_WARN else FAIL
    return Check(name, status, f"worst test ECE after scaling {value:.3f} ({worst['model']}; pass at or below "
                 f"{ECE_PASS:.2f}, fail above {ECE_WARN:.2f})", source, anchor)


def gradcam_sanity(root: Path) -> Check:
    """Fail when a model's maps survive cascading randomisation; pass only when every checked model passes."""
    name, source, anchor = "Grad-CAM sanity (randomisation)", "gradcam/summary.csv", "gradcam"
    summary = read_csv(root / source)
    if summary is None or "cascade_verdict" not in summary:
        return Check(name, NOT_RUN, f"{source} not found", source, anchor)
    verdicts = dict(zip(summary["model"], summary["cascade_verdict"].fillna("not run")))
    failed = [model for model, verdict in verdicts.items() if verdict == "fail"]
    passed = [model for model, verdict in verdicts.items() if verdict == "pass"]
    if failed:
        return Check(name, FAIL, f"maps survive weight randomisation: {', '.join(failed)}", source, anchor)
    if passed and len(passed) == len(verdicts):
        return Check(name, PASS, f"maps change when weights are re-initialised ({', '.join(passed)})", source, anchor)
    others = sorted({verdict for verdict in verdicts.values() if verdict != "pass"})
    return Check(name, WARN, f"checked {len(passed)} of {len(verdicts)} models; others: {', '.join(others)}",
                 source, anchor)


def _weights_by_model(root: Path) -> dict[str, str]:
    """Return the weights each model trained from: run_metadata.json, else each recipe record."""
    metadata = read_json(root / "run_metadata.json")
    if isinstance(metadata, dict) and isinstance(metadata.get("weights_used"), dict):
        return {model: str(text) for model, text in metadata["weights_used"].items()}
    found = {}
    for path in sorted((root / "models").glob("*.json")):
        record = read_json(path)
        if isinstance(record, dict) and record.get("weights"):
            found[path.stem] = str(record["weights"])
    return found


def weights_used(root: Path) -> Check:
    """Warn when a transfer model fell back to random weights because ImageNet weights were unavailable."""
    name, source, anchor = "Weights used (ImageNet or random)", "run_metadata.json", "training"
    weights = {model: text for model, text in _weights_by_model(root).items() if model in TRANSFER_MODELS}
    if not weights:
        return Check(name, NOT_RUN, "no transfer model record found", source, anchor)
    fallback = [model for model, text in weights.items() if "unavailable" in text]
    imagenet = [model for model, text in weights.items() if text.startswith("imagenet")]
    if fallback:
        return Check(name, WARN, f"ImageNet weights unavailable, trained from random: {', '.join(fallback)}",
                     source, anchor)
    random = [model for model in weights if model not in imagenet]
    return Check(name, PASS, f"ImageNet: {', '.join(imagenet) or 'none'}; random as requested: "
                 f"{', '.join(random) or 'none'}", source, anchor)


def determinism(root: Path) -> Check:
    """Pass when TensorFlow op determinism was on; warn when off (reruns differ in the last digits)."""
    name, source, anchor = "Determinism", "run_metadata.json", "run"
    metadata = read_json(root / source)
    if (early := _absent(name, source, anchor, metadata)) is not None:
        return early
    settings = metadata.get("settings") or {}
    if "deterministic" not in settings:
        return Check(name, NOT_RUN, f"{source} does not record DETERMINISTIC", source, anchor)
    seed = settings.get("seed")
    if settings["deterministic"]:
        return Check(name, PASS, f"op determinism on, seed {seed}: a rerun gives identical numbers", source, anchor)
    return Check(name, WARN, f"op determinism off (the default), seed {seed}: a rerun may differ slightly",
                 source, anchor)


def skipped_files(root: Path) -> Check:
    """Warn when ingestion skipped any file; fail when it skipped more than a tenth of them."""
    name, source, anchor = "Skipped files", "ingestion_report.json", "data"
    report = read_json(root / source)
    if (early := _absent(name, source, anchor, report)) is not None:
        return early
    counts = report.get("counts") or {}
    skipped = counts.get("skipped", len(report.get("skipped") or []))
    seen = counts.get("files_seen") or counts.get("images") or 0
    if not skipped:
        return Check(name, PASS, f"none of {seen} files skipped", source, anchor)
    entries = [entry for entry in report.get("skipped") or [] if isinstance(entry, dict)]
    reasons = sorted({str(entry.get("reason", "?")) for entry in entries})
    status = FAIL if seen and skipped / seen > SKIPPED_FAIL_SHARE else WARN
    return Check(name, status, f"{skipped} of {seen} files skipped ({'; '.join(reasons[:2]) or 'see report'})",
                 source, anchor)


CHECKS = (leakage_audit, random_label_control, shortcut_audit, class_balance, calibration, gradcam_sanity,
          weights_used, determinism, skipped_files)


def run_checks(root: Path) -> list[Check]:
    """Return every badge for the run folder `root`, in panel order."""
    return [_checked(check, Path(root)) for check in CHECKS]


def _checked(check, root: Path) -> Check:
    """Run one check; a file in an unexpected layout gives a warning badge that says so, never a pass or a crash."""
    try:
        return check(root)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        return Check(check.__name__.replace("_", " ").capitalize(), WARN,
                     f"could not evaluate ({type(error).__name__}: {error})", "its file", "appendix")
