"""The final report: one self-contained HTML file built only from the files earlier stages wrote."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from alzlib import config, storage

IMAGE_TYPES = {".png": (b"\x89PNG\r\n\x1a\n", "image/png"), ".jpg": (b"\xff\xd8\xff", "image/jpeg"),
               ".jpeg": (b"\xff\xd8\xff", "image/jpeg")}
OPEN_TABLE_ROWS = 25
MAX_TABLE_ROWS = 300
MAX_LIST_ITEMS = 30
MAX_JSON_DEPTH = 6
RECORD_FIELDS = ("weights", "training_time_seconds", "best_epoch", "best_val_score", "parameters", "train_images",
                 "train_subset")
WIDE_FIGURE_PIXELS = 900
CALIBRATION_WORDS = ("ece", "brier", "nll", "temperature")
# The lab template loads require.js, MathJax and Mermaid from a CDN; the pages must open offline like the report.
OFFLINE_NOTEBOOK_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 1.2rem 1.6rem 4rem; }
h1 { font-size: 1.6rem; margin: 0.4rem 0; } h2 { border-bottom: 2px solid #d5dae3; padding-bottom: 0.2rem;
     margin-top: 2.4rem; } h3 { margin-bottom: 0.3rem; }
section { background: #fff; border-radius: 6px; padding: 0.4rem 1.2rem 1.2rem; margin-top: 1.2rem;
          box-shadow: 0 1px 2px rgba(0,0,0,0.08); overflow-x: auto; }
.banner { padding: 0.9rem 1.2rem; border-radius: 6px; margin: 0.8rem 0; font-weight: 600; }
.synthetic { background: #fff1c2; border: 2px solid #c98a00; font-size: 1.1rem; }
.clinical { background: #fde2e2; border: 2px solid #b42318; }
.unknown { background: #e8eaf0; border: 2px solid #596174; }
.missing { color: #8a1c1c; background: #fdf0f0; border-left: 4px solid #b42318; padding: 0.3rem 0.7rem; }
.warning { background: #fff7e0; border-left: 4px solid #c98a00; padding: 0.4rem 0.8rem; }
.muted { color: #667085; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.86rem; }
.scroll { overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #d5dae3; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
thead th { background: #eef1f6; }
table.kv > tbody > tr > th { background: #f3f5f9; white-space: nowrap; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 1rem; }
figure { margin: 0; } figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4ea; background: #fff; }
figcaption { font-size: 0.8rem; color: #475467; word-break: break-all; }
details { margin: 0.4rem 0; } summary { cursor: pointer; color: #1d4ed8; }
nav ol { columns: 2; font-size: 0.92rem; } code { background: #f0f2f5; padding: 0 0.2rem; }
"""


