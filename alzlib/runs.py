"""Run records: every run folder under `outputs/<profile>/`, listed in `outputs/runs.csv` and `outputs/index.html`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alzlib import config, report_headline, storage
from alzlib.report_checks import read_json

INDEX_CSV = "runs.csv"
INDEX_HTML = "index.html"
FIXED_COLUMNS = ("profile", "run", "data", "split", "status", "finished", "test_subjects", "best_model",
                 "best_balanced_accuracy", "verdict", "report")


def run_folders(outputs: Path | None = None) -> list[Path]:
    """Return every run folder (`<profile>/<run>/` holding a run summary or a report), sorted."""
    outputs = Path(outputs or config.outputs_root())
    found = [folder for folder in outputs.glob("*/*") if folder.is_dir() and folder.parent.name in config.PROFILES
             and ((folder / "run_summary.json").is_file() or (folder / "report.html").is_file())]
    return sorted(found)


def _test_subjects(folder: Path) -> int | None:
    """Return the number of test subjects from the evaluation summary (subject-level rows), or None."""
    summary = report_headline.read_csv(folder / "evaluation" / "summary.csv")
    if summary is None or "subjects" not in summary:
        return None
    return int(summary["subjects"].max())


def run_row(folder: Path) -> dict:
    """Return one run's line of the index: where, what, when, and its headline numbers (subject level)."""
    summary = read_json(folder / "run_summary.json")
    summary = summary if isinstance(summary, dict) else {}
    data, _, split = folder.name.rpartition("-")
    scores = report_headline.headline_numbers(folder)
    ranked = {name: score for name, score in scores.items() if name != config.CONTROL_MODEL_NAME}
    best = max(ranked, key=ranked.get) if ranked else None
    report = folder / "report.html"
    return {"profile": folder.parent.name, "run": folder.name, "data": data or folder.name, "split": split,
            "status": summary.get("status", "unknown"), "finished": summary.get("finished"),
            "test_subjects": _test_subjects(folder), "best_model": best,
            "best_balanced_accuracy": ranked.get(best) if best else None,
            "verdict": report_headline.verdict(folder) if scores else "",
            "report": f"{folder.parent.name}/{folder.name}/report.html" if report.is_file() else "",
            **{f"{name}_balanced_accuracy": score for name, score in scores.items()}}


def index_table(outputs: Path | None = None) -> pd.DataFrame:
    """Return the runs index: one row per run folder, fixed columns first, then each model's headline score."""
    rows = [run_row(folder) for folder in run_folders(outputs)]
    frame = pd.DataFrame(rows, columns=None if rows else list(FIXED_COLUMNS))
    scores = sorted(column for column in frame.columns if column not in FIXED_COLUMNS)
    frame["test_subjects"] = frame["test_subjects"].astype("Int64")  # a count, also where some runs lack one
    return frame[[*FIXED_COLUMNS, *scores]]


def render_index_html(frame: pd.DataFrame) -> str:
    """Return the runs index as an offline HTML page linking each run's report."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("alzlib", "templates"), autoescape=True)
    columns = [column for column in frame.columns if column != "report"]
    rows = [{"cells": [_cell(row[column]) for column in columns], "report": row["report"]}
            for _, row in frame.iterrows()]
    return environment.get_template("runs_index.html.j2").render(columns=columns, rows=rows)


def _cell(value) -> str:
    """Format one index cell: 3 decimals for floats, a dash for missing values."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def update_index(outputs: Path | None = None) -> Path:
    """Rewrite `outputs/runs.csv` and `outputs/index.html` from every run folder; return the CSV's path."""
    outputs = Path(outputs or config.outputs_root())
    frame = index_table(outputs)
    storage.write_csv(outputs / INDEX_CSV, frame)
    with storage.atomic_path(outputs / INDEX_HTML) as temporary:
        temporary.write_text(render_index_html(frame), encoding="utf-8")
    return outputs / INDEX_CSV
