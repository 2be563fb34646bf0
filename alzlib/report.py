"""The final report: one self-contained HTML file built only from the files earlier stages wrote.

The page is rendered from the jinja2 template `templates/report.html.j2`; this module gathers what it shows. The first
screen holds the headline table, the verdict (`report_headline`) and the checks panel (`report_checks`); then the
model card, curated sections (figures first, one short table each), and a collapsed appendix with the CLAIM checklist
(`report_card`) and links to every raw file.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from alzlib import config, report_card, report_checks, report_headline, storage

IMAGE_TYPES = {".png": (b"\x89PNG\r\n\x1a\n", "image/png"), ".jpg": (b"\xff\xd8\xff", "image/jpeg"),
               ".jpeg": (b"\xff\xd8\xff", "image/jpeg")}
MAX_TABLE_ROWS = 40
RAW_SUFFIXES = (".csv", ".json")
# An absolute path inside a text: a slash not preceded by a word character, a dot, a colon or another slash (so URLs
# and relative paths stay), then at least one folder.
ABSOLUTE_PATH = re.compile(r"(?<![\w./:~-])/(?:[^\s/\"'<>()\[\]]+/)+[^\s/\"'<>()\[\],;]*")
DATA_URI = re.compile(r"(data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+)")
# The lab template loads require.js, MathJax and Mermaid from a CDN; the pages must open offline like the report.
OFFLINE_NOTEBOOK_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


@dataclass(frozen=True)
class Figure:
    """One embedded image: its caption, data URI and path relative to the run folder."""

    caption: str
    uri: str
    source: str


@dataclass
class Section:
    """One curated section: a caption saying what to look at, figures, one short table, notes, collapsed extras."""

    anchor: str
    title: str
    caption: str = ""
    galleries: list[tuple[list[Figure], int]] = field(default_factory=list)
    table: Markup | None = None
    notes: list[str] = field(default_factory=list)
    more: list[tuple[str, Markup]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def show(self, figures: list[Figure], columns: int) -> None:
        """Add a grid of figures, `columns` wide on a desktop screen (one column on a phone)."""
        if figures:
            self.galleries.append((figures, columns))


class _Context:
    """What one build has read so far, and which inputs were missing or unreadable."""

    def __init__(self, paths: config.OutputPaths):
        self.root = Path(paths.root)
        self.problems: dict[str, str] = {}
        self._cache: dict[Path, object] = {}

    def relative(self, path: Path) -> str:
        """Return `path` relative to the run folder, as shown in the report."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).name

    def note(self, path: Path | str, reason: str = "missing") -> str:
        """Record a missing or unreadable input and return the sentence shown where its content would be."""
        name = path if isinstance(path, str) else self.relative(path)
        self.problems.setdefault(name, reason)
        if self.problems[name] == "missing":
            return f"not run: {name} missing"
        return f"could not read {name}: {self.problems[name]}"

    def load(self, path: Path, reader: Callable[[Path], object], required: bool = True):
        """Read `path` once with `reader`; None (and, when required, a recorded problem) if missing or unreadable."""
        if path in self._cache:
            return self._cache[path]
        value = None
        if path.is_file():
            try:
                value = reader(path)
            except (OSError, ValueError, KeyError, ImportError) as error:
                self.note(path, f"{type(error).__name__}: {error}")
        elif required:
            self.note(path)
        self._cache[path] = value
        return value

    def json(self, path: Path, required: bool = True):
        """Return the parsed JSON file, or None when missing or unreadable."""
        return self.load(path, lambda target: json.loads(target.read_text(encoding="utf-8")), required)

    def csv(self, path: Path, required: bool = True) -> pd.DataFrame | None:
        """Return the CSV file as a DataFrame, or None when missing or unreadable."""
        return self.load(path, pd.read_csv, required)

    def dict_file(self, name: str, required: bool = True) -> dict:
        """Return a JSON object file under the run folder; an empty dict when missing, unreadable or not an object."""
        value = self.json(self.root / name, required)
        if value is not None and not isinstance(value, dict):
            self.note(self.root / name, f"expected a JSON object, found {type(value).__name__}")
        return value if isinstance(value, dict) else {}


# --- small helpers ---------------------------------------------------------------------------------------------------

def table_html(frame: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS) -> Markup:
    """Render a DataFrame as an escaped HTML table inside its own horizontal scroll box."""
    shown = frame.head(max_rows).map(lambda value: json.dumps(value) if isinstance(value, (dict, list)) else value)
    table = shown.to_html(index=False, escape=True, border=0, na_rep="—", classes="data",
                          float_format=lambda number: f"{number:.3g}")
    hidden = len(frame) - max_rows
    more = f'<p class="muted">{hidden} more rows in the linked file.</p>' if hidden > 0 else ""
    return Markup(f'<div class="scroll">{table}</div>{more}')