class _Context:
    """What one build has read so far, and which inputs were missing or unreadable."""

    def __init__(self, paths: config.OutputPaths):
        self.root = Path(paths.root)
        self.problems: dict[str, str] = {}
        self._cache: dict[Path, object] = {}

    def relative(self, path: Path) -> str:
        """Return `path` relative to the outputs folder, as shown in the report."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def note(self, path: Path | str, reason: str = "missing") -> str:
        """Record a missing or unreadable input and return the marker shown where its content would be."""
        name = path if isinstance(path, str) else self.relative(path)
        self.problems.setdefault(name, reason)
        if self.problems[name] == "missing":
            return f'<p class="missing">not run: {_text(name)} missing</p>'
        return f'<p class="missing">could not read {_text(name)}: {_text(self.problems[name])}</p>'

    def load(self, path: Path, reader: Callable[[Path], object]):
        """Read `path` once with `reader`; None (and a recorded problem) when missing or unreadable."""
        if path in self._cache:
            return self._cache[path]
        value = None
        if not path.is_file():
            self.note(path)
        else:
            try:
                value = reader(path)
            except (OSError, ValueError, KeyError, ImportError) as error:
                self.note(path, f"{type(error).__name__}: {error}")
        self._cache[path] = value
        return value

    def json(self, path: Path):
        """Return the parsed JSON file, or None when missing or unreadable."""
        return self.load(path, lambda target: json.loads(target.read_text(encoding="utf-8")))


def _text(value) -> str:
    """Escape any value for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def _scalar(value) -> str:
    """Format a scalar for display: 4 significant digits for floats, a dash for None."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _frame_html(frame: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS) -> str:
    """Render a DataFrame as an escaped HTML table (without its index), noting rows left out."""
    table = frame.head(max_rows).to_html(index=False, escape=True, border=0, na_rep="—", classes="data",
                                         float_format=lambda number: f"{number:.4g}")
    hidden = len(frame) - max_rows
    # Wide tables scroll inside their own box instead of widening the page.
    return f'<div class="scroll">{table}</div>' + (
        f'<p class="muted">{hidden} more rows not shown.</p>' if hidden > 0 else "")


def _json_list_html(items: list, depth: int) -> str:
    """Render a JSON list: records as a table, scalars inline, anything else as an ordered list."""
    if not items:
        return '<span class="muted">(none)</span>'
    if all(isinstance(item, dict) for item in items):
        frame = pd.DataFrame([{key: _scalar(value) if not isinstance(value, (dict, list)) else json.dumps(value)
                               for key, value in item.items()} for item in items])
        return _frame_html(frame, max_rows=MAX_LIST_ITEMS)
    shown = items[:MAX_LIST_ITEMS]
    more = f' <span class="muted">… {len(items) - len(shown)} more</span>' if len(items) > len(shown) else ""
    if all(not isinstance(item, (dict, list)) for item in items):
        return _text(", ".join(_scalar(item) for item in shown)) + more
    return "<ol>" + "".join(f"<li>{_json_html(item, depth + 1)}</li>" for item in shown) + "</ol>" + more


def _json_html(value, depth: int = 0) -> str:
    """Render any JSON value as nested escaped HTML tables."""
    if isinstance(value, dict):
        if not value:
            return '<span class="muted">(empty)</span>'
        if depth >= MAX_JSON_DEPTH:
            return f"<code>{_text(json.dumps(value)[:2000])}</code>"
        rows = "".join(f"<tr><th>{_text(key)}</th><td>{_json_html(item, depth + 1)}</td></tr>"
                       for key, item in value.items())
        return f'<table class="kv"><tbody>{rows}</tbody></table>'
    if isinstance(value, list):
        return _json_list_html(value, depth)
    return _text(_scalar(value))


def _details(summary: str, body: str, open_: bool = False) -> str:
    """Wrap `body` in a collapsible block titled `summary` (plain text)."""
    return f"<details{' open' if open_ else ''}><summary>{_text(summary)}</summary>{body}</details>"


def _image_html(context: _Context, path: Path, caption: str | None = None) -> str:
    """Embed an image file as a base64 data URI with its caption; a marker when it cannot be read."""
    signature, mime = IMAGE_TYPES[path.suffix.lower()]
    data = context.load(path, lambda target: target.read_bytes())
    if data is None:
        return context.note(path)
    if not data.startswith(signature):
        return context.note(path, f"not a valid {path.suffix.lstrip('.').upper()} file")
    encoded = base64.b64encode(data).decode("ascii")
    label = caption or context.relative(path)
    # Wide figures (grids of panels) get a whole gallery row so their panels stay legible.
    wide = mime == "image/png" and int.from_bytes(data[16:20], "big") > WIDE_FIGURE_PIXELS
    css_class = ' class="wide"' if wide else ""
    return (f'<figure{css_class}><img src="data:{mime};base64,{encoded}" alt="{_text(label)}" loading="eager">'
            f"<figcaption>{_text(label)}</figcaption></figure>")


def _gallery(context: _Context, paths: list[Path]) -> str:
    """Return a grid of embedded images."""
    return '<div class="gallery">' + "".join(_image_html(context, path) for path in paths) + "</div>" if paths else ""


def _stage_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Return the files under `folder` with these suffixes, sorted, skipping temporaries and TensorBoard logs."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in suffixes
                  and not path.name.startswith(".") and "tensorboard" not in path.relative_to(folder).parts)


def _images_in(folder: Path) -> list[Path]:
    """Return the embeddable images under `folder`."""
    return _stage_files(folder, tuple(IMAGE_TYPES))


def _csv_html(context: _Context, path: Path) -> str:
    """Render a CSV file as a table: open when short, collapsed when long."""
    frame = context.load(path, pd.read_csv)
    if frame is None:
        return context.note(path)
    title = f"{context.relative(path)} ({len(frame)} rows)"
    return _details(title, _frame_html(frame), open_=len(frame) <= OPEN_TABLE_ROWS)


def _json_file_html(context: _Context, path: Path, open_: bool = False) -> str:
    """Render a JSON file as nested tables inside a collapsible block."""
    value = context.json(path)
    return context.note(path) if value is None else _details(context.relative(path), _json_html(value), open_=open_)


def _stage_html(context: _Context, folder: Path, skip: tuple[Path, ...] = ()) -> str:
    """Render every table, JSON record and image a stage wrote; a marker when the stage folder is empty."""
    tables = [path for path in _stage_files(folder, (".csv",)) if path not in skip]
    records = [path for path in _stage_files(folder, (".json",)) if path not in skip]
    images = [path for path in _images_in(folder) if path not in skip]
    if not (tables or records or images):
        return context.note(f"{context.relative(folder)}/ (tables and figures)")
    parts = [_csv_html(context, path) for path in tables]
    parts += [_json_file_html(context, path, open_=True) for path in records]
    return "".join(parts) + _gallery(context, images)


def _dict_file(context: _Context, name: str) -> dict | None:
    """Return a JSON object file under the outputs folder; None when missing, unreadable or not an object."""
    path = context.root / name
    value = context.json(path)
    if value is not None and not isinstance(value, dict):
        context.note(path, f"expected a JSON object, found {type(value).__name__}")
        return None
    return value


def _ingestion(context: _Context) -> dict | None:
    """Return the ingestion report (or None)."""
    return _dict_file(context, "ingestion_report.json")


def _metadata_and_source(context: _Context) -> tuple[dict | None, str | None]:
    """Return the run metadata and the file it came from: run_metadata.json, else a recipe record's `run` entry."""
    metadata = _dict_file(context, "run_metadata.json")
    if metadata is not None:
        return metadata, "run_metadata.json"
    # Training records the same environment.run_metadata dict in each recipe record, so a run whose
    # run_metadata.json is missing can still state its settings, commit and versions, with the source named.
    for name, record in _records(context).items():
        if isinstance(record.get("run"), dict):
            return record["run"], f"models/{name}.json"
    return None, None


