"""External validation: every trained model scored on a test set from another site, and the drop from site A.

The external set is the synthetic cohort's site B (version 2: the same kind of subjects under another scanner) or a
real data set the user names (`run_all.py --external-data PATH`, the EXTERNAL_DATA parameter), taken in as
ingestion takes any data set. Images that are exact or near copies of the training data, or whose subject id is one
of the training data's, are left out with their reason: a copy would score memory, not generalisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import config, evaluation, ingestion, preprocessing, synthetic
from alzlib.storage import read_json, write_json, write_parquet

# Site B holds this share of the profile's subjects per class (cpu: 72 subjects, against about 27 test subjects at
# site A): enough for intervals narrower than site A's, at a few seconds of rendering.
SITE_B_FRACTION = 0.4
SITE_B_MINIMUM = 2
# An external set of which at least this share copies the training data is most likely the same data set.
SAME_DATA_SHARE = 0.5
LEVELS = ("slice", "subject")
METRIC = "balanced_accuracy"
# As for paired differences (comparison.MIN_PAIRED_SUBJECTS): with fewer test subjects at either site the bootstrap
# interval is too narrow to mean anything (one subject per class gives zero width), so no drop is claimed.
MIN_SUBJECTS = 10
DROP_RULE = (f"a drop is shown when the 95% interval of site A minus external lies above 0 (a gain: below 0), with "
             f"at least {MIN_SUBJECTS} test subjects at each site; otherwise 'no drop shown' or 'too few subjects'")


class ExternalDataError(ValueError):
    """The external data set cannot be scored by this run's models (classes, or nothing left after de-copying)."""


def site_b_profile(profile: config.Profile) -> config.Profile:
    """Return `profile` with the site-B cohort's subject counts."""
    counts = {name: max(SITE_B_MINIMUM, round(count * SITE_B_FRACTION))
              for name, count in profile.cohort_subjects.items()}
    return dataclasses.replace(profile, cohort_subjects=counts)


def external_source(settings: config.Settings) -> dict:
    """Return what this run tests externally: {'kind', 'path', 'label'}, or {'kind': None, 'reason'}."""
    if settings.external_data:
        return {"kind": "user", "path": str(settings.external_data),
                "label": f"external data set {settings.external_data.name}"}
    if settings.synthetic and settings.profile.cohort_version == "2":
        return {"kind": "site_b", "path": str(config.site_b_data_dir(settings.profile)),
                "label": "synthetic cohort, site B (another simulated scanner)"}
    if settings.synthetic:
        return {"kind": None, "reason": "synthetic cohort version 1 has no second site (version 2 has site B)"}
    return {"kind": None, "reason": "no external data set named (run_all.py --external-data PATH)"}


def ensure_external_data(settings: config.Settings, source: dict) -> Path:
    """Return the external data folder, rendering the synthetic site B first when that is the source."""
    if source["kind"] == "site_b":
        synthetic.ensure_cohort(site_b_profile(settings.profile), settings.seed, Path(source["path"]), version="2",
                                site="B")
    return Path(source["path"])


def _mapped(frame: pd.DataFrame, class_names: list[str], root: Path) -> pd.DataFrame:
    """Return the external rows with label_index in the trained task's order; raise naming unknown classes."""
    unknown = sorted(set(frame["label"]) - set(class_names))
    if unknown:
        raise ExternalDataError(f"External data {root} has class(es) {unknown} that the trained models do not "
                                f"predict: expected a subset of {class_names}.")
    return frame.assign(label_index=frame["label"].map({name: index for index, name in enumerate(class_names)}),
                        split="test")


def _training_features(manifest: pd.DataFrame) -> np.ndarray:
    """Return the unit-row thumbnails of every image of the training data set (all its splits)."""
    thumbnails = [ingestion.thumbnail(ingestion.load_image(path)).ravel() for path in manifest["path"]]
    return ingestion.unit_rows(np.stack(thumbnails))