def pairs_table(pairs: dict) -> Markup:
    """Render a flat dict as a two-column table (nested values as compact JSON text, never nested tables)."""
    return table_html(pd.DataFrame({"field": list(pairs), "value": [_flat_value(value) for value in pairs.values()]}))


def _flat_value(value) -> str:
    """Format a value on one line: floats to 4 significant digits, containers as compact JSON, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _image(context: _Context, path: Path, caption: str) -> Figure | None:
    """Return an image file as an embedded Figure; None (with a recorded problem) when missing or not an image."""
    signature, mime = IMAGE_TYPES[path.suffix.lower()]
    data = context.load(path, lambda target: target.read_bytes())
    if data is None:
        return None
    if not data.startswith(signature):
        context.note(path, f"not a valid {path.suffix.lstrip('.').upper()} file")
        return None
    return Figure(caption, f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", context.relative(path))


def _figures(context: _Context, paths: list[tuple[Path, str]]) -> list[Figure]:
    """Return the Figures of (path, caption) pairs that could be read."""
    return [figure for path, caption in paths if (figure := _image(context, path, caption)) is not None]


def _show(context: _Context, section: Section, paths: list[tuple[Path, str]], columns: int) -> None:
    """Add the readable figures of (path, caption) pairs to `section`; note the unreadable ones in place."""
    section.show(_figures(context, paths), columns)
    section.missing += [context.note(path) for path, _ in paths
                        if path.is_file() and context.problems.get(context.relative(path), "missing") != "missing"]


def _gallery(figures: list[Figure], columns: int = 3) -> Markup:
    """Return a collapsed-block body: a grid of figures."""
    cells = "".join(f'<figure><img src="{figure.uri}" alt="{Markup.escape(figure.caption)}"><figcaption>'
                    f"{Markup.escape(figure.caption)}</figcaption></figure>" for figure in figures)
    return Markup(f'<div class="gallery cols-{columns}">{cells}</div>')


def _models(context: _Context) -> list[str]:
    """Return the models with evaluation results, in headline order: those of the run's selection (MODELS, in
    run_metadata.json), its baselines and control; a model left in the folder by a run with other MODELS is not
    this run's result."""
    folder = context.root / "evaluation"
    found = [path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("external")] \
        if folder.is_dir() else []
    records = [path.stem for path in (context.root / "models").glob("*.json")]
    names = [*found, *records]
    selection = (context.dict_file("run_metadata.json").get("settings") or {}).get("models")
    if isinstance(selection, list):
        kept = {*selection, *config.BASELINE_MODEL_NAMES, config.CONTROL_MODEL_NAME}
        names = [name for name in names if name in kept]
    return report_headline.ordered_models(names)


def _short_weights(text: str | None) -> str:
    """Shorten a recipe record's weights text: 'ImageNet', 'random (ImageNet unavailable)' or 'random'."""
    text = str(text or "")
    if text.startswith("imagenet"):
        return "ImageNet"
    return "random (ImageNet unavailable)" if "unavailable" in text else "random" if text else "—"


def _records(context: _Context) -> dict[str, dict]:
    """Return the recipe record of every model that has one."""
    found = {}
    for name in _models(context):
        record = context.json(context.root / "models" / f"{name}.json", required=name in config.MODEL_NAMES)
        if isinstance(record, dict):
            found[name] = record
    return found


# --- first screen ----------------------------------------------------------------------------------------------------

def _is_synthetic(context: _Context) -> bool | None:
    """Return whether the data are synthetic, from the ingestion report or run metadata; None when unknown."""
    source = context.dict_file("ingestion_report.json").get("data_source")
    if isinstance(source, dict) and "synthetic" in source:
        return bool(source["synthetic"])
    settings = _metadata(context)[0].get("settings")
    return bool(settings["synthetic"]) if isinstance(settings, dict) and "synthetic" in settings else None


