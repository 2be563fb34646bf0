"""What every notebook after ingestion starts from (the checked manifest, its report, result labels) and what each
notebook tells the console when it ends (its headline)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alzlib import config, freshness
from alzlib.storage import read_json, read_parquet, write_json

SYNTHETIC_LABEL = "synthetic cohort"
# The parametrised training notebook of the extra systems (config.EXTRA_MODEL_NAMES): run_all.py runs it once per
# system that MODELS names, after 08; its name is outside the NN_ pattern, so the numbered sequence keeps its roles.
SYSTEM_NOTEBOOK = "08s_train_system.ipynb"


def load_manifest(settings: config.Settings) -> tuple[pd.DataFrame, dict]:
    """Return notebook 01's manifest and report; raise StaleManifest if made from other data, split or seed."""
    ingestion_report = freshness.read_checked_report(settings)
    return read_parquet(settings.paths.manifest), ingestion_report


def is_synthetic(ingestion_report: dict) -> bool:
    """True when the run's data is the embedded synthetic cohort."""
    return bool(ingestion_report.get("data_source", {}).get("synthetic"))


def data_label(ingestion_report: dict) -> str:
    """Return the label every title and table of this run carries ('synthetic cohort' or the data set)."""
    policy = ingestion_report.get("split_policy", "subject")
    source = ingestion_report.get("data_source", {})
    layout = source.get("layout", "data set")
    label = SYNTHETIC_LABEL if is_synthetic(ingestion_report) else f"{layout} ({policy} split)"
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
    """Return the recipe records of the trained models among `names` (None: the run's, settings.models) and a skip
    entry for each missing one."""
    found, missing = [], []
    for name in names or list(settings.models):
        model_path = settings.paths.models / f"{name}.keras"
        record_path = model_path.with_suffix(".json")
        if model_path.is_file() and record_path.is_file():
            found.append({**read_json(record_path), "model_path": str(model_path)})
        else:
            missing.append({"model": name, "reason": f"{model_path} or its recipe record does not exist "
                                                     f"(train it with {training_notebook(name)})"})
    return found, missing


# Models whose recipe starts from pretrained weights (ImageNet, or a ViT weights file the user names); the others
# (baseline_cnn, alexnet, convnext_scratch) train from scratch by design, as their originals did.
PRETRAINED_MODELS = ("resnet50", "resnet50_attention", "efficientnetb0", "resnet50_frozen", "vit")


def training_notebook(name: str) -> str:
    """Return what trains model `name`: its notebook, or the system notebook run with MODELS naming it."""
    if name in config.EXTRA_MODEL_NAMES:
        return f"run_all.py --models {name} (notebook {SYSTEM_NOTEBOOK} with MODEL={name!r})"
    return "notebooks 05-08"


def probability_function(model, spec: dict, batch_size: int = 32):
    """Return a function from uint8 images to class probabilities, preprocessing them as `spec` records."""
    from alzlib import evaluation

    def predict(images):
        return evaluation.predict_probabilities(model, evaluation.prepare_for_model(images, spec), batch_size)

    return predict


# ------------------------------------------------------------------ headlines: each notebook's news for the console
HEADLINES_FOLDER = "headlines"


def headline_path(paths: config.OutputPaths, notebook: str) -> Path:
    """Return where notebook `notebook` (e.g. '05_train_baseline_cnn') writes its headline."""
    return paths.root / HEADLINES_FOLDER / f"{notebook}.json"


def write_headline(settings: config.Settings, notebook: str, text: str, warnings: list[str] | None = None) -> Path:
    """Write the one-line headline and warnings the runner prints after `notebook` succeeds; return the path."""
    return write_json(headline_path(settings.paths, notebook), {"notebook": notebook, "headline": text,
                                                                "warnings": list(warnings or [])})