def _metadata(context: _Context) -> dict | None:
    """Return the run metadata (or None)."""
    return _metadata_and_source(context)[0]


def _is_synthetic(context: _Context) -> bool | None:
    """Return whether the data are synthetic, from the ingestion report or run metadata; None when unknown."""
    source = (_ingestion(context) or {}).get("data_source")
    if isinstance(source, dict) and "synthetic" in source:
        return bool(source["synthetic"])
    settings = (_metadata(context) or {}).get("settings")
    return bool(settings["synthetic"]) if isinstance(settings, dict) and "synthetic" in settings else None


def _recorded_models(context: _Context) -> list[str]:
    """Return the models expected in this run: the configured ones plus any with records or results."""
    found = [path.stem for path in _stage_files(context.root / "models", (".json",))]
    evaluated = [path.name for path in sorted((context.root / "evaluation").glob("*")) if path.is_dir()]
    return list(dict.fromkeys([*config.MODEL_NAMES, config.CONTROL_MODEL_NAME, *found, *evaluated]))


def _records(context: _Context) -> dict[str, dict]:
    """Return the recipe record of every expected model that has one."""
    records = {}
    for name in _recorded_models(context):
        record = context.json(context.root / "models" / f"{name}.json")
        if isinstance(record, dict):
            records[name] = record
    return records


