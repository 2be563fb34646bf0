"""The report's first screen: each model's headline score with its interval, and the one verdict the data support.

Kept apart from `report.py` because the runs index (`alzlib.runs`) shows the same numbers for every run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alzlib import config

HEADLINE_METRIC = "balanced_accuracy"
HEADLINE_LEVEL = "subject"
# The comparison stage's support rule (alzlib.comparison): fewer paired subjects than this is inconclusive.
MIN_PAIRED_SUBJECTS = 10
PAIRED_FILES = (("paired_differences_crossval.csv", "cross-validated over every subject"),
                ("paired_differences.csv", "single split, test subjects"))
ROLES = {name: "CNN" for name in config.MODEL_NAMES}
ROLES.update({name: "published system" for name in config.EXTRA_MODEL_NAMES})
ROLES.update({name: "linear" for name in config.BASELINE_MODEL_NAMES})
ROLES[config.CONTROL_MODEL_NAME] = "control"


def read_csv(path: Path) -> pd.DataFrame | None:
    """Return a CSV as a DataFrame, or None when it is missing, empty or unreadable."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return None if frame.empty else frame


def interval_text(estimate, low, high) -> str:
    """Format `0.612 [0.540, 0.680]`; a dash when the estimate is missing."""
    if estimate is None or pd.isna(estimate):
        return "—"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{estimate:.3f}"
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def _score(rows: pd.DataFrame, model: str, level: str, prefix: str = HEADLINE_METRIC) -> str:
    """Return one model's score at one level with its interval, from evaluation/summary.csv rows."""
    match = rows[(rows["model"] == model) & (rows["level"] == level)]
    if match.empty:
        return "—"
    row = match.iloc[0]
    return interval_text(row.get(prefix), row.get(f"{prefix}_low"), row.get(f"{prefix}_high"))


def _crossval_scores(root: Path) -> dict[str, str]:
    """Return each cross-validated model's pooled out-of-fold subject-level score with its interval."""
    frame = read_csv(root / "crossval" / "summary.csv")
    if frame is None or "balanced_accuracy_pooled" not in frame:
        return {}
    frame = frame[frame["level"] == HEADLINE_LEVEL]
    return {row.model: interval_text(row.balanced_accuracy_pooled, row.balanced_accuracy_pooled_low,
                                     row.balanced_accuracy_pooled_high) for row in frame.itertuples()}


def ordered_models(names) -> list[str]:
    """Return model names in headline order: deep networks, then the non-deep baseline, then the control."""
    order = [*config.ALL_MODEL_NAMES, *config.BASELINE_MODEL_NAMES, config.CONTROL_MODEL_NAME]
    known = [name for name in order if name in set(names)]
    return known + sorted(set(names) - set(order))


def headline_table(root: Path) -> pd.DataFrame:
    """Return one row per evaluated model: role, test balanced accuracy at slice and subject level, cross-validated."""
    summary = read_csv(root / "evaluation" / "summary.csv")
    if summary is None or not {"model", "level", HEADLINE_METRIC} <= set(summary.columns):
        return pd.DataFrame()
    test = summary[summary["split"] == "test"] if "split" in summary else summary
    crossval = _crossval_scores(root)
    rows = [{"model": name, "role": ROLES.get(name, "other"),
             "test, slice [95% CI]": _score(test, name, "slice"),
             "test, subject [95% CI]": _score(test, name, "subject"),
             "cross-validated, subject": crossval.get(name, "—")}
            for name in ordered_models(test["model"].unique())]
    frame = pd.DataFrame(rows)
    return frame if crossval else frame.drop(columns="cross-validated, subject")


def headline_numbers(root: Path) -> dict:
    """Return the run's headline numbers (subject-level test balanced accuracy per model) for the runs index."""
    summary = read_csv(root / "evaluation" / "summary.csv")
    if summary is None or not {"model", "level", HEADLINE_METRIC} <= set(summary.columns):
        return {}
    rows = summary[(summary.get("split", "test") == "test") & (summary["level"] == HEADLINE_LEVEL)]
    return {row.model: round(float(getattr(row, HEADLINE_METRIC)), 4) for row in rows.itertuples()
            if pd.notna(getattr(row, HEADLINE_METRIC))}


def paired_tables(root: Path) -> list[tuple[pd.DataFrame, str]]:
    """Return every paired-difference table present (cross-validated first) with where it came from."""
    needed = {"model_a", "model_b", "level", "subjects", "difference", "low", "high", "supported"}
    tables = []
    for name, source in PAIRED_FILES:
        frame = read_csv(root / "comparison" / name)
        if frame is not None and needed <= set(frame.columns):
            tables.append((frame, source))
    return tables


def paired_differences(root: Path) -> tuple[pd.DataFrame | None, str]:
    """Return the paired-difference table the report shows first (cross-validated if present) and its source."""
    tables = paired_tables(root)
    return tables[0] if tables else (None, "")


def _supported_sentence(row) -> str:
    """Return 'A beats B by +0.10 [+0.04, +0.16]' for a supported difference, the better model first."""
    better, worse, sign = (row.model_a, row.model_b, 1) if row.difference > 0 else (row.model_b, row.model_a, -1)
    low, high = sorted((sign * row.low, sign * row.high))
    return f"{better} beats {worse} by {sign * row.difference:+.2f} [{low:+.2f}, {high:+.2f}]"


def _table_verdict(frame: pd.DataFrame, source: str) -> str:
    """Return one clause on what one paired-difference table supports at the headline level."""
    level = frame[frame["level"] == HEADLINE_LEVEL]
    level = level if not level.empty else frame
    subjects = int(level["subjects"].min())
    where = f"{source[0].upper()}{source[1:]} ({level['level'].iloc[0]} level)"
    if subjects < MIN_PAIRED_SUBJECTS:
        return (f"{where}: no model can be told apart from another, {subjects} paired subjects are too few "
                f"(at least {MIN_PAIRED_SUBJECTS} needed)")
    supported = level[level["supported"].astype(str).str.lower() == "true"]
    if supported.empty:
        return f"{where}: no model is distinguishable from another at this sample size ({subjects} subjects)"
    sentences = [_supported_sentence(row) for row in supported.itertuples()]
    shown = "; ".join(sentences[:3]) + (f"; and {len(sentences) - 3} more" if len(sentences) > 3 else "")
    return f"{where}: {shown} ({len(supported)} of {len(level)} pairs supported, {subjects} subjects)"


def verdict(root: Path) -> str:
    """Return the verdict the paired differences allow under the comparison's support rule (paired bootstrap,
    Holm-corrected, interval excluding 0, enough subjects), one clause per table."""
    tables = paired_tables(root)
    if not tables:
        return "No verdict: comparison/paired_differences*.csv is missing, so no model difference was tested."
    return ". ".join(_table_verdict(frame, source) for frame, source in tables) + "."