def _read_optional(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _interval(estimate: float, low: float | None, high: float | None) -> str:
    bounds = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{estimate:.2f}{bounds}"


def ingestion_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 01's headline (images, subjects, skips) and warnings (split, skips, grouping, leakage)."""
    report = read_json(settings.paths.ingestion_report)
    counts, policy = report["counts"], report.get("split_policy", "subject")
    warnings = list(report.get("split_warnings", []))
    if counts["skipped"]:
        warnings.append(f"{counts['skipped']} files skipped (reasons in {settings.paths.ingestion_report})")
    confidence = (report.get("subject_grouping") or {}).get("confidence") or {}
    if confidence.get("level") == "low":
        warnings.append(f"pseudo-subject grouping confidence low: {confidence.get('reason', '')}")
    audit = (report.get("leakage_audit") or {}).get(policy) or {}
    if audit.get("leaks"):
        warnings.append(f"leakage audit of the {policy} split trips on {', '.join(audit.get('tripped_by', []))}")
    calibration = _read_optional(settings.paths.cohort_calibration) if is_synthetic(report) else {}
    difficulty = (f"; cohort v{settings.profile.cohort_version}: global statistics "
                  f"{calibration['global']['balanced_accuracy']:.2f}, medial temporal window "
                  f"{calibration['focal']['balanced_accuracy']:.2f} subject balanced accuracy" if calibration else "")
    return (f"{counts['images']:,} images, {counts['subjects']:,} subjects, {counts['skipped']:,} skipped "
            f"({data_label(report)}){difficulty}", warnings)


def eda_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 02's headline (the shortcut audit's result) and warnings."""
    summary = read_json(settings.paths.eda / "summary.json")
    audit = summary.get("shortcut_audit", {})
    warnings = [audit["sentence"]] if audit.get("warning") else []
    if summary.get("subjects_with_several_labels"):
        warnings.append(f"{len(summary['subjects_with_several_labels'])} subjects carry more than one label")
    if summary.get("unreadable"):
        warnings.append(f"{len(summary['unreadable'])} images could not be read for the EDA")
    verdict = ("SHORTCUT found" if audit.get("warning") else "no shortcut") if audit.get("ran") else "audit not run"
    score = f" ({audit['score']:.2f}, chance {audit['chance']:.2f})" if audit.get("ran") else ""
    return f"{summary['images']:,} images, {summary['subjects']:,} subjects; shortcut audit: {verdict}{score}", warnings


def preprocessing_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 03's headline (the cache's size)."""
    summary = read_json(settings.paths.preprocessing / "summary.json")
    return (f"{summary['images']:,} images cached at {summary['image_size']} px ({summary['cache_megabytes']} MB)",
            [])


def features_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 04's headline (points mapped, feature source) and a warning when CNN features fell back."""
    summary = read_json(settings.paths.features / "summary.json")
    fallback = summary.get("embedding_source", {}).get("kind") == "fallback"
    warnings = ["no CNN embedding (no ImageNet weights): the maps use whitened-patch k-means features"
                ] if fallback else []
    return (f"{summary['points']:,} of {summary['images_available']:,} images mapped, {summary['subjects']:,} "
            f"subjects{'; patch features, no CNN embedding' if fallback else ''}", warnings)


def training_headline(settings: config.Settings, model: str) -> tuple[str, list[str]]:
    """Return a training notebook's headline (best validation balanced accuracy) and warnings from its record."""
    record = _read_optional(settings.paths.models / f"{model}.json")
    if not record:
        return f"{model} not trained", [f"{settings.paths.models / model}.json was not written"]
    best = record.get("best_validation") or {}
    warnings = [f"{model} stopped early: the loss became NaN"] if record.get("stopped_by_nan") else []
    weights = str(record.get("weights", ""))
    if model in PRETRAINED_MODELS and settings.weights != "none" and weights.startswith("random"):
        warnings.append(f"{model} trained from random weights, not pretrained ones (why: 'weights' in "
                        f"{settings.paths.models / model}.json)")
    score = best.get("val_balanced_accuracy")
    text = f"val balanced accuracy {score:.2f}" if score is not None else "no validation score"
    averaged = (record.get("weight_averaging") or {}).get("epochs_averaged")
    kept = (f"weight average of {_epoch_span(averaged)} of {record.get('epochs_run')}" if averaged else
            f"best epoch {record.get('best_epoch')} of {record.get('epochs_run')}")
    return f"{text} ({kept}, {record.get('training_seconds', 0):.0f} s training)", warnings


def _epoch_span(epochs: list[int]) -> str:
    """Return 'epoch 4', 'epochs 14-16' (consecutive) or 'epochs 2, 5, 9'."""
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    consecutive = list(epochs) == list(range(epochs[0], epochs[0] + len(epochs)))
    return f"epochs {epochs[0]}-{epochs[-1]}" if consecutive else f"epochs {', '.join(map(str, epochs))}"


