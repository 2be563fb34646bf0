"""What every notebook after ingestion starts from: the manifest, its report and how to label results."""

from __future__ import annotations

import pandas as pd

from alzlib import config
from alzlib.storage import read_json, read_parquet

SYNTHETIC_LABEL = "synthetic cohort"


def load_manifest(settings: config.Settings) -> tuple[pd.DataFrame, dict]:
    """Return the manifest and ingestion report written by notebook 01 for this profile."""
    if not settings.paths.manifest.is_file():
        raise FileNotFoundError(f"{settings.paths.manifest} does not exist: run 01_dataset_ingestion with "
                                f"PROFILE={settings.profile.name!r} first (python run_all.py --only 01).")
    return read_parquet(settings.paths.manifest), read_json(settings.paths.ingestion_report)


def is_synthetic(ingestion_report: dict) -> bool:
    """True when the run's data is the embedded synthetic cohort."""
    return bool(ingestion_report.get("data_source", {}).get("synthetic"))


def data_label(ingestion_report: dict) -> str:
    """Return the label every title and table of this run carries ('synthetic cohort' or the data set)."""
    policy = ingestion_report.get("split_policy", "subject")
    source = ingestion_report.get("data_source", {})
    label = SYNTHETIC_LABEL if is_synthetic(ingestion_report) else f"{source.get('layout', 'data set')} ({policy} split)"
    if policy in config.LEAKY_SPLIT_POLICIES:
        label += f"; {policy}-level split that LEAKS subjects across train/test (demonstration only)"
    return label


def class_names(ingestion_report: dict) -> list[str]:
    """Return the task's class names in label-index order."""
    return list(ingestion_report["classes"])


def split_frame(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Return the rows of one split, naming the split when it is empty or unknown."""
    if split not in config.SPLITS:
        raise ValueError(f"Unknown split {split!r}: expected one of {config.SPLITS}.")
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"The {split} split of the manifest is empty: check the ingestion report's split warnings.")
    return rows


def trained_models(settings: config.Settings, names: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """Return the recipe records of the trained models among `names` and a skip entry for each missing one."""
    from alzlib.storage import read_json

    found, missing = [], []
    for name in names or list(config.MODEL_NAMES):
        model_path = settings.paths.models / f"{name}.keras"
        record_path = model_path.with_suffix(".json")
        if model_path.is_file() and record_path.is_file():
            found.append({**read_json(record_path), "model_path": str(model_path)})
        else:
            missing.append({"model": name, "reason": f"{model_path} or its recipe record does not exist "
                                                     f"(train it with notebooks 05-08)"})
    return found, missing


def probability_function(model, spec: dict, batch_size: int = 32):
    """Return a function from uint8 images to class probabilities, preprocessing them as `spec` records."""
    from alzlib import evaluation

    def predict(images):
        return evaluation.predict_probabilities(model, evaluation.prepare_for_model(images, spec), batch_size)

    return predict