def _data_line(context: _Context) -> dict:
    """Return the first screen's data line: synthetic or real, size, split policy, and a CSS class."""
    synthetic = _is_synthetic(context)
    ingestion = context.dict_file("ingestion_report.json")
    counts = ingestion.get("counts") or {}
    size = f"{counts.get('images', '?')} images of {counts.get('subjects', '?')} subjects, " \
           f"{len(ingestion.get('classes') or []) or '?'} classes" if counts else "size unknown"
    kind = ("SYNTHETIC data (generated images, no patient)" if synthetic else
            "REAL images" if synthetic is False else "Data source UNKNOWN")
    policy = ingestion.get("split_policy") or context.dict_file("run_metadata.json").get("split_policy") or "?"
    fractions = ingestion.get("split_fractions")
    split = f"{policy}-level split" + (f" {'/'.join(str(round(100 * part)) for part in fractions)}"
                                       if isinstance(fractions, list) else "")
    leaky = policy in config.LEAKY_SPLIT_POLICIES
    return {"kind": kind, "size": size, "split": split + (" — LEAKS BY DESIGN: every number is inflated" if leaky
                                                           else ""),
            "css": "synthetic" if synthetic else "unknown" if synthetic is None or leaky else "real"}


def _headline(context: _Context) -> dict:
    """Return the headline table, the verdict and the control's reading."""
    table = report_headline.headline_table(context.root)
    if table.empty:
        context.note(context.root / "evaluation" / "summary.csv")
    return {"table": table_html(table) if not table.empty else None,
            "verdict": report_headline.verdict(context.root),
            "missing": "not run: evaluation/summary.csv missing" if table.empty else ""}


# --- curated sections ------------------------------------------------------------------------------------------------

def _split_table(context: _Context) -> Markup | None:
    """Images (subjects) per split and class from the manifest."""
    manifest = context.load(context.root / "manifest.parquet", pd.read_parquet)
    if manifest is None or not {"split", "label", "subject_id"} <= set(manifest.columns):
        return None
    images = pd.crosstab(manifest["label"], manifest["split"])
    subjects = pd.crosstab(manifest["label"], manifest["split"], values=manifest["subject_id"], aggfunc="nunique")
    cells = images.astype(str) + " (" + subjects.fillna(0).astype(int).astype(str) + ")"
    ordered = [split for split in config.SPLITS if split in cells.columns]
    return table_html(cells[ordered].rename_axis(columns=None).reset_index().rename(columns={"label": "class"}))


def _data_section(context: _Context) -> Section:
    """Class balance and sample images, images (subjects) per split, the shortcut audit, skipped files."""
    eda, ingestion = context.root / "eda", context.dict_file("ingestion_report.json")
    section = Section("data", "Data and splits", "Every class should appear in every split with several subjects; "
                      "the sample grid should look like brain slices, and the shortcut audit should find nothing.",
                      table=_split_table(context))
    _show(context, section, [(eda / "class_distribution.png", "Images and subjects per class"),
                             (eda / "sample_grid.png", "Sample slices per class")], 2)
    audit = context.dict_file("eda/shortcut_audit.json")
    section.notes += [audit["sentence"]] if audit.get("sentence") else []
    section.notes += [f"Split warning: {warning}" for warning in ingestion.get("split_warnings") or []]
    skipped = ingestion.get("skipped") or []
    section.notes.append(f"Skipped files: {len(skipped)}." if ingestion else context.note("ingestion_report.json"))
    if skipped:
        section.more.append((f"Skipped files ({len(skipped)})", table_html(pd.DataFrame(skipped))))
    extra = _figures(context, [(eda / "slices_per_subject.png", "Slices per subject"),
                               (eda / "intensity_histograms.png", "Intensity histograms per class"),
                               (context.root / "features" / "map_pixels.png", "Feature map: pixels"),
                               (context.root / "features" / "map_patch_kmeans.png", "Feature map: patch k-means")])
    section.more += [("More data figures (slices per subject, intensities, feature maps)", _gallery(extra, 2))] \
        if extra else []
    return section


def _training_table(records: dict[str, dict]) -> Markup | None:
    """One row per model: weights, epochs, best epoch, training time, parameters, training images."""
    if not records:
        return None
    rows = [{"model": name, "weights": _short_weights(record.get("weights")),
             "epochs run": record.get("epochs_run"), "best epoch": record.get("best_epoch"),
             "training s": record.get("training_seconds", record.get("training_time_seconds")),
             "trainable parameters": record.get("trainable_parameters", record.get("parameters")),
             "train images": record.get("train_images")} for name, record in records.items()]
    return table_html(pd.DataFrame(rows))


def _search_text(search) -> str:
    """Return a recipe's hyperparameter search in one line ('' for a system without one)."""
    if isinstance(search, dict) and isinstance(search.get("best"), dict):
        text = (f"best {', '.join(f'{key} {value}' for key, value in search['best'].items())} (val balanced "
                f"accuracy {search.get('score', float('nan')):.3f}, {len(search.get('trials', []))} trials)")
        return text if search.get("informative", True) else f"{text}; {search.get('decision', 'not used')}"
    return str(search or "")