def control_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return the random-label control's test score with its interval, and a warning where a control misbehaves.

    Warned: the run's own split scoring above chance (it leaks), and a leaky split's control that did not score
    above chance (the control failed to detect a known leak, so a clean result elsewhere means little). A leaky
    split's control above chance is the expected demonstration and is shown in the headline instead.
    """
    demonstration = _read_optional(settings.paths.evaluation / "leakage_demonstration.json")
    cells = [cell for cell in demonstration.get("cells", []) if cell.get("labels") == "random"]
    own = next((cell for cell in cells if cell.get("run_split")), None)
    if own is None:
        return "random-label control not run", ["leakage_demonstration.json has no random-label cell for this split"]
    warnings = [f"random-label control above chance under this run's {cell['split_policy']} split "
                f"({_interval(cell['balanced_accuracy'], cell['low'], cell['high'])}, chance {cell['chance']:.2f}): "
                "the split leaks" for cell in cells if cell.get("run_split") and cell.get("above_chance")]
    warnings += [f"random-label control did not detect the leak of the {cell['split_policy']} split "
                 f"({_interval(cell['balanced_accuracy'], cell['low'], cell['high'])}, chance {cell['chance']:.2f}): "
                 "a clean control on this run's split is weak evidence"
                 for cell in cells if cell.get("leaky_split") and not cell.get("above_chance")]
    leaky = [cell for cell in cells if cell.get("leaky_split") and not cell.get("run_split")]
    detected = "; ".join(f"{cell['split_policy']} split "
                         f"{_interval(cell['balanced_accuracy'], cell['low'], cell['high'])}" for cell in leaky)
    return (f"random-label control {_interval(own['balanced_accuracy'], own['low'], own['high'])} "
            f"(chance {own['chance']:.2f})" + (f", leaky {detected}" if detected else ""), warnings)


def crossval_headline(settings: config.Settings, level: str = "subject") -> tuple[str, list[str]]:
    """Return the cross-validated models' pooled out-of-fold balanced accuracy (or that the run has no folds)."""
    summary = _read_optional(settings.paths.crossval / "summary.json")
    if settings.folds < 2:
        return "single split only (FOLDS=1)", []
    rows = [row for row in summary.get("rows", []) if row["level"] == level]
    warnings = [f"cross-validation: {entry['model']} {entry['reason']}" for entry in summary.get("skipped", [])
                if "stale" in entry.get("reason", "")]
    warnings += [f"cross-validation: {note}" for notes in (summary.get("notes") or {}).values() for note in notes]
    if not rows:
        return f"{settings.folds}-fold cross-validation not summarised", warnings
    scores = ", ".join(f"{row['model']} " + _interval(*(row[f"balanced_accuracy_pooled{end}"]
                                                          for end in ("", "_low", "_high"))) for row in rows)
    text = f"{settings.folds}-fold CV, {level}-level pooled balanced accuracy: {scores}"
    return text, list(dict.fromkeys(warnings))


def baseline_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 05's headline: the baseline CNN's validation score, the folds' and the control's."""
    training, training_warnings = training_headline(settings, "baseline_cnn")
    folds, fold_warnings = crossval_headline(settings)
    control, control_warnings = control_headline(settings)
    return f"{training}; {folds}; {control}", training_warnings + fold_warnings + control_warnings


def evaluation_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 09's headline (best test score, the control's verdict) and warnings."""
    summary = read_json(settings.paths.evaluation / "summary.json")
    rows = [row for row in summary["rows"] if row["level"] == "slice" and row["model"] != config.CONTROL_MODEL_NAME]
    warnings = [f"{entry['model']} not evaluated" for entry in summary.get("missing", [])]
    control = summary.get("random_label_control", {})
    if "verdict" in control:
        verdict = control["verdict"].split(":")[0]
        score = _interval(control["estimate"], control["low"], control["high"])
        control_text = f"random-label control {score}: {verdict}"
        if control.get("tripped") or not control.get("conclusive", True):
            warnings.append(f"random-label control {control['verdict']}")
    else:
        control_text = "random-label control not checked"
        warnings.append(f"random-label control not checked: {control.get('skipped', 'no result')}")
    if not rows:
        return f"no model evaluated; {control_text}", warnings
    best = max(rows, key=lambda row: row["balanced_accuracy"])
    score = _interval(best["balanced_accuracy"], best["balanced_accuracy_low"], best["balanced_accuracy_high"])
    folds, fold_warnings = crossval_headline(settings)
    external_text, external_warnings = external_headline(settings)
    return (f"best test balanced accuracy {best['model']} {score}; {folds}; {control_text}{external_text}",
            warnings + fold_warnings + external_warnings)


