"""Subject-level k-fold cross-validation (notebooks 05-08 train the folds, 09-13 read the pooled summary).

scikit-learn's StratifiedGroupKFold deals the subjects into k folds, stratified by class; each fold is the test set
once, and validation (for checkpoint and C selection) is carved from the remaining subjects by subject, stratified
by class, as the single split's is. Folds are subject-level whatever split policy the run uses for its single split.
Per fold every metric of notebook 09 is written; over the folds, the mean and standard deviation of each, and the
pooled out-of-fold predictions (every subject scored once, by the model that never saw it) with subject-bootstrap
intervals.

    outputs/<profile>/<run>/folds/<k>/{models,training,evaluation}/<model>...   one fold (k = 1..K)
    outputs/<profile>/<run>/crossval/folds.csv                                  subject -> test fold
    outputs/<profile>/<run>/crossval/<model>/oof_predictions.parquet, metrics.json, run.json
    outputs/<profile>/<run>/crossval/fold_metrics.csv, summary.csv, summary.json
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings

import numpy as np
import pandas as pd

from alzlib import config, evaluation, splits
from alzlib.storage import read_json, read_parquet, write_csv, write_json, write_parquet

VALIDATION_FRACTION = 0.15  # of the training folds' subjects, per class, as the single split's 70/15/15
SUMMARY_METRICS = ("balanced_accuracy", "macro_f1", "macro_auc", "accuracy", "quadratic_kappa",
                   "mean_absolute_error", "ece")


# ----------------------------------------------------------------------------------------------- folds


def fold_assignments(manifest: pd.DataFrame, folds: int, seed: int) -> tuple[pd.Series, list[str]]:
    """Return each subject's test fold (1..folds, indexed by subject id) and warnings about thin classes.

    StratifiedGroupKFold over the images, grouped by subject and stratified by label: every subject in exactly one
    test fold. Raises ValueError when there are fewer subjects than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"Cross-validation needs an integer number of folds >= 2, got {folds!r}.")
    subjects = manifest["subject_id"].astype(str)
    if subjects.nunique() < folds:
        raise ValueError(f"FOLDS={folds} needs at least {folds} subjects; the manifest has {subjects.nunique()}.")
    labels = splits.subject_labels(manifest.assign(subject_id=subjects))
    thin = labels.value_counts()
    notes = [f"class {label} has {count} subject{'s' if count > 1 else ''} for {folds} folds: "
             f"{folds - count} test fold{'s' if folds - count > 1 else ''} lack it (its recall there is undefined)"
             for label, count in thin.items() if count < folds]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # thin classes are reported in `notes` instead
        for fold, (_, test_rows) in enumerate(splitter.split(np.zeros(len(manifest)),
                                                             manifest["label_index"].to_numpy(), subjects), start=1):
            assignment.update(dict.fromkeys(subjects.iloc[test_rows].unique(), fold))
    return pd.Series(assignment, name="fold").rename_axis("subject_id").sort_index(), notes


def fold_manifest(manifest: pd.DataFrame, assignment: pd.Series, fold: int, seed: int) -> pd.DataFrame:
    """Return the manifest with `split` rewritten for `fold`: its subjects test, the rest train/val by subject."""
    subjects = manifest["subject_id"].astype(str)
    test = subjects.map(assignment) == fold
    if not test.any():
        raise ValueError(f"Fold {fold} has no subjects (folds present: {sorted(set(assignment))}).")
    rest = manifest[~test]
    carved = splits.assign_subjects(splits.subject_labels(rest.assign(subject_id=subjects[~test])), seed + fold,
                                    (1 - VALIDATION_FRACTION, VALIDATION_FRACTION, 0.0))
    result = manifest.copy()
    result["split"] = np.where(test, "test", subjects.map(carved).fillna("train"))
    return result


def fold_settings(settings: config.Settings, fold: int) -> config.Settings:
    """Return the settings whose output paths are fold `fold`'s folder (outputs/<profile>/<run>/folds/<fold>/)."""
    return dataclasses.replace(settings, paths=config.OutputPaths(settings.paths.folds / str(fold)))


def cross_validated(settings: config.Settings, name: str) -> bool:
    """True when this run cross-validates model `name` (more than one fold and the profile lists it)."""
    return settings.folds > 1 and name in settings.profile.fold_models


# ----------------------------------------------------------------------------------------------- training


def _manifest_hash(manifest: pd.DataFrame) -> str:
    from alzlib.training import manifest_hash

    return manifest_hash(manifest.assign(split="all"))


def _clear(settings: config.Settings, name: str) -> None:
    """Remove every earlier fold output of `name`, so no pooled result can mix runs."""
    shutil.rmtree(settings.paths.crossval / name, ignore_errors=True)
    for folder in settings.paths.folds.glob("*"):
        for path in (folder / "models" / f"{name}.keras", folder / "models" / f"{name}.json",
                     folder / "models" / f"{name}.joblib"):
            path.unlink(missing_ok=True)
        for path in (folder / "training" / name, folder / "evaluation" / name):
            shutil.rmtree(path, ignore_errors=True)