def _run_metadata_section(context: _Context) -> str:
    """Profile, seed, data source, split policy, commit, versions, hardware, weights, determinism, timings."""
    metadata, source = _metadata_and_source(context)
    ingestion = _ingestion(context) or {}
    parts = [] if source == "run_metadata.json" else [context.note(context.root / "run_metadata.json")]
    if metadata is not None and source != "run_metadata.json":
        parts.append(f'<p class="muted">Run metadata below is taken from {_text(source)} (recorded at training).</p>')
    settings = (metadata or {}).get("settings")
    settings = settings if isinstance(settings, dict) else {}
    summary = {
        "profile": settings.get("profile", context.root.name), "seed": settings.get("seed"),
        "data source": ingestion.get("data_source"), "data folder": ingestion.get("data_dir", settings.get("data_dir")),
        "split policy": ingestion.get("split_policy", settings.get("split")), "epochs": settings.get("epochs"),
        "weights setting": settings.get("weights"), "determinism": settings.get("deterministic"),
        "git commit": (metadata or {}).get("git_commit"), "Keras backend": (metadata or {}).get("backend"),
        "report built": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    parts.append(_json_html(summary))
    weights = {name: record.get("weights") for name, record in _records(context).items()}
    parts.append("<h3>Weights used per model</h3>" + (_json_html(weights) if weights else
                                                       '<p class="muted">No model records found.</p>'))
    for key, title in (("libraries", "Library versions"), ("hardware", "Hardware"), ("profile", "Profile budget")):
        if metadata and key in metadata:
            parts.append(_details(title, _json_html(metadata[key]), open_=key != "profile"))
    run_summary = context.json(context.root / "run_summary.json")
    parts.append("<h3>Notebook run times</h3>" + (_json_html(run_summary) if run_summary is not None
                                                    else context.note(context.root / "run_summary.json")))
    return "".join(parts)


def _flat_table(crosstab: pd.DataFrame) -> pd.DataFrame:
    """Turn a crosstab's index into its first column so the HTML table has one header row."""
    return crosstab.rename_axis(columns=None).reset_index()


def _manifest_html(context: _Context) -> str:
    """Images per split and class, and subjects per split, from the manifest."""
    path = context.root / "manifest.parquet"
    manifest = context.load(path, pd.read_parquet)
    if manifest is None:
        return context.note(path)
    if not {"split", "label"}.issubset(manifest.columns):
        return context.note(path, "no split and label columns")
    images = pd.crosstab(manifest["split"], manifest["label"], margins=True, margins_name="all")
    parts = ["<h3>Images per split and class (manifest.parquet)</h3>", _frame_html(_flat_table(images))]
    if "subject_id" in manifest.columns:
        subjects = pd.crosstab(manifest["split"], manifest["label"], values=manifest["subject_id"], aggfunc="nunique")
        parts += ["<h3>Subjects per split and class</h3>", _frame_html(_flat_table(subjects.fillna(0).astype(int)))]
    return "".join(parts)


def _data_section(context: _Context) -> str:
    """Data source, counts, skipped files, split policy and warnings, and the leakage audit."""
    ingestion = _ingestion(context)
    parts = [_manifest_html(context)]
    if ingestion is None:
        return context.note(context.root / "ingestion_report.json") + "".join(parts)
    for warning in ingestion.get("split_warnings") or []:
        parts.insert(0, f'<p class="warning">Split warning: {_text(warning)}</p>')
    keys = ("data_dir", "data_source", "classes", "task", "split_policy", "counts")
    shown = {key: ingestion.get(key) for key in keys}
    parts.append("<h3>Ingestion</h3>" + _json_html(shown))
    skipped = ingestion.get("skipped") or []
    parts.append(f"<h3>Skipped files ({len(skipped)})</h3>" + _json_html(skipped))
    parts.append("<h3>Leakage audit</h3>" + _json_html(ingestion.get("leakage_audit")))
    rest = {key: value for key, value in ingestion.items() if key not in {*shown, "skipped", "leakage_audit",
                                                                           "split_warnings"}}
    if rest:
        parts.append(_details("Other ingestion fields", _json_html(rest)))
    return "".join(parts)


def _eda_section(context: _Context) -> str:
    """The shortcut audit first, then every EDA table and figure."""
    folder = context.root / "eda"
    audit_path = folder / "shortcut_audit.json"
    audit = context.json(audit_path)
    parts = ["<h3>Shortcut audit</h3>"]
    if audit is None:
        parts.append(context.note(audit_path))
    else:
        if isinstance(audit, dict) and audit.get("warning"):
            parts.append(f'<p class="warning">{_text(audit["warning"])}</p>')
        parts.append(_json_html(audit))
    parts.append("<h3>Tables and figures</h3>" + _stage_html(context, folder, skip=(audit_path,)))
    return "".join(parts)


def _training_section(context: _Context) -> str:
    """Recipe records and training curves of every model."""
    records = _records(context)
    parts = []
    if records:
        fields = [field for field in RECORD_FIELDS if any(field in record for record in records.values())]
        rows = [{"model": name, **{field: record.get(field) for field in fields}} for name, record in records.items()]
        frame = pd.DataFrame(rows).map(lambda value: json.dumps(value) if isinstance(value, (dict, list)) else value)
        parts.append(_frame_html(frame))
    for name in _recorded_models(context):
        folder = context.root / "training" / name
        parts.append(f"<h3>{_text(name)}</h3>")
        if name not in records:
            parts.append(context.note(context.root / "models" / f"{name}.json"))
            continue
        parts.append(_details("recipe record", _json_html(records[name])))
        if records[name].get("framework") == "scikit-learn":
            continue  # fitted in one call: no epochs, no curves
        images = _images_in(folder)
        parts.append(_gallery(context, images) if images else context.note(folder / "curves.png"))
    return "".join(parts)


def _evaluated_models(context: _Context) -> list[str]:
    """Return the models that should have evaluation results: those with a record or an evaluation folder."""
    names = list(_records(context))
    names += [path.name for path in sorted((context.root / "evaluation").glob("*")) if path.is_dir()]
    return list(dict.fromkeys(names))


def _evaluation_images(context: _Context, name: str, words: tuple[str, ...]) -> list[Path]:
    """Return a model's evaluation images whose file names contain one of `words`."""
    return [path for path in _images_in(context.root / "evaluation" / name)
            if any(word in path.name.lower() for word in words)]


def _metrics_section(context: _Context) -> str:
    """The summary table with intervals, then each model's metrics, tables and remaining figures."""
    summary_path = context.root / "evaluation" / "summary.csv"
    parts = [_csv_html(context, summary_path)]
    parts += [_json_file_html(context, path) for path in sorted((context.root / "evaluation").glob("*.json"))]
    for name in _evaluated_models(context):
        folder = context.root / "evaluation" / name
        metrics_path = folder / "metrics.json"
        parts.append(f"<h3>{_text(name)}</h3>")
        parts.append(_json_file_html(context, metrics_path) if metrics_path.is_file() else context.note(metrics_path))
        parts += [_csv_html(context, path) for path in _stage_files(folder, (".csv",))]
        shown_elsewhere = ("confusion", "reliab", "calibration")
        parts.append(_gallery(context, [path for path in _images_in(folder)
                                        if not any(word in path.name.lower() for word in shown_elsewhere)]))
    return "".join(parts)


def _flatten(value, prefix: str = "") -> dict:
    """Flatten nested dicts into 'a.b.c' keys."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _per_model_figures(context: _Context, words: tuple[str, ...], expected_name: str, with_scores: bool) -> str:
    """One block per evaluated model: its figures matching `words`, and (optionally) matching metric values."""
    parts = []
    for name in _evaluated_models(context):
        parts.append(f"<h3>{_text(name)}</h3>")
        if with_scores:
            metrics = context.json(context.root / "evaluation" / name / "metrics.json")
            # Scalars only: the reliability bins behind the figure would be a long table here.
            scores = {key: value for key, value in _flatten(metrics or {}).items()
                      if not isinstance(value, (list, dict)) and any(word in key.lower() for word in CALIBRATION_WORDS)}
            parts.append(_json_html(scores) if scores else "")
        images = _evaluation_images(context, name, words)
        parts.append(_gallery(context, images) if images else
                     context.note(context.root / "evaluation" / name / expected_name))
    return "".join(parts) or context.note("evaluation/")


def _gradcam_section(context: _Context) -> str:
    """Grad-CAM panels, the randomisation sanity check and localisation scores."""
    return _stage_html(context, context.root / "gradcam")


def _notebooks_section(context: _Context) -> str:
    """Links to the executed notebooks rendered to HTML beside the report."""
    folder = context.root / "notebooks"
    pages = _stage_files(folder, (".html",))
    unrendered = [path.name for path in _stage_files(folder, (".ipynb",)) if not path.with_suffix(".html").is_file()]
    parts = [context.note("notebooks/*.html")] if not pages else []
    links = "".join(f'<li><a href="{_text(quote(context.relative(page)))}">{_text(page.stem)}</a></li>'
                    for page in pages)
    parts.append(f"<ul>{links}</ul>" if links else "")
    if unrendered:
        parts.append(f'<p class="muted">Executed but not rendered to HTML: {_text(", ".join(unrendered))}</p>')
    return "".join(parts)


def _limitations_section(context: _Context) -> str:
    """What these results cannot show, stated plainly."""
    synthetic = _is_synthetic(context)
    audit = context.json(context.root / "eda" / "shortcut_audit.json")
    items = ["Research code only: nothing in this report is for clinical use, diagnosis or patient management.",
             "Models see single 2D slices of 3D scans; neighbouring slices of one scan are nearly identical, so only a "
             "split by subject measures generalisation to new people. Slice-level splits inflate accuracy.",
             "Labels come from the data set's folders or files, not from a verified clinical diagnosis made for this "
             "study; the classes are imbalanced and the rarest class has few subjects, so its scores are uncertain.",
             "Confidence intervals reflect the test set's size; a small test set gives wide intervals and model "
             "differences inside them are not evidence that one model is better.",
             "Grad-CAM maps show what a model's prediction depends on, not why a disease is present; read them with "
             "the randomisation sanity check."]
    if synthetic:
        items.insert(0, "The data are SYNTHETIC: generated images with atrophy applied by a program. The results show "
                        "the pipeline works end to end; they say nothing about performance on real patients.")
    elif synthetic is None:
        items.insert(0, "The data source is unknown (ingestion report missing): treat every number as unverified.")
    if isinstance(audit, dict) and audit.get("warning"):
        items.append(f"Shortcut audit: {audit['warning']}")
    items += [f"Split warning: {warning}" for warning in (_ingestion(context) or {}).get("split_warnings") or []]
    return "<ul>" + "".join(f"<li>{_text(item)}</li>" for item in items) + "</ul>"


def _leakage_section(context: _Context) -> str:
    """The random-label control's verdict, the leakage demonstration table and the run split's audit verdict."""
    parts = []
    summary = context.json(context.root / "evaluation" / "summary.json")
    control = summary.get("random_label_control") if isinstance(summary, dict) else None
    if isinstance(control, dict) and "verdict" in control:
        parts.append(f"<p><strong>Random-label control</strong> (one random label per subject, scored on those "
                     f"labels; Yagis et al. 2021): test balanced accuracy {control['estimate']:.3f} "
                     f"[{control['low']:.3f}, {control['high']:.3f}] against chance {control['chance']:.3f}: "
                     f"{_text(control['verdict'])}. {_text(control.get('power_note', '').capitalize())}.</p>")
    elif isinstance(control, dict):
        parts.append(f"<p>Random-label control not checked: {_text(control.get('skipped', ''))}</p>")
    demonstration = context.json(context.root / "evaluation" / "leakage_demonstration.json")
    if isinstance(demonstration, dict):
        from alzlib import controls

        inflation = demonstration.get("inflation") or {}
        parts.append("<p><strong>Leakage demonstration</strong>: the baseline CNN under the control budget "
                     f"({_text(demonstration['budget']['epochs'])} epochs at "
                     f"{_text(demonstration['budget'].get('image_size', '?'))} px, no augmentation, no dropout, "
                     f"constant learning rate {demonstration['budget']['learning_rate']}, last epoch kept), test "
                     "balanced accuracy with 95% "
                     "subject-bootstrap intervals. A slice split puts slices of one subject on both sides.</p>")
        parts.append(_frame_html(controls.demonstration_table(demonstration)))
        parts.append(f"<p>{_text(demonstration['verdict'])}"
                     + (f" Accuracy a slice split adds with true labels: {inflation['slice_minus_subject']:+.3f}."
                        if inflation else "") + "</p>")
    audit = ((_ingestion(context) or {}).get("leakage_audit") or {})
    policy = (_ingestion(context) or {}).get("split_policy")
    in_use = audit.get(policy) if isinstance(audit, dict) else None
    if isinstance(in_use, dict):
        tripped = ", ".join(in_use.get("tripped_by") or []) or "nothing"
        parts.append(f"<p><strong>Leakage audit of this run's {_text(policy)} split</strong>: "
                     f"{'LEAKS' if in_use.get('leaks') else 'no leak found'} (tripped by: {_text(tripped)}).</p>")
    return "".join(parts) or context.note(context.root / "evaluation" / "leakage_demonstration.json")


PAIRED_FILES = (("paired_differences_crossval.csv", "cross-validated: pooled out-of-fold predictions, every subject"),
                ("paired_differences.csv", "single split: the test subjects"))
PAIRED_COLUMNS = ("model_a", "model_b", "level", "subjects", "difference", "low", "high", "p_value_holm", "supported")


def _crossval_html(context: _Context) -> str:
    """Which models were cross-validated, how, and their table (subject level: mean +- sd over folds, pooled)."""
    from alzlib import crossval

    summary = context.json(context.root / "crossval" / "summary.json")
    if not isinstance(summary, dict):
        return ""
    if summary.get("folds", 1) < 2:
        return f"<p><strong>Cross-validation</strong>: {_text(summary.get('note', 'not run'))}</p>"
    models = summary.get("models") or []
    single = [name for name in _evaluated_models(context) if name not in models and name != config.CONTROL_MODEL_NAME]
    parts = [f"<p><strong>{summary['folds']}-fold subject-level cross-validation</strong> (scikit-learn "
             "StratifiedGroupKFold over subjects, stratified by class; validation carved from the training folds by "
             f"subject) of {_text(', '.join(models) or 'no model')}. Subject level: each subject's soft vote; mean "
             "and standard deviation over the folds, and the pooled out-of-fold score with its 95% subject-bootstrap "
             "interval."
             + (f" Scored on the single split only (the profile's time budget): {_text(', '.join(single))}."
                if single else "") + "</p>"]
    table = crossval.summary_table(summary, "subject")
    if len(table):
        parts.append(_frame_html(table))
    notes = [note for entries in (summary.get("notes") or {}).values() for note in entries]
    notes += [f"{entry['model']}: {entry['reason']}" for entry in summary.get("skipped") or []]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_text(note)}</li>" for note in dict.fromkeys(notes)) + "</ul>")
    return "".join(parts)


def _baseline_verdicts(frame: pd.DataFrame) -> list[str]:
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


def _paired_html(context: _Context) -> str:
    """Each paired-difference table (cross-validated first), its sentences, and the verdicts against linear_pixels."""
    parts = []
    for name, caption in PAIRED_FILES:
        path = context.root / "comparison" / name
        if not path.is_file():
            continue
        frame = context.load(path, pd.read_csv)
        if frame is None or frame.empty:
            continue
        parts.append(f"<h3>Paired differences in balanced accuracy, {_text(caption)}</h3>"
                     "<p>Model A minus model B on the same subjects; 95% interval from a paired bootstrap that "
                     "resamples subjects within each class; Holm-corrected across pairs. A difference is supported "
                     "when its Holm-adjusted p-value is below 0.05 and its 95% interval excludes 0.</p>")
        shown = frame[[column for column in PAIRED_COLUMNS if column in frame.columns]]
        parts.append(_frame_html(shown.round(3)))
        if "sentence" in frame:
            parts.append("<ul>" + "".join(f"<li>{_text(text)}</li>" for text in frame["sentence"]) + "</ul>")
        if {"model_a", "model_b", "difference", "low", "high", "supported", "level"} <= set(frame.columns):
            verdicts = _baseline_verdicts(frame)
            if verdicts:
                parts.append("<p><strong>Against the non-deep baseline:</strong></p><ul>"
                             + "".join(f"<li>{_text(text)}</li>" for text in verdicts) + "</ul>")
    return "".join(parts)


def _statistics_section(context: _Context) -> str:
    """Cross-validation, then paired model differences with the verdicts against the linear baseline."""
    body = _crossval_html(context) + _paired_html(context)
    return body or context.note("crossval/summary.json and comparison/paired_differences*.csv")


SECTIONS: tuple[tuple[str, str, Callable[[_Context], str]], ...] = (
    ("statistics", "Can the data tell the models apart? Cross-validation and paired differences",
     _statistics_section),
    ("leakage", "Leakage controls: random-label control, demonstration and audit", _leakage_section),
    ("run", "Run metadata", _run_metadata_section),
    ("data", "Data summary and leakage audit", _data_section),
    ("eda", "Exploratory data analysis and shortcut audit", _eda_section),
    ("features", "Feature maps", lambda context: _stage_html(context, context.root / "features")),
    ("training", "Training", _training_section),
    ("metrics", "Metrics with intervals", _metrics_section),
    ("calibration", "Calibration",
     lambda context: _per_model_figures(context, ("reliab", "calibration"), "reliability*.png", with_scores=True)),
    ("confusion", "Confusion matrices",
     lambda context: _per_model_figures(context, ("confusion",), "confusion*.png", with_scores=False)),
    ("gradcam", "Grad-CAM, sanity check and localisation", _gradcam_section),
    ("comparison", "Model comparison", lambda context: _stage_html(context, context.root / "comparison")),
    ("robustness", "Robustness to MRI corruptions", lambda context: _stage_html(context, context.root / "robustness")),
    ("notebooks", "Executed notebooks", _notebooks_section),
    ("limitations", "Limitations", _limitations_section),
)


def _banners(context: _Context) -> str:
    """The synthetic-data banner (or unknown-source banner) and the not-for-clinical-use notice."""
    synthetic = _is_synthetic(context)
    banner = ""
    if synthetic:
        banner = ('<div class="banner synthetic">SYNTHETIC DATA: every number and figure below was measured on a '
                  "generated cohort, not on patient scans. It shows that the pipeline runs; it is no evidence of "
                  "diagnostic performance.</div>")
    elif synthetic is None:
        banner = ('<div class="banner unknown">Data source unknown: ingestion_report.json and run_metadata.json do '
                  "not say whether the data are synthetic.</div>")
    policy = (_ingestion(context) or {}).get("split_policy")
    if policy in config.LEAKY_SPLIT_POLICIES:
        banner += (f'<div class="banner unknown">LEAKY SPLIT: this run used a {_text(policy)}-level split that puts '
                   "slices of one subject in both train and test, for demonstration only. Every number below is "
                   "inflated by leakage.</div>")
    return banner + ('<div class="banner clinical">Research use only. Nothing in this report is for clinical use.'
                     "</div>")


def _problems_html(context: _Context) -> str:
    """List every missing or unreadable input at the top of the report."""
    if not context.problems:
        return '<p class="muted">All expected inputs were found.</p>'
    items = "".join(f"<li><code>{_text(name)}</code>: {_text(reason)}</li>"
                    for name, reason in context.problems.items())
    return (f'<div class="missing"><strong>{len(context.problems)} input(s) missing or unreadable; the sections '
            f"that need them say so.</strong><ul>{items}</ul></div>")


def render_report_html(paths: config.OutputPaths) -> str:
    """Return the report as one HTML string, read from the files under `paths.root`."""
    context = _Context(paths)
    bodies = [(anchor, title, builder(context)) for anchor, title, builder in SECTIONS]
    navigation = "".join(f'<li><a href="#{anchor}">{_text(title)}</a></li>' for anchor, title, _ in bodies)
    sections = "".join(f'<section id="{anchor}"><h2>{_text(title)}</h2>{body}</section>'
                       for anchor, title, body in bodies)
    profile = context.root.name
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Alzheimer MRI slice classification report: {_text(profile)}</title><style>{STYLE}</style>"
            f"</head><body><main><h1>Alzheimer MRI slice classification: run report ({_text(profile)})</h1>"
            f"{_banners(context)}{_problems_html(context)}<nav><ol>{navigation}</ol></nav>{sections}"
            f"</main></body></html>\n")


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