def external_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return '; <external set>: <model> drops 0.12 [...]' for the model best at site A (subject level), and
    warnings (copies of the training data in the external set); ('', []) without an external test."""
    record = _read_optional(settings.paths.root / "external" / "external.json")
    rows = [row for row in record.get("rows", []) if row["level"] == "subject"]
    if not rows:
        return "", []
    best = max(rows, key=lambda row: row["site_a"])
    drop = _interval(best["drop"], best["drop_low"], best["drop_high"])
    data = record["data"]
    warnings = list(data.get("warnings", []))
    if data.get("copies_left_out"):
        warnings.append(f"{len(data['copies_left_out'])} external image(s) left out as copies of the training data "
                        f"(external/external.json)")
    return (f"; {record['source']['label']}: {best['model']} subject balanced accuracy {best['external']:.3f}, "
            f"drop from site A {drop} ({best['verdict']})", warnings)


def gradcam_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 10's headline: the randomisation check (lower is better) and localisation against the prior."""
    table = pd.read_csv(settings.paths.gradcam / "summary.csv")
    scores = ", ".join(f"{row.model} {row.randomisation_mean_signed_spearman:.2f}" for row in table.itertuples())
    warnings = [f"{row.model}: cascading randomisation fails (the map survives re-initialising down to "
                f"{row.cascade_required_layer})" for row in table.itertuples()
                if getattr(row, "cascade_verdict", "") == "fail"]
    verdicts = ", ".join(f"{row.model} {row.localisation_verdict_vs_prior}" for row in table.itertuples()
                         if isinstance(getattr(row, "localisation_verdict_vs_prior", None), str))
    focal = ", ".join(f"{row.model} {row.medial_temporal_auroc_trained:.2f} ({row.medial_temporal_verdict_vs_prior})"
                      for row in table.itertuples()
                      if isinstance(getattr(row, "medial_temporal_verdict_vs_prior", None), str))
    return (f"Grad-CAM of {len(table)} models; trained vs re-initialised maps, signed Spearman (lower is better): "
            f"{scores}" + (f"; localisation vs class prior: {verdicts}" if verdicts else "")
            + (f"; medial temporal AUROC (vs its class prior): {focal}" if focal else ""), warnings)


def comparison_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 11's headline: the subject-level paired differences the data support, cross-validated (where
    the run has folds) and on the single split."""
    record = read_json(settings.paths.comparison / "comparison.json")
    warnings = [f"{entry['model']} not compared" for entry in record.get("skipped", [])]
    parts = []
    for key, label in (("paired_differences_crossval", "cross-validated"), ("paired_differences", "single split")):
        rows = [row for row in (record.get(key) or {}).get("rows") or [] if row.get("level") == "subject"]
        if rows:
            supported = [row["sentence"] for row in rows if row.get("supported")]
            news = "; ".join(supported) if supported else "no difference supported by the data"
            parts.append(f"{label}, {len(rows)} model pair{'s' if len(rows) > 1 else ''}: {news}")
    if not parts:
        return "no paired differences", [*warnings, "comparison.json has no paired differences with rows"]
    return "subject level: " + " | ".join(parts), warnings


def robustness_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 12's headline: the model with the lowest mean corruption error, with its interval."""
    table = pd.read_csv(settings.paths.robustness / "mce_summary.csv").dropna(subset=["mce"])
    if table.empty:
        return "no corruption error defined", ["robustness: every model's clean or corrupted error was undefined"]
    best = table.loc[table["mce"].idxmin()]
    reference = best.get("reference_model", "baseline_cnn")
    bounds = (f" [{best['mce_low']:.0f}, {best['mce_high']:.0f}]"
              if pd.notna(best.get("mce_low")) and pd.notna(best.get("mce_high")) else "")
    partial = [f"{row.model} {row.relative_corruptions_used} of {row.corruptions_used}" for row in table.itertuples()
               if "relative_corruptions_used" in table and row.relative_corruptions_used < row.corruptions_used]
    warnings = [f"robustness: relative mCE covers only some corruptions ({', '.join(partial)}): the reference's rise "
                f"was below the floor for the others"] if partial else []
    return (f"most robust {best['model']} (mCE {best['mce']:.0f}{bounds} vs {reference} 100) of {len(table)} "
            f"models", warnings)


def report_headline(settings: config.Settings) -> tuple[str, list[str]]:
    """Return notebook 13's headline: where the report is and its size."""
    report = settings.paths.report
    return f"{report} ({report.stat().st_size / 1e6:.1f} MB)", []
