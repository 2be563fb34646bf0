"""Model comparison (notebook 11): one table of cost and test metrics, paired McNemar tests and charts.

Every metric is read from the files notebook 09 wrote; the only thing measured here is inference speed.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import config
from alzlib.evaluation import INTERVAL_METRICS, mcnemar_test, summary_rows
from alzlib.storage import read_json, read_parquet, save_figure, write_csv, write_json

LATENCY_REPEATS = 30
WARMUP_CALLS = 3
THROUGHPUT_BATCH = 32
CHART_METRICS = ("balanced_accuracy", "macro_f1", "macro_auc")


# ----------------------------------------------------------------------------------------------- measuring


def _time_calls(model, batch: np.ndarray, repeats: int, warmup: int) -> list[float]:
    """Return the wall time in seconds of `repeats` calls of the compiled predict step, after `warmup` calls."""
    for _ in range(warmup):
        model.predict_on_batch(batch)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        timings.append(time.perf_counter() - start)
    return timings


def measure_inference(model, image_size: int, repeats: int = LATENCY_REPEATS, batch_size: int = THROUGHPUT_BATCH,
                      warmup: int = WARMUP_CALLS) -> dict:
    """Return latency (batch 1, median of `repeats` after warm-up) and throughput (batch 32) on this machine."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"Need repeats >= 1, warmup >= 0 and batch_size >= 1; got {repeats}, {warmup}, {batch_size}.")
    channels = model.input_shape[-1]
    if channels is None:
        raise ValueError(f"Model {model.name!r} has no fixed channel count in its input shape {model.input_shape}.")
    generator = np.random.default_rng(0)
    single = generator.random((1, image_size, image_size, channels), dtype=np.float32)
    batch = generator.random((batch_size, image_size, image_size, channels), dtype=np.float32)
    latency = _time_calls(model, single, repeats, warmup)
    # Fewer batch runs keep large models affordable on a CPU; the median is still over several runs.
    batch_timings = _time_calls(model, batch, max(3, repeats // 5), max(1, warmup))
    batch_median = statistics.median(batch_timings)
    return {"latency_ms_median": 1000 * statistics.median(latency),
            "latency_ms_p90": 1000 * float(np.percentile(latency, 90)),
            "latency_repeats": repeats, "warmup_calls": warmup,
            "throughput_images_per_second": batch_size / batch_median, "throughput_batch": batch_size,
            "throughput_repeats": len(batch_timings), "image_size": image_size, "channels": int(channels)}


# ----------------------------------------------------------------------------------------------- reading records


def _parameter_counts(record: dict) -> dict:
    """Return total and trainable parameter counts from a recipe record."""
    trainable, frozen = record.get("trainable_parameters"), record.get("non_trainable_parameters")
    total = record.get("model_info", {}).get("total_parameters")
    if total is None and trainable is not None and frozen is not None:
        total = trainable + frozen
    return {"parameters": total, "trainable_parameters": trainable}


def recipe_facts(models_dir: str | Path, name: str) -> dict:
    """Return parameters, file size, training time and weights source of one model from its recipe record."""
    models_dir = Path(models_dir)
    record = read_json(models_dir / f"{name}.json")
    model_file = models_dir / f"{name}.keras"
    return {"model": name, **_parameter_counts(record),
            "file_size_mb": model_file.stat().st_size / 2**20 if model_file.is_file() else None,
            "training_seconds": record.get("training_seconds"), "epochs_run": record.get("epochs_run"),
            "weights": record.get("weights")}


def test_metrics(evaluation_dir: str | Path, name: str, level: str = "slice") -> dict:
    """Return a model's test metrics with their intervals, read from its metrics.json (nothing recomputed)."""
    metrics = read_json(Path(evaluation_dir) / name / "metrics.json")
    rows = [row for row in summary_rows(metrics, "test") if row["level"] == level]
    if not rows:
        raise ValueError(f"{name}'s metrics.json has no {level}-level test results.")
    row = rows[0]
    keep = [key for key in row if key.startswith(INTERVAL_METRICS) or key in ("ece", "ece_after_temperature",
                                                                              "images", "subjects", "data_label")]
    return {key: row[key] for key in keep}


def comparison_table(models_dir: str | Path, evaluation_dir: str | Path, model_names: Sequence[str],
                     inference: dict[str, dict] | None = None, level: str = "slice") -> tuple[pd.DataFrame, list]:
    """Return one row per model (cost, speed, test metrics with intervals) and the models skipped with reasons."""
    rows, skipped = [], []
    for name in model_names:
        try:
            row = {**recipe_facts(models_dir, name), **test_metrics(evaluation_dir, name, level)}
        except (FileNotFoundError, ValueError) as error:
            skipped.append({"model": name, "reason": str(error)})
            continue
        row.update((inference or {}).get(name, {}))
        rows.append(row)
    return pd.DataFrame(rows), skipped


# ----------------------------------------------------------------------------------------------- paired tests


def _correctness(evaluation_dir: Path, name: str, level: str, split: str) -> pd.Series:
    """Return whether each test prediction of a model is right, indexed by image path or subject id."""
    file_name, key = (("predictions.parquet", "path") if level == "slice"
                      else ("subject_predictions.parquet", "subject_id"))
    frame = read_parquet(evaluation_dir / name / file_name)
    rows = frame[frame["split"] == split]
    return pd.Series((rows["label_index"] == rows["pred_index"]).to_numpy(), index=rows[key].to_numpy(), name=name)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Return Holm-Bonferroni adjusted p-values (same order as given)."""
    values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(values)
    adjusted = np.empty_like(values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(values) - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def pairwise_mcnemar(evaluation_dir: str | Path, model_names: Sequence[str], level: str = "slice",
                     split: str = "test") -> pd.DataFrame:
    """Return McNemar's test for every pair of models on the same test images (or subjects), Holm-adjusted."""
    if level not in ("slice", "subject"):
        raise ValueError(f"level must be 'slice' or 'subject', got {level!r}.")
    evaluation_dir = Path(evaluation_dir)
    correct = {name: _correctness(evaluation_dir, name, level, split) for name in model_names}
    rows = []
    for first, second in itertools.combinations(model_names, 2):
        shared = correct[first].index.intersection(correct[second].index)
        if len(shared) == 0:
            raise ValueError(f"{first} and {second} share no {split} {level}s: were they evaluated on the same split?")
        result = mcnemar_test(correct[first].loc[shared].to_numpy(), correct[second].loc[shared].to_numpy())
        rows.append({"model_a": first, "model_b": second, "level": level, "paired": len(shared), **result})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_value_holm"] = holm_adjust(table["p_value"])
    return table


# ----------------------------------------------------------------------------------------------- figures


def plot_metric_bars(table: pd.DataFrame, metrics: Sequence[str], title: str):
    """Return bar charts of each metric per model with its interval as error bars."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4 * len(metrics), 4.2))
    axes = np.atleast_1d(figure.subplots(1, len(metrics)))
    positions = np.arange(len(table))
    for axis, metric in zip(axes, metrics):
        values = table[metric].astype(float).to_numpy()
        low = values - table[f"{metric}_low"].astype(float).to_numpy()
        high = table[f"{metric}_high"].astype(float).to_numpy() - values
        axis.bar(positions, values, yerr=np.nan_to_num(np.vstack([low, high])), capsize=4, color="#4c72b0")
        axis.set(xticks=positions, ylim=(0, 1), title=metric.replace("_", " "))
        axis.set_xticklabels(table["model"], rotation=30, ha="right", fontsize=8)
    figure.suptitle(title)
    return figure


def plot_accuracy_latency(table: pd.DataFrame, title: str, metric: str = "balanced_accuracy"):
    """Return a scatter of a test metric (with its interval) against median batch-1 latency."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    axis = figure.subplots()
    for _, row in table.iterrows():
        error = [[row[metric] - row[f"{metric}_low"]], [row[f"{metric}_high"] - row[metric]]]
        axis.errorbar(row["latency_ms_median"], row[metric], yerr=np.nan_to_num(np.asarray(error, float)), fmt="o",
                      capsize=4)
        axis.annotate(row["model"], (row["latency_ms_median"], row[metric]), textcoords="offset points",
                      xytext=(5, 5), fontsize=8)
    axis.set(xlabel="latency, batch 1 (ms, median)", ylabel=metric.replace("_", " "), ylim=(0, 1), title=title)
    latencies = table["latency_ms_median"].astype(float)
    # A log axis only where latencies span an order of magnitude; otherwise its ticks are unreadable.
    if latencies.min() > 0 and latencies.max() / latencies.min() > 10:
        axis.set_xscale("log")
    axis.margins(x=0.15)
    return figure


# ----------------------------------------------------------------------------------------------- the stage


def write_comparison(out_dir: str | Path, table: pd.DataFrame, tests: dict[str, pd.DataFrame], skipped: list,
                     data_label: str, hardware: dict | None = None) -> dict:
    """Write comparison/table.csv, mcnemar_<level>.csv, comparison.json and the two figures; return the JSON."""
    out_dir = Path(out_dir)
    if table.empty:
        raise ValueError(f"Nothing to compare: every model was skipped ({skipped}).")
    write_csv(out_dir / "table.csv", table)
    for level, frame in tests.items():
        write_csv(out_dir / f"mcnemar_{level}.csv", frame)
    suffix = f" ({data_label})" if data_label else ""
    metrics = [metric for metric in CHART_METRICS if table[metric].notna().any()]
    bars = plot_metric_bars(table, metrics, f"Test metrics with 95% subject-bootstrap intervals{suffix}")
    figures = [save_figure(bars, out_dir / "metrics_bars.png").name]
    if "latency_ms_median" in table:
        figures.append(save_figure(plot_accuracy_latency(table, f"Balanced accuracy against latency{suffix}"),
                                   out_dir / "accuracy_latency.png").name)
    record = {"data_label": data_label, "models": table["model"].tolist(), "skipped": skipped,
              "hardware": hardware, "figures": figures,
              "mcnemar": {level: frame.to_dict(orient="records") for level, frame in tests.items()},
              "note": "McNemar on slices treats slices as independent, which they are not; the subject-level "
                      "test is the honest one, and with few test subjects it has little power."}
    write_json(out_dir / "comparison.json", record)
    return record


def compare_models(settings: config.Settings, data_label: str, model_names: Sequence[str] | None = None,
                   repeats: int = LATENCY_REPEATS) -> dict:
    """Measure each trained model's speed, join its recorded cost and test metrics, test pairs; write comparison/."""
    from alzlib.environment import hardware
    from alzlib.training import load_trained_model

    names = list(model_names or config.MODEL_NAMES)
    inference, skipped = {}, []
    for name in names:
        path = settings.paths.models / f"{name}.keras"
        if not path.is_file():
            skipped.append({"model": name, "reason": f"{path} does not exist (model not trained)"})
            continue
        inference[name] = measure_inference(load_trained_model(path), settings.profile.image_size, repeats)
    available = [name for name in names if name in inference]
    table, not_evaluated = comparison_table(settings.paths.models, settings.paths.evaluation, available, inference)
    compared = table["model"].tolist() if len(table) else []
    tests = {level: pairwise_mcnemar(settings.paths.evaluation, compared, level) for level in ("slice", "subject")}
    return write_comparison(settings.paths.comparison, table, tests, skipped + not_evaluated, data_label, hardware())