def _systems_table(records: dict[str, dict]) -> Markup | None:
    """One row per published system trained (alzlib.systems): the work it reproduces, its differences, its search."""
    rows = [{"model": name, "reproduces": recipe.get("citation", ""),
             "differences from the original": "; ".join(recipe.get("differences", [])),
             "hyperparameter search": _search_text(recipe.get("hyperparameter_search"))}
            for name, record in records.items() if record.get("system") and isinstance(
                recipe := record.get("recipe"), dict)]
    return table_html(pd.DataFrame(rows)) if rows else None


def _training_section(context: _Context) -> Section:
    """Training curves of each deep model and the recipe summary table."""
    records = _records(context)
    section = Section("training", "Training", "Validation loss should level off; a validation loss that rises "
                      "while training loss falls is overfitting. The table shows which weights each model started "
                      "from.", table=_training_table(records))
    curves = [(context.root / "training" / name / "curves.png", f"{name}: loss and balanced accuracy per epoch")
              for name, record in records.items() if record.get("framework") != "scikit-learn"
              and (context.root / "training" / name / "curves.png").is_file()]
    _show(context, section, curves, 2)
    systems = _systems_table(records)
    if systems is not None:
        section.more.append(("Published systems: what each reproduces and where this run differs", systems))
    missing = [name for name in records if name in config.MODEL_NAMES
               and not (context.root / "training" / name / "curves.png").is_file()]
    section.missing += [context.note(context.root / "training" / name / "curves.png") for name in missing]
    return section


METRIC_COLUMNS = {"balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "macro_auc": "macro AUC",
                  "quadratic_kappa": "quadratic kappa", "ece": "ECE", "ece_after_temperature": "ECE after T",
                  "temperature": "temperature"}


def _metrics_table(context: _Context) -> Markup | None:
    """Test metrics per model at slice level (intervals are in the headline table and the linked CSV)."""
    summary = context.csv(context.root / "evaluation" / "summary.csv")
    if summary is None or "model" not in summary:
        return None
    rows = summary[(summary.get("split", "test") == "test") & (summary["level"] == "slice")]
    columns = [column for column in METRIC_COLUMNS if column in rows.columns]
    return table_html(rows[["model", *columns]].rename(columns=METRIC_COLUMNS).round(3))


def _evaluation_section(context: _Context) -> Section:
    """Confusion matrices and reliability diagrams of every model, then the test metrics table."""
    section = Section("evaluation", "Test performance and calibration", "Each confusion matrix should be heaviest "
                      "on its diagonal (subject level: one soft vote per person); in each reliability diagram, bars "
                      "close to the diagonal mean the stated probabilities can be taken at face value.",
                      table=_metrics_table(context))
    folder = context.root / "evaluation"
    models = [name for name in _models(context) if (folder / name).is_dir()]
    confusion = [(folder / name / "confusion_test_subject.png", f"{name}: confusion, test subjects")
                 for name in models]
    reliability = [(folder / name / "reliability_test.png", f"{name}: reliability, test slices") for name in models]
    _show(context, section, confusion, 3)
    _show(context, section, reliability, 5)
    section.missing += [context.note(path) for path, _ in (*confusion, *reliability) if not path.is_file()]
    roc = _figures(context, [(folder / name / "roc_test.png", f"{name}: ROC, test") for name in models])
    section.more += [("ROC curves", _gallery(roc, 4))] if roc else []
    return section


PAIRED_COLUMNS = ("model_a", "model_b", "level", "subjects", "difference", "low", "high", "p_value_holm", "supported")


def baseline_verdicts(frame: pd.DataFrame) -> list[str]:
    """Return one plain sentence per deep model paired with the linear baseline: does it beat it beyond chance?"""
    from alzlib import linear

    sentences = []
    for row in frame.itertuples(index=False):
        if linear.NAME not in (row.model_a, row.model_b) or row.model_a == row.model_b:
            continue
        deep, sign = (row.model_b, -1) if row.model_a == linear.NAME else (row.model_a, 1)
        difference, low, high = (sign * value for value in (row.difference, row.low, row.high))
        low, high = min(low, high), max(low, high)
        verdict, reading = (("beats", "") if row.supported and difference > 0 else
                            ("is WORSE than", " — the data support that the linear model on pixels does better")
                            if row.supported else
                            ("does NOT beat", " — not more than its interval, so the data do not show that the CNN "
                                              "learned more than a linear model on pixels"))
        sentences.append(f"{deep} {verdict} {linear.NAME} at {row.level} level: difference {difference:+.3f} "
                         f"[{low:+.3f}, {high:+.3f}]{reading}")
    return sentences


