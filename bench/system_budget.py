#!/usr/bin/env python
"""At what epoch budget do the published systems (issue 18) learn the cohort? Scored on validation subjects only.

    python bench/system_budget.py --run outputs/cpu/synthetic-subject --systems alexnet,convnext_scratch \
        --epochs 4,16 --output /tmp/system_budget.json

Takes the manifest and image cache of a finished run (any run that got past notebook 04), and trains each system
through the pipeline's own `system_training.train_system` at each epoch budget, into a scratch folder, never into
the run. For each (system, epochs) it prints the validation subject-level balanced accuracy with its subject
bootstrap interval, the chance level, and the training seconds. The test split is not read: a budget chosen here is
chosen on validation data, as the ViT's search is.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

import common
from alzlib import config, evaluation, systems


def parse_epochs(text: str) -> list[int]:
    """Return the comma-separated positive epoch budgets of `text`."""
    return [common.positive_int(part) for part in text.split(",") if part.strip()]


def run_settings(run: Path, scratch: Path, profile: str, seed: int, name: str, epochs: int) -> config.Settings:
    """Return cpu-profile settings whose outputs are `scratch` (a copy of the run's manifest, its cache linked)."""
    for required in ("manifest.parquet", "cache"):
        if not (run / required).exists():
            raise SystemExit(f"{run / required} is missing: --run must be the folder of a run that finished 04.")
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "manifest.parquet", scratch / "manifest.parquet")
    if not (scratch / "cache").exists():
        (scratch / "cache").symlink_to((run / "cache").resolve(), target_is_directory=True)
    settings = config.load_settings(profile=profile, seed=seed, models="all")
    budget = dataclasses.replace(settings.profile, model_epochs={**settings.profile.model_epochs, name: epochs})
    return dataclasses.replace(settings, profile=budget, paths=config.OutputPaths(scratch))


def validation_score(record: dict, settings: config.Settings, manifest: pd.DataFrame) -> dict:
    """Return the kept model's validation subject-level balanced accuracy and its subject-bootstrap interval."""
    from alzlib import preprocessing, training

    images = preprocessing.load_image_cache(manifest, settings.profile.image_size, settings.paths.cache)
    val = manifest["split"].to_numpy() == "val"
    model = training.load_trained_model(settings.paths.models / record["files"]["model"])
    probabilities = evaluation.predict_probabilities(
        model, evaluation.prepare_for_model(images[val], record["preprocessing"]))
    labels = manifest.loc[val, "label_index"].to_numpy()
    subjects, subject_labels, votes = evaluation.soft_vote(probabilities, manifest.loc[val, "subject_id"], labels)
    interval = evaluation.subject_bootstrap(subject_labels, votes, subjects, seed=settings.seed)
    return {"val_subjects": int(len(subjects)), "val_subject_balanced_accuracy": interval["estimate"],
            "low": interval["low"], "high": interval["high"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run's folder (outputs/<profile>/<run>)")
    parser.add_argument("--systems", default=",".join(systems.SYSTEMS), help="comma-separated system names")
    parser.add_argument("--epochs", type=parse_epochs, default=[4, 16], help="comma-separated epoch budgets")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    common.add_output_argument(parser, "system_budget")
    args = parser.parse_args()
    common.quiet_tensorflow()
    from alzlib import system_training

    names = common.parse_names(args.systems, list(systems.SYSTEMS))
    rows = []
    with tempfile.TemporaryDirectory(prefix="alz-system-budget-") as folder:
        for name in names:
            for epochs in args.epochs:
                settings = run_settings(args.run, Path(folder) / f"{name}-{epochs}", args.profile, args.seed, name,
                                        epochs)
                manifest = pd.read_parquet(settings.paths.manifest)
                started = time.perf_counter()
                # The ViT trains on the recipe's values here: its search is timed and tested on its own.
                record = system_training.train_system(name, settings, manifest, verbose=0)
                seconds = time.perf_counter() - started
                score = validation_score(record, settings, manifest)
                rows.append({"system": name, "epochs": epochs, **score,
                             "chance": round(1 / record["num_classes"], 3),
                             "kept": record.get("best_epoch") or "weight average",
                             "train_images": record["train_images"], "seconds": round(seconds, 1)})
                common.print_table(rows[-1:], list(rows[-1]))
    common.print_table(rows, list(rows[0]), title="Validation subjects only; synthetic cohort")
    common.write_result("system_budget", args.output, {"run": str(args.run), "rows": rows,
                                                       "machine": common.machine_record(),
                                                       "note": "validation subjects only; synthetic cohort"})


if __name__ == "__main__":
    main()
