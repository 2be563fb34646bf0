#!/usr/bin/env python
"""Synthetic cohort: generation time per profile, byte-identical reruns and the calibration baseline.

    python bench/synthetic_cohort.py                     # smoke and cpu profiles, seed 42, into a temp folder
    python bench/synthetic_cohort.py --profiles cpu --repeat-check

Prints seconds per profile and the logistic-regression balanced accuracy under a subject split (the check that
the task is learnable but not trivial; target about 0.45-0.70 for 4 classes); writes
outputs/bench/synthetic_cohort.json.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import common
from alzlib import config, synthetic


def folder_digest(root: Path) -> str:
    """Return one sha256 over every file's relative path and bytes under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def measure(profile_name: str, seed: int, work: Path, repeat_check: bool) -> dict:
    """Generate one profile's cohort (twice with `repeat_check`); return times, digest and calibration."""
    profile = config.get_profile(profile_name)
    started = time.perf_counter()
    first = synthetic.generate_cohort(work / f"{profile_name}_a", profile, seed)
    record = {"profile": profile_name, "seed": seed, "generate_seconds": time.perf_counter() - started,
              "images": int(sum(profile.cohort_subjects.values()) * profile.slices_per_subject),
              "digest": folder_digest(first)}
    if repeat_check:
        second = synthetic.generate_cohort(work / f"{profile_name}_b", profile, seed)
        record["byte_identical_rerun"] = folder_digest(second) == record["digest"]
    record["calibration"] = synthetic.calibration_baseline(first, seed=seed)
    return record


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="smoke,cpu", type=lambda text: common.parse_names(text, config.PROFILES))
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--repeat-check", action="store_true", help="generate twice and compare every byte")
    common.add_output_argument(parser, "synthetic_cohort")
    arguments = parser.parse_args()
    machine = common.machine_record()
    with tempfile.TemporaryDirectory(prefix="synthetic_bench_") as work:
        results = [measure(name, arguments.seed, Path(work), arguments.repeat_check) for name in arguments.profiles]
    rows = [{"profile": item["profile"], "images": item["images"], "seconds": item["generate_seconds"],
             "identical": item.get("byte_identical_rerun"),
             "balanced_accuracy": item["calibration"]["balanced_accuracy"]} for item in results]
    common.print_table(rows, ["profile", "images", "seconds", "identical", "balanced_accuracy"],
                       "Synthetic cohort generation (logistic regression on 32 px pixels, subject split)")
    common.write_result("synthetic_cohort", arguments.output, {**machine, "results": results})


if __name__ == "__main__":
    main()
