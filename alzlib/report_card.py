"""The report's model card (Mitchell et al. 2019) and CLAIM checklist (Mongan et al. 2020), filled from the run's files.

Kept apart from `report.py`: these are long fixed texts with a few run facts filled in, not rendering code.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alzlib.config import BASELINE_MODEL_NAMES, CONTROL_MODEL_NAME
from alzlib.report_checks import read_json
from alzlib.report_headline import ordered_models, read_csv


def data_facts(root: Path) -> dict:
    """Return what the card says about the data: label, classes, counts per split, split policy."""
    report = read_json(root / "ingestion_report.json")
    report = report if isinstance(report, dict) else {}
    source = report.get("data_source") or {}
    synthetic = source.get("synthetic") if isinstance(source, dict) else None
    facts = {"synthetic": synthetic, "label": ("synthetic cohort" if synthetic else
                                               "real images" if synthetic is False else "unknown source"),
             "layout": source.get("layout", "unknown") if isinstance(source, dict) else "unknown",
             "classes": report.get("classes") or [], "task": report.get("task", "?"),
             "split": report.get("split_policy", "?"), "fractions": report.get("split_fractions"),
             "images": (report.get("counts") or {}).get("images"),
             "subjects": (report.get("counts") or {}).get("subjects"), "per_split": {}}
    facts["per_split"] = _split_counts(root)
    return facts


def _split_counts(root: Path) -> dict[str, tuple[int, int]]:
    """Return (images, subjects) per split from the manifest; empty when it is missing or has no subject column."""
    try:
        manifest = pd.read_parquet(root / "manifest.parquet", columns=["split", "subject_id"])
    except (OSError, ValueError, KeyError, ImportError):
        return {}
    grouped = manifest.groupby("split")["subject_id"]
    return {split: (int(grouped.size()[split]), int(grouped.nunique()[split])) for split in grouped.size().index}


def _split_text(facts: dict, split: str) -> str:
    """Return '120 images of 30 subjects' for one split, or 'unknown'."""
    if split not in facts["per_split"]:
        return "unknown (manifest.parquet missing)"
    images, subjects = facts["per_split"][split]
    return f"{images} images of {subjects} subjects"


def _models_text(root: Path, selection: list | None = None) -> str:
    """Return the models this run trained (those of `selection`, the run's MODELS, where known), each with the epochs
    its recipe record says it ran."""
    names = ordered_models([path.stem for path in (root / "models").glob("*.json")])
    if isinstance(selection, list):
        names = [name for name in names if name in {*selection, *BASELINE_MODEL_NAMES, CONTROL_MODEL_NAME}]
    parts = []
    for name in names:
        record = read_json(root / "models" / f"{name}.json")
        epochs = record.get("epochs_run") if isinstance(record, dict) else None
        parts.append(f"{name} ({epochs} epoch{'' if epochs == 1 else 's'})" if isinstance(epochs, int) else name)
    return ", ".join(parts) if parts else "none recorded (models/*.json missing)"


def _run_settings(root: Path) -> dict:
    """Return the run's settings and profile from run_metadata.json (empty when missing)."""
    metadata = read_json(root / "run_metadata.json")
    metadata = metadata if isinstance(metadata, dict) else {}
    return {**(metadata.get("profile") or {}), **(metadata.get("settings") or {}),
            "git_commit": metadata.get("git_commit", "unknown")}


def _caveats(facts: dict, root: Path) -> str:
    """Return the caveats a reader must keep in mind for this run."""
    items = ["synthetic images made by a program: results show the pipeline works, nothing about patients"
             if facts["synthetic"] else "real images from one data set" if facts["synthetic"] is False else
             "data source unknown"]
    items.append("one site and one acquisition protocol: no evidence about other scanners"
                 if not external_tables(root) else "an external site was scored (see below)")
    items += ["single 2D slices of 3D scans", "labels are the data set's classes, not a verified diagnosis"]
    test = facts["per_split"].get("test")
    if test and test[1] < 30:
        items.append(f"only {test[1]} test subjects: intervals are wide")
    return "; ".join(items) + "."


def model_card(root: Path) -> list[tuple[str, str]]:
    """Return the model card's fields, in the order of Mitchell et al. (2019), filled from the run folder."""
    facts, settings = data_facts(root), _run_settings(root)
    classes = ", ".join(facts["classes"]) or "unknown"
    return [
        ("Model details", "Image classifiers of Alzheimer's stage from one 2D MRI slice: "
                          f"{_models_text(root, settings.get('models'))} "
                          f"(Keras; linear_pixels in scikit-learn). Profile {settings.get('name', '?')}: "
                          f"{settings.get('image_size', '?')} px, seed "
                          f"{settings.get('seed', '?')}, commit {str(settings.get('git_commit'))[:12]}."),
        ("Intended use", "Research and teaching only: to study how slice classifiers behave under subject-level "
                         "splits, leakage controls, calibration and explanation checks."),
        ("Out-of-scope uses", "Any clinical use (diagnosis, screening, triage, treatment decisions), any statement "
                              "about an individual person, and any use on scans from a site or protocol that was "
                              "not evaluated here."),
        ("Factors", f"Task {facts['task']} over {classes}. No age, sex, scanner or site is recorded, so no "
                    "subgroup could be analysed."),
        ("Metrics", "Balanced accuracy (headline) per slice and per subject (soft vote of its slices), macro F1, "
                    "macro AUC, quadratic kappa, expected calibration error before and after temperature scaling; "
                    "95% subject-bootstrap intervals; paired differences with Holm correction."),
        ("Training data", f"{facts['label']} ({facts['layout']}): {facts['images'] or '?'} images of "
                          f"{facts['subjects'] or '?'} subjects; {facts['split']}-level split; train "
                          f"{_split_text(facts, 'train')}, validation {_split_text(facts, 'val')}."),
        ("Evaluation data", f"Held-out test split: {_split_text(facts, 'test')}, no subject shared with training"
                            + (" (audited)" if facts["split"] == "subject" else "") + "."
                            + _crossval_text(root)),
        ("Ethical considerations", "A wrong prediction used clinically could delay or misdirect care; labels stand "
                                   "in for a diagnosis. Real scans must be used under their licence and "
                                   "de-identified; synthetic images contain no patient."),
        ("Caveats and recommendations", _caveats(facts, root)),
    ]


def _crossval_text(root: Path) -> str:
    """Return a sentence on cross-validation when the run did it."""
    summary = read_json(root / "crossval" / "summary.json")
    if not isinstance(summary, dict) or (summary.get("folds") or 1) < 2:
        return ""
    return (f" Also {summary['folds']}-fold subject-level cross-validation of "
            f"{', '.join(summary.get('models') or [])} over every subject.")


# CLAIM items (Mongan, Moy, Kahn 2020, Radiology: AI 2:e200029): number, short text, the report section that
# answers it for a run of this pipeline ("" where the run cannot answer it), and a note. Stated honestly: most data
# and ground-truth items are properties of the data set, which this pipeline does not know.
CLAIM_ITEMS = (
    (1, "AI methodology identified, with the category of technology", "model-card", ""),
    (2, "Structured summary of design, methods, results, conclusions", "top", "first screen"),
    (3, "Scientific and clinical background; intended use and clinical role", "model-card",
     "intended use: research only, no clinical role"),
    (4, "Study objectives and hypotheses", "statistics", "do the CNNs beat each other and the linear baseline?"),
    (5, "Prospective or retrospective study", "model-card", "retrospective: images already on disk"),
    (6, "Study goal (model creation, exploratory, feasibility...)", "model-card", "exploratory model creation"),
    (7, "Data sources", "data", ""),
    (8, "Eligibility criteria: how, where and when participants were identified", "",
     "every readable image in the folder is used; the data set's own criteria are unknown here"),
    (9, "Data pre-processing steps", "appendix", "notebook 03_preprocessing"),
    (10, "Selection of data subsets", "data", "subject split; transfer models may train on a thinned subset"),
    (11, "Definitions of data elements (common data elements)", "", ""),
    (12, "De-identification methods", "", "relies on the data set; synthetic images have no patient"),
    (13, "How missing data were handled", "data", "unreadable files skipped and listed with a reason"),
    (14, "Definition of ground truth (reference standard)", "model-card", "the data set's class folders"),
    (15, "Rationale for the reference standard", "", ""),
    (16, "Source of ground-truth annotations; annotators' qualifications", "", ""),
    (17, "Annotation tools", "", "no annotation is done here"),
    (18, "Inter- and intrarater variability", "", ""),
    (19, "Intended sample size and how it was determined", "", "the profile sets the size; no power calculation"),
    (20, "How data were assigned to partitions; proportions", "data", "70/15/15 by subject, stratified, seeded"),
    (21, "Level at which partitions are disjoint", "leakage", "subject level, audited"),
    (22, "Detailed model description", "training", "and notebooks 05-08"),
    (23, "Software libraries, frameworks and packages", "run", ""),
    (24, "Initialisation of model parameters", "training", "ImageNet or random, per model"),
    (25, "Training details: augmentation, hyperparameters, number of models", "training", ""),
    (26, "Method of selecting the final model", "training", "best validation epoch"),
    (27, "Ensembling techniques", "", "not applicable: no ensemble"),
    (28, "Metrics of model performance", "evaluation", ""),
    (29, "Statistical significance and uncertainty", "statistics", "bootstrap intervals, Holm-corrected pairs"),
    (30, "Robustness or sensitivity analysis", "robustness", ""),
    (31, "Explainability methods and how they were validated", "gradcam", "randomisation and localisation checks"),
    (32, "Validation on external data", "external", ""),
    (33, "Flow of participants or cases", "data", "counts per split; no diagram"),
    (34, "Demographic and clinical characteristics per partition", "", "not recorded in the data"),
    (35, "Performance metrics on all data partitions", "evaluation", "test split (validation used for selection)"),
    (36, "Estimates of diagnostic accuracy and their precision", "top", "95% intervals"),
    (37, "Failure analysis of incorrectly classified cases", "evaluation", "confusion matrices only"),
    (38, "Limitations: bias, statistical uncertainty, generalisability", "limitations", ""),
    (39, "Implications for practice", "model-card", "none: not for clinical use"),
    (40, "Registration number and registry", "", "not applicable"),
    (41, "Where the full protocol can be accessed", "run", "git commit and README"),
    (42, "Sources of funding and role of funders", "", ""),
)


def claim_checklist(section_ids: set[str]) -> list[dict]:
    """Return the CLAIM items with the section of this report that answers each, or 'not addressed'."""
    rows = []
    for number, item, section, note in CLAIM_ITEMS:
        answered = section if section in section_ids else ""
        rows.append({"number": number, "item": item, "section": answered,
                     "answer": "answered" if answered else "not addressed", "note": note})
    return rows


def external_tables(root: Path) -> list[Path]:
    """Return the external test set's summary table (external/summary.csv, alzlib.external) where it was written."""
    path = root / "external" / "summary.csv"
    return [path] if path.is_file() and read_csv(path) is not None else []