def _crossval_note(context: _Context) -> tuple[str, Markup | None]:
    """Return a sentence on cross-validation and its subject-level table (None without cross-validation)."""
    from alzlib import crossval

    summary = context.json(context.root / "crossval" / "summary.json", required=False)
    if not isinstance(summary, dict):
        return "", None
    if summary.get("folds", 1) < 2:
        return f"Cross-validation: {summary.get('note', 'not run')}", None
    models = ", ".join(summary.get("models") or []) or "no model"
    table = crossval.summary_table(summary, "subject")
    notes = [note for entries in (summary.get("notes") or {}).values() for note in entries]
    return (f"{summary['folds']}-fold subject-level cross-validation (StratifiedGroupKFold over subjects) of "
            f"{models}; the other models are scored on the single split only."
            + (f" Notes: {'; '.join(dict.fromkeys(notes))}." if notes else ""),
            table_html(table) if len(table) else None)


def _statistics_section(context: _Context) -> Section:
    """Paired differences (cross-validated first) with the verdicts against the linear baseline."""
    frame, source = report_headline.paired_differences(context.root)
    section = Section("statistics", "Can the data tell the models apart?", "A difference counts only when its "
                      "Holm-adjusted p-value is below 0.05, its 95% paired-bootstrap interval excludes 0 and at least "
                      f"{report_headline.MIN_PAIRED_SUBJECTS} subjects are paired. Intervals that cross 0 in the "
                      "figure mean the data cannot tell that pair apart.")
    _show(context, section, [(context.root / "comparison" / "paired_differences.png",
                                     "Paired differences in balanced accuracy")], 3)
    if frame is None:
        section.missing.append(context.note("comparison/paired_differences*.csv"))
    else:
        shown = frame[[column for column in PAIRED_COLUMNS if column in frame.columns]]
        section.table = table_html(shown.round(3))
        section.notes.append(f"Table: {source}.")
        section.notes += baseline_verdicts(frame)
    sentence, table = _crossval_note(context)
    section.notes += [sentence] if sentence else []
    section.more += [("Cross-validated scores, subject level", table)] if table is not None else []
    extra = _figures(context, [(context.root / "comparison" / "metrics_bars.png", "Metrics per model"),
                               (context.root / "comparison" / "accuracy_latency.png", "Accuracy against latency")])
    section.more += [("Comparison figures (metrics, latency)", _gallery(extra, 2))] if extra else []
    return section


def _leakage_section(context: _Context) -> Section:
    """The random-label control's verdict, the leakage demonstration and the run split's audit."""
    from alzlib import controls

    section = Section("leakage", "Leakage controls", "The random-label control must stay at chance on this run's "
                      "split and should rise above chance on the deliberately leaky slice split; if it does not, a "
                      "clean result is weak evidence.")
    control = context.dict_file("evaluation/summary.json").get("random_label_control")
    if isinstance(control, dict) and "verdict" in control:
        section.notes.append(f"Random-label control (Yagis et al. 2021), test balanced accuracy "
                             f"{control['estimate']:.3f} [{control['low']:.3f}, {control['high']:.3f}] against "
                             f"chance {control['chance']:.3f}: {control['verdict']}.")
    demonstration = context.json(context.root / "evaluation" / "leakage_demonstration.json")
    if isinstance(demonstration, dict) and demonstration.get("cells"):
        section.table = table_html(controls.demonstration_table(demonstration))
        section.notes.append(str(demonstration.get("verdict", "")))
    audit = report_checks.leakage_audit(context.root)
    section.notes.append(f"Leakage audit of this run's split: {audit.line}.")
    return section


def _gradcam_table(context: _Context) -> Markup | None:
    """One row per model: randomisation correlation, cascade verdict, localisation against its nulls."""
    summary = context.csv(context.root / "gradcam" / "summary.csv")
    if summary is None:
        return None
    names = {"model": "model", "target_layer": "layer", "randomisation_mean_spearman": "randomisation ρ",
             "cascade_verdict": "cascade", "localisation_auroc_trained": "localisation AUROC",
             "localisation_verdict_vs_random": "vs random model", "localisation_verdict_vs_prior": "vs class prior"}
    return table_html(summary[[name for name in names if name in summary]].rename(columns=names).round(3))


