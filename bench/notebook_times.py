#!/usr/bin/env python
"""Wall time of each notebook of a pipeline run, read from outputs/<profile>/run_summary.json (run_all.py writes it).

    python run_all.py --profile cpu            # first: the run whose times are reported
    python bench/notebook_times.py             # then: the table (profile cpu by default)
    python bench/notebook_times.py --profile full

Nothing is timed here: the runner records each notebook's seconds as it runs them. When the summary does not exist
yet the script says how to make it and exits 0, so bench/run_all.sh goes on. Writes outputs/bench/notebook_times.json.
"""

from __future__ import annotations

import argparse

import common
from alzlib import config
from alzlib.storage import read_json


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(config.PROFILES), default="cpu", help="whose run to report")
    common.add_output_argument(parser, "notebook_times")
    return parser.parse_args(argv)


def notebook_rows(summary: dict) -> list[dict]:
    """Return one row per notebook of a run summary: name, status, seconds and share of the total."""
    entries = summary.get("notebooks", [])
    total = sum(entry.get("seconds") or 0 for entry in entries)
    rows = []
    for entry in entries:
        seconds = entry.get("seconds")
        rows.append({"notebook": entry.get("name"), "status": entry.get("status"),
                     "skipped_resume": bool(entry.get("skipped")), "seconds": seconds,
                     "minutes": seconds / 60 if seconds is not None else None,
                     "share": seconds / total if seconds is not None and total else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the notebook times of the profile's last run, or say that there is none yet."""
    arguments = parse_arguments(argv)
    path = config.output_paths(arguments.profile).run_summary
    if not path.is_file():
        message = (f"No run summary at {path}: the {arguments.profile} pipeline has not been run yet. Run "
                   f"`python run_all.py --profile {arguments.profile}` first, then this script again.")
        print(message)
        common.write_result("notebook_times", arguments.output, {
            "benchmark": "notebook_times", "profile": arguments.profile, "run_summary": str(path),
            "status": "missing", "message": message, "rows": []})
        return 0
    summary = read_json(path)
    rows = notebook_rows(summary)
    total = sum(row["seconds"] or 0 for row in rows)
    common.print_table(rows, ["notebook", "status", "skipped_resume", "seconds", "minutes", "share"],
                       f"Notebook wall times, profile {arguments.profile}, run started {summary.get('started')}, "
                       f"status {summary.get('status')}")
    print(f"total {total:.0f} s ({total / 60:.1f} min) over {len(rows)} notebooks")
    common.write_result("notebook_times", arguments.output, {
        "benchmark": "notebook_times", "profile": arguments.profile, "run_summary": str(path),
        "status": summary.get("status"), "run_started": summary.get("started"),
        "run_finished": summary.get("finished"), "parameters": summary.get("parameters"),
        "total_seconds": total, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