def _copy_reasons(frame: pd.DataFrame, features: np.ndarray, manifest: pd.DataFrame) -> pd.Series:
    """Return, per external row, why it copies the training data (exact bytes, near pixels, same subject) or None."""
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    match, correlation = ingestion.nearest_copies(features, _training_features(manifest))
    training_paths = manifest["path"].to_numpy()
    for row in np.flatnonzero(match >= 0):
        reasons.iloc[row] = (f"near copy (pixel correlation {correlation[row]:.4f}) of training-data image "
                             f"{training_paths[match[row]]}")
    # Only ids read from file names identify people across data sets; similarity groups are numbered per data set.
    named = manifest["subject_source"].astype(str).str.startswith("filename")
    shared = (frame["subject_source"].astype(str).str.startswith("filename")
              & frame["subject_id"].isin(set(manifest.loc[named, "subject_id"])))
    reasons[shared & reasons.isna()] = "subject id also in the training data: " + frame.loc[shared, "subject_id"]
    exact = frame["sha256"].isin(set(manifest["sha256"]))
    reasons[exact] = "exact copy (same bytes) of a training-data image"
    return reasons


def external_manifest(root: Path, class_names: list[str], manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Ingest an external data set; return its usable rows (split 'test') and a record of what was left out."""
    scan = ingestion.scan_dataset(root)
    frame, features, extras = ingestion.manifest_frame(scan)
    frame = _mapped(frame, class_names, root)
    reasons = _copy_reasons(frame, features, manifest)
    copies = [{"path": path, "reason": reason} for path, reason in zip(frame["path"], reasons) if reason]
    share = len(copies) / len(frame)
    if share == 1.0:
        raise ExternalDataError(f"Every image of external data {root} copies the training data (first: "
                                f"{copies[0]['path']}: {copies[0]['reason']}): nothing is left to test on.")
    kept = frame[reasons.isna().to_numpy()].reset_index(drop=True)
    warnings = []
    if share >= SAME_DATA_SHARE:
        warnings.append(f"{share:.0%} of external data {root} copies the training data: it is most likely the same "
                        f"data set; the rest is scored but is no external test")
    record = {"root": str(root), "layout": scan.data_source.get("layout"), "images": len(kept),
              "subjects": int(kept["subject_id"].nunique()), "classes": sorted(set(kept["label"])),
              "copies_left_out": copies, "skipped": extras["skipped"], "warnings": warnings,
              "subject_source": kept["subject_source"].value_counts().to_dict()}
    return kept, record


# ------------------------------------------------------------------------------------------------ models


def scored_models(settings: config.Settings) -> list[dict]:
    """Return the records of the single-split models that notebook 09 evaluated (baselines first, no controls)."""
    records = []
    for name in (*config.BASELINE_MODEL_NAMES, *settings.models):
        record_path = settings.paths.models / f"{name}.json"
        predictions = settings.paths.evaluation / name / "predictions.parquet"
        if record_path.is_file() and predictions.is_file():
            record = read_json(record_path)
            record["model_path"] = str(settings.paths.models / record.get("files", {}).get("model", f"{name}.keras"))
            records.append(record)
    return records


def predict(record: dict, images: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Return a trained model's class probabilities for uint8 images (scikit-learn baseline or Keras model)."""
    if record.get("framework") == "scikit-learn":
        from alzlib import linear

        return linear.predict(linear.load(record["model_path"]), images, len(class_names))[0]
    from alzlib import training

    model = training.load_trained_model(record["model_path"])
    return evaluation.predict_probabilities(model, evaluation.prepare_for_model(images, record["preprocessing"]))


# ------------------------------------------------------------------------------------------------ scores


def _level_inputs(frame: pd.DataFrame, class_names: list[str], level: str) -> tuple:
    """Return (labels, probabilities, subject ids) of a predictions table at slice or subject (soft vote) level."""
    probabilities = evaluation.probability_columns(frame, class_names)
    if level == "slice":
        return frame["label_index"].to_numpy(), probabilities, frame["subject_id"].to_numpy()
    subjects, labels, votes = evaluation.soft_vote(probabilities, frame["subject_id"], frame["label_index"])
    return labels, votes, subjects


def drop_row(site_a: pd.DataFrame, external: pd.DataFrame, class_names: list[str], level: str, seed: int) -> dict:
    """Return site A's and the external set's balanced accuracy and the drop (A minus external), each with a 95%
    interval: the two test sets hold different subjects, so each is bootstrapped over its own subjects
    (independently) and the drop's interval is taken over the differences of the replicates."""
    estimate_a, values_a, subjects_a = evaluation.bootstrap_values(*_level_inputs(site_a, class_names, level),
                                                                   (METRIC,), seed=seed)
    estimate_b, values_b, subjects_b = evaluation.bootstrap_values(*_level_inputs(external, class_names, level),
                                                                   (METRIC,), seed=seed + 1)
    drop = evaluation.percentile_interval(values_a[METRIC] - values_b[METRIC],
                                          estimate_a[METRIC] - estimate_b[METRIC])
    interval_a = evaluation.percentile_interval(values_a[METRIC], estimate_a[METRIC])
    interval_b = evaluation.percentile_interval(values_b[METRIC], estimate_b[METRIC])
    return {"level": level, "site_a": interval_a["estimate"], "site_a_low": interval_a["low"],
            "site_a_high": interval_a["high"], "external": interval_b["estimate"], "external_low": interval_b["low"],
            "external_high": interval_b["high"], "drop": drop["estimate"], "drop_low": drop["low"],
            "drop_high": drop["high"], "site_a_subjects": subjects_a, "external_subjects": subjects_b,
            "verdict": drop_verdict(drop["low"], drop["high"], min(subjects_a, subjects_b))}


def drop_verdict(low: float, high: float, subjects: int) -> str:
    """Return the verdict on a drop's interval by DROP_RULE (`subjects`: the smaller site's test subjects)."""
    if subjects < MIN_SUBJECTS:
        return "too few subjects"
    return "drop shown" if low > 0 else "gain shown" if high < 0 else "no drop shown"


def plot_drops(table: pd.DataFrame, title: str):
    """Return a figure: each model's balanced accuracy at site A and on the external set, with 95% intervals."""
    import matplotlib.pyplot as plt

    rows = table[table["level"] == "subject"].reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.4 * len(rows) + 2), 3.6))
    positions = np.arange(len(rows))
    for offset, column, colour, name in ((-0.18, "site_a", "#4c72b0", "site A test"),
                                         (0.18, "external", "#dd8452", "external test")):
        errors = [rows[column] - rows[f"{column}_low"], rows[f"{column}_high"] - rows[column]]
        axis.bar(positions + offset, rows[column], 0.36, yerr=errors, color=colour, label=name, capsize=3)
    axis.set_xticks(positions, rows["model"], rotation=20, ha="right")
    axis.set_ylabel("balanced accuracy (subject level)")
    axis.set_ylim(0, 1)
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def _predictions(settings: config.Settings, record: dict, frame: pd.DataFrame, images: np.ndarray,
                 class_names: list[str]) -> pd.DataFrame:
    """Predict the external rows with one model and write external/<model>/predictions.parquet."""
    probabilities = predict(record, images, class_names)
    predictions = evaluation.predictions_frame(frame, probabilities, class_names)
    write_parquet(settings.paths.root / "external" / record["model"] / "predictions.parquet", predictions)
    return predictions