def _train_and_score(name: str, settings: config.Settings, frame: pd.DataFrame, images: np.ndarray,
                     class_names: list[str], data_label: str, fold: dict) -> dict:
    """Train `name` on one fold's train/val rows and write its val/test predictions and metrics; return the record."""
    from alzlib import linear, training

    out_dir = settings.paths.evaluation / name
    scored = frame["split"].isin(["val", "test"]).to_numpy()
    if name == linear.NAME:
        model, fit = linear.train(frame, images, class_names, settings.seed)
        record = linear.save(model, fit, settings, frame, class_names, fold=fold)
        linear.evaluate(model, frame, images, class_names, out_dir, settings.seed, data_label, figures=False)
        return record
    record = training.train_model(name, settings, frame, images, verbose=0,
                                  max_train_images=settings.profile.fold_train_images, fold=fold)
    model = training.load_trained_model(settings.paths.models / f"{name}.keras")
    evaluation.evaluate_model(model, images[scored], frame[scored], class_names, record["preprocessing"], out_dir,
                              settings.seed, data_label, name, figures=False)
    return record


def run_model_folds(name: str, settings: config.Settings, manifest: pd.DataFrame, images: np.ndarray,
                    class_names: list[str], data_label: str, echo=print) -> dict:
    """Train and score `name` on every fold, pool its out-of-fold predictions; return the pooled record.

    Writes folds/<k>/... per fold and crossval/<name>/ (oof_predictions.parquet, metrics.json, run.json).
    """
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images for {len(manifest)} manifest rows: they must align row by row.")
    folds = settings.folds
    assignment, notes = fold_assignments(manifest, folds, settings.seed)
    write_csv(settings.paths.crossval / "folds.csv", assignment.reset_index())
    _clear(settings, name)
    pooled, records = [], []
    for fold in range(1, folds + 1):
        frame = fold_manifest(manifest, assignment, fold, settings.seed)
        counts = frame["split"].value_counts().to_dict()
        subjects = frame.groupby("split")["subject_id"].nunique().to_dict()
        entry = {"fold": fold, "of": folds, "images": {key: int(value) for key, value in counts.items()},
                 "subjects": {key: int(value) for key, value in subjects.items()}}
        fold_run = fold_settings(settings, fold)
        record = _train_and_score(name, fold_run, frame.reset_index(drop=True), images, class_names, data_label,
                                  entry)
        predictions = read_parquet(fold_run.paths.evaluation / name / "predictions.parquet")
        pooled.append(predictions[predictions["split"] == "test"].assign(fold=fold))
        score = read_json(fold_run.paths.evaluation / name / "metrics.json")["splits"]["test"]["slice"]["metrics"]
        echo(f"{name} fold {fold}/{folds}: {subjects.get('test', 0)} test subjects, test balanced accuracy "
             f"{score['balanced_accuracy']:.3f}")
        records.append({**entry, "training_seconds": record.get("training_seconds"),
                        "train_subset": record.get("train_subset")})
    out_dir = settings.paths.crossval / name
    oof = pd.concat(pooled, ignore_index=True)
    write_parquet(out_dir / "oof_predictions.parquet", oof)
    metrics = evaluation.evaluate_predictions(oof.drop(columns="fold"), class_names, out_dir, seed=settings.seed,
                                              data_label=data_label, model_name=name, figures=True)
    run = {"model": name, "folds": folds, "seed": settings.seed, "manifest_hash": _manifest_hash(manifest),
           "subjects": int(manifest["subject_id"].nunique()), "per_fold": records, "notes": notes,
           "validation": f"{VALIDATION_FRACTION:.0%} of the training folds' subjects per class (seed + fold)",
           "splitter": "sklearn.model_selection.StratifiedGroupKFold(shuffle=True, random_state=seed), groups = "
                       "subject_id, y = label"}
    write_json(out_dir / "run.json", run)
    return {**run, "pooled_metrics": metrics}


# ----------------------------------------------------------------------------------------------- summary


def _fold_rows(settings: config.Settings, name: str, folds: int) -> list[dict]:
    """Return one row per fold and level with the test metrics of `name` (estimates only)."""
    rows = []
    for fold in range(1, folds + 1):
        path = settings.paths.folds / str(fold) / "evaluation" / name / "metrics.json"
        for row in evaluation.summary_rows(read_json(path), "test"):
            rows.append({"model": name, "fold": fold, "level": row["level"], "images": row["images"],
                         "subjects": row["subjects"], **{metric: row.get(metric) for metric in SUMMARY_METRICS
                                                          if metric in row}})
    return rows


def _pooled_rows(settings: config.Settings, name: str) -> list[dict]:
    """Return the pooled out-of-fold test rows (one per level) of `name`, with their intervals."""
    return evaluation.summary_rows(read_json(settings.paths.crossval / name / "metrics.json"), "test")