def _gradcam_section(context: _Context) -> Section:
    """Grad-CAM overlays per model, the sanity-check table, randomisation figures collapsed."""
    folder = context.root / "gradcam"
    section = Section("gradcam", "Grad-CAM explanations and their sanity checks", "Maps should sit on brain tissue "
                      "(ventricles, hippocampus), not the background or the frame, and must change when the model's "
                      "weights are re-initialised (a low randomisation ρ, cascade 'pass').",
                      table=_gradcam_table(context))
    models = [name for name in _models(context) if (folder / name).is_dir()]
    _show(context, section, [(folder / name / "overlays.png", f"{name}: Grad-CAM overlays")
                                    for name in models], 4)
    if not models:
        section.missing.append(context.note("gradcam/"))
    checks = [(path, f"{path.parent.name}: {path.stem.replace('_', ' ')}") for name in models
              for path in sorted((folder / name).glob("*.png")) if path.name != "overlays.png"]
    extra = _figures(context, checks)
    section.more += [("Randomisation and attention figures", _gallery(extra, 2))] if extra else []
    return section


def _robustness_section(context: _Context) -> Section:
    """The robustness heatmap and the mCE table."""
    folder = context.root / "robustness"
    section = Section("robustness", "Robustness to MRI corruptions", "Darker cells are larger drops in accuracy "
                      "under a corruption; a model with a lower mCE (corruption error relative to the reference "
                      "model, 100 = the same) degrades less.")
    _show(context, section, [(folder / "robustness_heatmap.png", "Accuracy drop per corruption")], 2)
    table = context.csv(folder / "mce_summary.csv", required=False)
    if table is not None:
        keep = [column for column in ("model", "clean_error", "mce", "mce_low", "mce_high", "relative_mce",
                                      "corruptions_used", "relative_corruptions_used") if column in table]
        section.table = table_html(table[keep].round(2))
    elif not section.galleries:
        section.missing.append(context.note("robustness/ (tables and figures)"))
    extra = _figures(context, [(folder / "robustness_curves.png", "Accuracy against severity"),
                               (folder / "corruption_grid.png", "The corruptions at each severity")])
    section.more += [("Robustness curves and corruption examples", _gallery(extra, 2))] if extra else []
    return section


def _external_section(context: _Context) -> Section | None:
    """Site A against the external test set (alzlib.external): the figure, the subject-level drops, what was left
    out; None when the run scored no external set."""
    tables = report_card.external_tables(context.root)
    if not tables:
        return None
    record = context.dict_file("external/external.json") or {}
    source = (record.get("source") or {}).get("label", "an external test set")
    section = Section("external", "External test set", f"The same models scored on {source}, which they never saw: "
                      "a drop from the run's own test split whose interval lies above 0 is a real loss at the other "
                      "site. Each site is bootstrapped over its own subjects.")
    _show(context, section, [(context.root / "external" / "site_drop.png", "Site A test vs the external test set")],
          2)
    table = context.csv(tables[0])
    keep = [column for column in ("model", "level", "site_a", "external", "drop", "drop_low", "drop_high", "verdict",
                                  "external_subjects") if column in table]
    section.table = table_html(table.loc[table.get("level", "subject") == "subject", keep].round(3))
    data = record.get("data") or {}
    if data:
        section.notes.append(f"{data.get('images')} external images of {data.get('subjects')} subjects; "
                             f"{len(data.get('copies_left_out') or [])} left out as copies of the training data; "
                             f"{len(data.get('skipped') or [])} unreadable. Rule: {record.get('rule', '')}")
    section.notes.append(f"Table: {context.relative(tables[0])} (slice-level rows too).")
    return section


def _timings(context: _Context) -> Markup | None:
    """Notebook run times as a table."""
    summary = context.dict_file("run_summary.json")
    rows = [{"notebook": entry.get("name"), "status": entry.get("status"), "seconds": entry.get("seconds"),
             "headline": entry.get("headline")} for entry in summary.get("notebooks") or []
            if isinstance(entry, dict)]
    return table_html(pd.DataFrame(rows)) if rows else None