def evaluate_external(settings: config.Settings, manifest: pd.DataFrame, class_names: list[str], data_label: str
                      ) -> dict:
    """Score every evaluated single-split model on the external set; write external/summary.csv and external.json.

    Returns the record (with `table` rows); when the run has no external set, the record says why and nothing else
    is written besides external.json.
    """
    folder = settings.paths.root / "external"
    source = external_source(settings)
    if source["kind"] is None:
        record = {"source": source, "rows": [], "skipped": source["reason"]}
        write_json(folder / "external.json", record)
        return record
    root = ensure_external_data(settings, source)
    frame, data = external_manifest(root, class_names, manifest)
    images = preprocessing.load_image_cache(frame, settings.profile.image_size, folder / "cache")
    rows = []
    for model in scored_models(settings):
        predictions = _predictions(settings, model, frame, images, class_names)
        site_a = pd.read_parquet(settings.paths.evaluation / model["model"] / "predictions.parquet")
        site_a = site_a[site_a["split"] == "test"]
        rows += [{"model": model["model"], **drop_row(site_a, predictions, class_names, level, settings.seed)}
                 for level in LEVELS]
    table = pd.DataFrame(rows)
    record = {"source": source, "data": data, "trained_on": data_label, "metric": METRIC, "rows": rows,
              "rule": DROP_RULE,
              "interval": "95% percentile intervals; site A and the external set bootstrapped independently over "
                          "their own subjects (within class); the drop's interval over replicate differences"}
    folder.mkdir(parents=True, exist_ok=True)
    if not table.empty:
        table.to_csv(folder / "summary.csv", index=False)
        figure = plot_drops(table, f"Site A test vs {source['label']} (trained on: {data_label})")
        figure.savefig(folder / "site_drop.png", dpi=110)
    write_json(folder / "external.json", record)
    return record