def summarise(settings: config.Settings, manifest: pd.DataFrame) -> dict:
    """Write crossval/fold_metrics.csv, summary.csv and summary.json from every cross-validated model of this run.

    A model whose folds were made from another manifest, seed or fold count is listed as stale, not summarised.
    """
    record = {"folds": settings.folds, "fold_models": list(settings.profile.fold_models), "models": [],
              "skipped": [], "seed": settings.seed}
    if settings.folds < 2:
        record["note"] = ("single split only (FOLDS=1): no cross-validation; every number comes from the one "
                          "train/val/test split")
        write_json(settings.paths.crossval / "summary.json", record)
        return record
    current = _manifest_hash(manifest)
    fold_rows, summary_rows = [], []
    for name in settings.profile.fold_models:
        run_path = settings.paths.crossval / name / "run.json"
        if not run_path.is_file():
            record["skipped"].append({"model": name, "reason": f"{run_path} does not exist (folds not run)"})
            continue
        run = read_json(run_path)
        if (run.get("manifest_hash"), run.get("folds"), run.get("seed")) != (current, settings.folds, settings.seed):
            record["skipped"].append({"model": name, "reason": "stale: its folds were made from another manifest, "
                                                               "seed or fold count; rerun its training notebook"})
            continue
        rows = _fold_rows(settings, name, settings.folds)
        fold_rows.extend(rows)
        per_fold = pd.DataFrame(rows)
        for pooled in _pooled_rows(settings, name):
            level_rows = per_fold[per_fold["level"] == pooled["level"]]
            entry = {"model": name, "level": pooled["level"], "folds": settings.folds,
                     "subjects": pooled["subjects"], "images": pooled["images"]}
            for metric in SUMMARY_METRICS:
                if metric not in level_rows or level_rows[metric].isna().all():
                    continue
                values = level_rows[metric].astype(float)
                entry.update({f"{metric}_mean": values.mean(), f"{metric}_sd": values.std(ddof=1),
                              f"{metric}_pooled": pooled.get(metric), f"{metric}_pooled_low": pooled.get(
                                  f"{metric}_low"), f"{metric}_pooled_high": pooled.get(f"{metric}_high")})
            summary_rows.append(entry)
        record["models"].append(name)
        record.setdefault("notes", {})[name] = run.get("notes", [])
    if fold_rows:
        write_csv(settings.paths.crossval / "fold_metrics.csv", pd.DataFrame(fold_rows))
        write_csv(settings.paths.crossval / "summary.csv", pd.DataFrame(summary_rows))
    record["rows"] = summary_rows
    write_json(settings.paths.crossval / "summary.json", evaluation.strict_json(record))
    return record


def summary_table(record: dict, level: str = "subject") -> pd.DataFrame:
    """Return a readable table of the cross-validated models at one level: mean +- sd over folds and pooled [CI]."""
    rows = []
    for row in (row for row in record.get("rows", []) if row["level"] == level):
        entry = {"model": row["model"], "folds": row["folds"], "subjects": row["subjects"]}
        for metric in SUMMARY_METRICS:
            if f"{metric}_mean" not in row:
                continue
            entry[f"{metric} (mean ± sd over folds)"] = f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_sd']:.3f}"
            low, high = row.get(f"{metric}_pooled_low"), row.get(f"{metric}_pooled_high")
            if row.get(f"{metric}_pooled") is not None:
                bounds = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
                entry[f"{metric} (pooled out-of-fold)"] = f"{row[f'{metric}_pooled']:.3f}{bounds}"
        rows.append(entry)
    return pd.DataFrame(rows)


def load_summary(settings: config.Settings) -> dict:
    """Return crossval/summary.json, or a record saying why there is none."""
    path = settings.paths.crossval / "summary.json"
    if not path.is_file():
        return {"folds": settings.folds, "models": [], "rows": [],
                "note": f"{path} does not exist: run the training notebooks (05-08) first"}
    return read_json(path)


def run_if_listed(name: str, settings: config.Settings, manifest: pd.DataFrame, ingestion_report: dict,
                  images: np.ndarray | None = None) -> pd.DataFrame | str:
    """Cross-validate `name` when this run lists it (see `cross_validated`); return the summary table or why not.

    The summary covers every model cross-validated so far in this run (notebooks 05-08 each add theirs).
    """
    from alzlib import pipeline, preprocessing

    if not cross_validated(settings, name):
        reason = ("FOLDS=1: the single split only" if settings.folds < 2 else
                  f"the {settings.profile.name} profile cross-validates {', '.join(settings.profile.fold_models)} "
                  f"only (its time budget)")
        return f"{name} is not cross-validated in this run ({reason}); its numbers come from the single split."
    if images is None:
        images = preprocessing.load_image_cache(manifest, settings.profile.image_size, settings.paths.cache)
    run_model_folds(name, settings, manifest, images, pipeline.class_names(ingestion_report),
                    pipeline.data_label(ingestion_report))
    return summary_table(summarise(settings, manifest))