def _run_section(context: _Context) -> Section:
    """Profile, seed, data, split, weights setting, determinism, commit and build time; timings and versions."""
    metadata, source = _metadata(context)
    settings = metadata.get("settings") if isinstance(metadata.get("settings"), dict) else {}
    section = Section("run", "Run details", "How this run was made: enough to repeat it with run_all.py.",
                      table=pairs_table({
                          "profile": settings.get("profile", context.root.parent.name),
                          "run folder": f"{context.root.parent.name}/{context.root.name}",
                          "seed": settings.get("seed"), "data": report_card.data_facts(context.root)["label"],
                          "split policy": settings.get("split"), "epochs": settings.get("epochs"),
                          "weights setting": settings.get("weights") or "imagenet (default)",
                          "deterministic": settings.get("deterministic"), "folds": settings.get("folds"),
                          "Keras backend": metadata.get("backend", "not recorded"),
                          "cohort version": settings.get("cohort_version"),
                          "external test data": settings.get("external_data"),
                          "git commit": metadata.get("git_commit"),
                          "report built": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}))
    section.notes += [f"Run details taken from {source} (run_metadata.json is missing)."] \
        if source != "run_metadata.json" else []
    timings = _timings(context)
    section.more += [("Notebook run times", timings)] if timings is not None else []
    section.more += [(title, pairs_table(metadata[key])) for key, title in
                     (("libraries", "Library versions"), ("hardware", "Hardware"), ("profile", "Profile budget"))
                     if isinstance(metadata.get(key), dict)]
    return section


def _metadata(context: _Context) -> tuple[dict, str]:
    """Return the run metadata and its file: run_metadata.json, else a recipe record's `run` entry (training records
    the same dict), else an empty dict."""
    metadata = context.dict_file("run_metadata.json")
    if metadata:
        return metadata, "run_metadata.json"
    for name, record in _records(context).items():
        if isinstance(record.get("run"), dict):
            return record["run"], f"models/{name}.json"
    return {}, ""


def _limitations_section(context: _Context) -> Section:
    """What these results cannot show, stated plainly."""
    synthetic = _is_synthetic(context)
    items = ["Research code only: nothing in this report is for clinical use, diagnosis or patient management.",
             "Models see single 2D slices of 3D scans; only a split by subject measures generalisation to new "
             "people. Slice-level splits inflate accuracy.",
             "Labels come from the data set's folders, not from a verified diagnosis made for this study; the rarest "
             "class has few subjects, so its scores are uncertain.",
             "Intervals reflect the test set's size; differences inside them are not evidence that a model is "
             "better.",
             "Grad-CAM maps show what a prediction depends on, not why a disease is present; read them with the "
             "randomisation check."]
    if synthetic:
        items.insert(0, "The data are SYNTHETIC: the results show the pipeline works end to end; they say nothing "
                        "about performance on real patients.")
    elif synthetic is None:
        items.insert(0, "The data source is unknown (ingestion report missing): treat every number as unverified.")
    return Section("limitations", "Limitations", notes=items)


# Short labels for the sticky table of contents.
NAV_LABELS = {"data": "Data", "training": "Training", "evaluation": "Performance", "statistics": "Statistics",
              "leakage": "Leakage", "gradcam": "Grad-CAM", "robustness": "Robustness", "external": "External",
              "run": "Run", "limitations": "Limitations"}

SECTIONS: tuple[Callable[[_Context], Section | None], ...] = (
    _data_section, _training_section, _evaluation_section, _statistics_section, _leakage_section, _gradcam_section,
    _robustness_section, _external_section, _run_section, _limitations_section)


# --- appendix --------------------------------------------------------------------------------------------------------

def raw_files(context: _Context) -> list[dict]:
    """Return every CSV, JSON and rendered notebook under the run folder, grouped by top folder, as links."""
    groups: dict[str, list[str]] = {}
    for path in sorted(context.root.rglob("*")):
        relative = path.relative_to(context.root)
        if (path.is_file() and path.suffix.lower() in RAW_SUFFIXES and path != context.root / "report.html"
                and not any(part.startswith(".") or part in ("folds", "cache", "tensorboard", "report_screenshots")
                            for part in relative.parts)):
            groups.setdefault(relative.parts[0] if len(relative.parts) > 1 else "run", []).append(relative.as_posix())
    return [{"group": group, "files": files} for group, files in groups.items()]


def notebook_links(context: _Context) -> dict:
    """Return the rendered notebook pages beside the report, and the executed notebooks not rendered."""
    folder = context.root / "notebooks"
    pages = sorted(folder.glob("*.html")) if folder.is_dir() else []
    unrendered = [path.name for path in sorted(folder.glob("*.ipynb")) if not path.with_suffix(".html").is_file()] \
        if folder.is_dir() else []
    if not pages:
        context.note("notebooks/*.html")
    return {"pages": [{"name": page.stem, "href": context.relative(page)} for page in pages],
            "unrendered": unrendered}


# --- paths never leave the machine -----------------------------------------------------------------------------------

def path_scrubber(root: Path) -> Callable[[str], str]:
    """Return a function that rewrites absolute paths in a text: relative to the run folder or the project, else the
    file name alone, so no absolute machine path reaches the page."""
    prefixes = [(str(Path(root).resolve()) + os.sep, ""), (str(Path(root)) + os.sep, ""),
                (str(config.PROJECT_ROOT) + os.sep, ""), (str(Path.home()) + os.sep, "")]

    def scrub(text: str) -> str:
        for prefix, replacement in prefixes:
            text = text.replace(prefix, replacement)
        return ABSOLUTE_PATH.sub(lambda match: match.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)

    return scrub


def _finalize(scrub: Callable[[str], str]) -> Callable:
    """Return the template's finalize hook: every text printed passes through `scrub` (embedded images excepted)."""

    def finalize(value):
        if isinstance(value, Markup):
            # Embedded images stay byte for byte: base64 text can look like a path.
            parts = DATA_URI.split(str(value))
            return Markup("".join(part if part.startswith("data:") else scrub(part) for part in parts))
        if isinstance(value, str) and not value.startswith("data:"):
            return scrub(value)
        return value

    return finalize


def _environment(scrub: Callable[[str], str]):
    """Return the jinja2 environment that loads the package's templates, autoescaping and scrubbing paths."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("alzlib", "templates"), autoescape=True,
                              finalize=_finalize(scrub), trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


# --- build -----------------------------------------------------------------------------------------------------------

def _built(builder: Callable[[_Context], Section | None], context: _Context) -> Section | None:
    """Run one section builder; a file in an older or unexpected layout gives a section that says so, not a crash."""
    try:
        return builder(context)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        anchor = builder.__name__.strip("_").removesuffix("_section")
        return Section(anchor, anchor.capitalize(), missing=[f"could not build this section: {type(error).__name__}: "
                                                             f"{error} (a file in an older or unexpected layout)"])


def _profile_name(context: _Context) -> str:
    """Return the run's profile from its metadata, else the run folder's parent's name."""
    settings = context.dict_file("run_metadata.json", required=False).get("settings")
    return str(settings.get("profile")) if isinstance(settings, dict) and settings.get("profile") else \
        context.root.parent.name


def page_context(paths: config.OutputPaths) -> dict:
    """Return everything the template shows, read from the files under `paths.root`."""
    context = _Context(paths)
    headline = _headline(context)
    sections = [section for builder in SECTIONS if (section := _built(builder, context)) is not None]
    anchors = {"top", "checks", "model-card", "appendix", *(section.anchor for section in sections)}
    return {"profile": _profile_name(context), "run": context.root.name, "data": _data_line(context),
            "headline": headline, "checks": report_checks.run_checks(context.root),
            "card": report_card.model_card(context.root), "sections": sections, "nav": NAV_LABELS,
            "claim": report_card.claim_checklist(anchors), "files": raw_files(context),
            "notebooks": notebook_links(context), "problems": context.problems}


def render_report_html(paths: config.OutputPaths) -> str:
    """Return the report as one HTML string, rendered from the package template."""
    return _environment(path_scrubber(paths.root)).get_template("report.html.j2").render(**page_context(paths))


def build_report(paths: config.OutputPaths) -> Path:
    """Write `report.html` under `paths.root` from the files earlier stages wrote; return its path."""
    if not Path(paths.root).is_dir():
        raise FileNotFoundError(f"{paths.root} does not exist: run the pipeline notebooks for this profile first.")
    document = render_report_html(paths)
    with storage.atomic_path(paths.report) as temporary:
        temporary.write_text(document, encoding="utf-8")
    return Path(paths.report)


def render_notebooks_html(notebook_dir: str | os.PathLike) -> list[Path]:
    """Render every executed .ipynb in `notebook_dir` to an offline .html beside it (images embedded); return them."""
    import nbformat
    from nbconvert import HTMLExporter

    folder = Path(notebook_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run the notebooks (run_all.py) before rendering them.")
    exporter = HTMLExporter(embed_images=True, raw_template=OFFLINE_NOTEBOOK_TEMPLATE)
    pages = []
    for notebook_path in sorted(folder.glob("*.ipynb")):
        try:
            notebook = nbformat.read(notebook_path, as_version=4)
        except (OSError, ValueError) as error:
            raise ValueError(f"{notebook_path} is not a readable notebook: {error}") from error
        body, _ = exporter.from_notebook_node(notebook)
        page = notebook_path.with_suffix(".html")
        with storage.atomic_path(page) as temporary:
            temporary.write_text(body, encoding="utf-8")
        pages.append(page)
    return pages
