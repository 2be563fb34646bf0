"""Model comparison (notebook 11): one table of cost and test metrics, paired differences between models, charts.

Every metric is read from the files notebook 09 wrote; what is computed here is inference speed and, for every
pair of models, the difference in balanced accuracy with a paired subject bootstrap (the comparison's headline).
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
from alzlib.evaluation import (
    BOOTSTRAP_METRICS,
    percentile_interval,
    resample_subject_counts,
    soft_vote,
    subject_codes,
    subject_confusions,
    subject_strata,
    summary_rows,
)
from alzlib.metrics import CONFUSION_METRICS, confusion_scores
from alzlib.storage import read_json, read_parquet, save_figure, write_csv, write_json

LATENCY_REPEATS = 30
WARMUP_CALLS = 3
THROUGHPUT_BATCH = 32
CHART_METRICS = ("balanced_accuracy", "macro_f1", "macro_auc")
LEVEL_KEYS = {"slice": "path", "subject": "subject_id"}
LOWER_IS_BETTER = ("mean_absolute_error",)
PAIRED_COLUMNS = ["model_a", "model_b", "level", "metric", "subjects", "rows", "score_a", "score_b", "difference",
                  "low", "high", "p_value", "p_value_holm", "supported", "rule", "sentence", "undefined_resamples"]
PAIRED_RESAMPLES = 2000
SUPPORT_ALPHA = 0.05
# Below this many paired subjects a class-stratified bootstrap has almost no distinct resamples (one subject per class
# gives every resample the same score: measured on the smoke run, 4 subjects, intervals of zero width and p = 0.01),
# so no difference is called supported; the sentence says inconclusive.
MIN_PAIRED_SUBJECTS = 10
SUPPORT_RULE_SHORT = ("supported when Holm-adjusted p < 0.05, the 95% interval excludes 0 and at least "
                      f"{MIN_PAIRED_SUBJECTS} subjects are paired")
SUPPORT_RULE = (
    "A difference (model_a minus model_b) is supported by the data when its Holm-adjusted two-sided bootstrap p-value "
    f"is below 0.05, its 95% percentile interval excludes 0 and at least {MIN_PAIRED_SUBJECTS} subjects are paired "
    "(fewer: inconclusive). The bootstrap resamples test subjects with "
    "replacement within each true class, the same subjects for both models (at slice level a subject's slices "
    "enter together); the p-value is twice the smaller share of resampled differences at or below 0 and at or "
    "above 0, with one added to each count and to the number of resamples; Holm's correction runs over every "
    "model pair at one level.")


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


def _model_file(models_dir: Path, name: str) -> Path | None:
    """Return the saved model file of `name`: its .keras file, else another non-JSON file named after it (or None)."""
    keras_file = models_dir / f"{name}.keras"
    if keras_file.is_file():
        return keras_file
    others = sorted(path for path in models_dir.glob(f"{name}.*") if path.suffix != ".json" and path.is_file())
    return others[0] if others else None


def recipe_facts(models_dir: str | Path, name: str) -> dict:
    """Return parameters, file size, training time and weights source of one model from its recipe record."""
    models_dir = Path(models_dir)
    record = read_json(models_dir / f"{name}.json")
    model_file = _model_file(models_dir, name)
    return {"model": name, **_parameter_counts(record),
            "file_size_mb": model_file.stat().st_size / 2**20 if model_file else None,
            "training_seconds": record.get("training_seconds"), "epochs_run": record.get("epochs_run"),
            "weights": record.get("weights")}


def test_metrics(evaluation_dir: str | Path, name: str, level: str = "slice") -> dict:
    """Return a model's test metrics with their intervals, read from its metrics.json (nothing recomputed)."""
    metrics = read_json(Path(evaluation_dir) / name / "metrics.json")
    rows = [row for row in summary_rows(metrics, "test") if row["level"] == level]
    if not rows:
        raise ValueError(f"{name}'s metrics.json has no {level}-level test results.")
    row = rows[0]
    keep = [key for key in row if key.startswith(BOOTSTRAP_METRICS) or key in (
        "ece", "ece_low", "ece_high", "ece_after_temperature", "images", "subjects", "data_label")]
    return {key: row[key] for key in keep}


def comparison_table(models_dir: str | Path, evaluation_dir: str | Path, model_names: Sequence[str],
                     inference: dict[str, dict] | None = None, level: str = "slice") -> tuple[pd.DataFrame, list]:
    """Return one row per model (cost, speed, test metrics with intervals) and the models skipped with reasons.

    `inference` maps a model to its speed columns; a model without an entry gets a `latency_note` saying why.
    """
    rows, skipped = [], []
    for name in model_names:
        try:
            row = {**recipe_facts(models_dir, name), **test_metrics(evaluation_dir, name, level)}
        except (FileNotFoundError, ValueError) as error:
            skipped.append({"model": name, "reason": str(error)})
            continue
        speed = (inference or {}).get(name)
        row.update(speed if speed is not None else {"latency_note": f"not measured: {name} is not a Keras model"})
        rows.append(row)
    return pd.DataFrame(rows), skipped


# ----------------------------------------------------------------------------------------------- paired differences


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


def _checked_predictions(name: str, frame: pd.DataFrame, level: str) -> pd.DataFrame:
    """Return one model's rows keyed by path (slice) or subject_id (subject), soft-voting slices at subject level."""
    key = LEVEL_KEYS[level]
    needed = {"subject_id", "label_index", "pred_index", key}
    if not isinstance(frame, pd.DataFrame) or not needed <= set(frame.columns):
        present = sorted(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise ValueError(f"{name}'s predictions need columns {sorted(needed)} at {level} level; got {present}.")
    if "split" in frame.columns and frame["split"].nunique() > 1:
        raise ValueError(f"{name}'s predictions mix splits {sorted(set(frame['split']))}: pass the rows of one split.")
    if level == "subject" and frame["subject_id"].duplicated().any():
        frame = _vote_subjects(name, frame)
    repeated = frame.loc[frame[key].duplicated(), key]
    if len(repeated):
        raise ValueError(f"{name}'s predictions repeat {key} values, e.g. {repeated.iloc[0]!r}: one row per {key}.")
    return frame[["subject_id", "label_index", "pred_index"]].set_axis(pd.Index(frame[key].to_numpy()), axis=0)


def _vote_subjects(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Return one row per subject: the soft vote (mean prob_<class> columns) of a model's slice predictions."""
    columns = [column for column in frame.columns if column.startswith("prob_")]
    if not columns:
        raise ValueError(f"{name}'s predictions have several rows per subject and no prob_<class> columns to vote.")
    subjects, labels, votes = soft_vote(frame[columns].to_numpy(), frame["subject_id"].to_numpy(),
                                        frame["label_index"].to_numpy())
    return pd.DataFrame({"subject_id": subjects, "label_index": labels, "pred_index": votes.argmax(axis=1)})


def _paired_rows(first: pd.DataFrame, second: pd.DataFrame, names: tuple[str, str], level: str) -> pd.DataFrame:
    """Return the rows both models predicted (subject_id, label_index, pred_a, pred_b), checking their labels agree."""
    shared = first.join(second, how="inner", lsuffix="_a", rsuffix="_b")
    if shared.empty:
        raise ValueError(f"{names[0]} and {names[1]} share no {level}s: were they evaluated on the same subjects?")
    disagree = shared[(shared["label_index_a"] != shared["label_index_b"])
                      | (shared["subject_id_a"] != shared["subject_id_b"])]
    if len(disagree):
        raise ValueError(f"{names[0]} and {names[1]} give {len(disagree)} shared {level}s different labels or "
                         f"subjects, e.g. {disagree.index[0]!r}: they must be scored against the same truth.")
    return pd.DataFrame({"subject_id": shared["subject_id_a"], "label_index": shared["label_index_a"],
                         "pred_a": shared["pred_index_a"], "pred_b": shared["pred_index_b"]})


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Return the two-sided bootstrap p-value of difference = 0: twice the smaller tail share (+1 to each count)."""
    resamples = len(differences)
    at_or_below, at_or_above = np.sum(differences <= 0), np.sum(differences >= 0)
    return float(min(1.0, 2 * min(at_or_below + 1, at_or_above + 1) / (resamples + 1)))


def _pair_difference(rows: pd.DataFrame, metric: str, n_bootstrap: int, seed: int) -> dict:
    """Return the difference a - b of `metric` on paired rows, its percentile interval and bootstrap p-value."""
    labels = rows["label_index"].to_numpy(np.int64)
    classes = int(max(labels.max(), rows["pred_a"].max(), rows["pred_b"].max())) + 1
    codes, num_subjects = subject_codes(rows["subject_id"].to_numpy(), len(rows))
    counts = resample_subject_counts(subject_strata(codes, labels, num_subjects), n_bootstrap, seed).astype(float)
    scores = {}
    for column in ("pred_a", "pred_b"):
        per_subject = subject_confusions(codes, num_subjects, labels, rows[column].to_numpy(), classes)
        batch = np.vstack([per_subject.sum(axis=0, keepdims=True), counts @ per_subject])
        scores[column] = confusion_scores(batch.reshape(-1, classes, classes))[metric]
    differences = scores["pred_a"] - scores["pred_b"]
    interval = percentile_interval(differences[1:], differences[0])
    return {"subjects": num_subjects, "rows": len(rows), "score_a": float(scores["pred_a"][0]),
            "score_b": float(scores["pred_b"][0]), "difference": interval["estimate"], "low": interval["low"],
            "high": interval["high"], "p_value": bootstrap_p_value(differences[1:][np.isfinite(differences[1:])]),
            "undefined_resamples": interval["undefined_resamples"]}


def _sentence(row: dict) -> str:
    """Return one plain line that states a pair's difference, interval and whether the data support it."""
    if row["supported"]:
        a_higher = row["difference"] > 0
        better = row["model_a"] if a_higher != (row["metric"] in LOWER_IS_BETTER) else row["model_b"]
        verdict = f"supported by the data: {better} is better"
    elif row["subjects"] < MIN_PAIRED_SUBJECTS:
        verdict = (f"inconclusive: {row['subjects']} paired subjects are too few for the bootstrap (at least "
                   f"{MIN_PAIRED_SUBJECTS} needed)")
    else:
        verdict = "not supported by the data"
    p_value = f"{row['p_value_holm']:.2f}" if row["p_value_holm"] >= 0.01 else f"{row['p_value_holm']:.3f}"
    return (f"{row['model_a']} vs {row['model_b']}: {row['difference']:+.2f} [{row['low']:.2f}, {row['high']:.2f}], "
            f"{verdict} (Holm p = {p_value})")


def paired_differences(predictions: dict[str, pd.DataFrame], level: str = "subject",
                       metric: str = "balanced_accuracy", n_bootstrap: int = PAIRED_RESAMPLES,
                       seed: int = config.DEFAULT_SEED) -> pd.DataFrame:
    """Return, for every pair of models, the difference in `metric` (a minus b) with a paired subject bootstrap.

    Each frame holds subject_id, label_index and pred_index (slice level: also path); rows align on path (slice) or
    subject_id (subject level; slice rows with prob_<class> columns are soft-voted first), and only rows both models
    predicted are paired (`subjects`, `rows`). Every resample draws subjects with replacement within each true class
    (so no resample lacks a class) and scores both models on the same drawn subjects; at slice level a subject's
    slices enter together. Columns: model_a, model_b, level, metric, subjects, rows, score_a, score_b, difference,
    low, high (95% percentile interval), p_value, p_value_holm, supported, rule, sentence.

    The rule (SUPPORT_RULE): a difference is supported by the data when its Holm-adjusted two-sided bootstrap
    p-value (family: every pair in this call) is below 0.05 and its 95% interval excludes 0.
    """
    if level not in LEVEL_KEYS:
        raise ValueError(f"level must be one of {sorted(LEVEL_KEYS)}, got {level!r}.")
    if metric not in CONFUSION_METRICS:
        raise ValueError(f"metric must be one of {CONFUSION_METRICS}, got {metric!r}.")
    if len(predictions) < 2:
        raise ValueError(f"Paired differences need at least two models; got {list(predictions)}.")
    checked = {name: _checked_predictions(name, frame, level) for name, frame in predictions.items()}
    rows = []
    for first, second in itertools.combinations(checked, 2):
        paired = _paired_rows(checked[first], checked[second], (first, second), level)
        rows.append({"model_a": first, "model_b": second, "level": level, "metric": metric,
                     **_pair_difference(paired, metric, n_bootstrap, seed)})
    table = pd.DataFrame(rows)
    table["p_value_holm"] = holm_adjust(table["p_value"])
    excludes_zero = (table["low"] > 0) | (table["high"] < 0)
    table["supported"] = ((table["p_value_holm"] < SUPPORT_ALPHA) & excludes_zero
                          & (table["subjects"] >= MIN_PAIRED_SUBJECTS))
    table["rule"] = SUPPORT_RULE_SHORT
    table["sentence"] = [_sentence(row) for row in table.to_dict(orient="records")]
    return table[PAIRED_COLUMNS]


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
    """Return a scatter of a test metric (with its interval) against median batch-1 latency (models with one)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    axis = figure.subplots()
    timed = table[pd.to_numeric(table["latency_ms_median"], errors="coerce").notna()]
    for _, row in timed.iterrows():
        error = [[row[metric] - row[f"{metric}_low"]], [row[f"{metric}_high"] - row[metric]]]
        axis.errorbar(row["latency_ms_median"], row[metric], yerr=np.nan_to_num(np.asarray(error, float)), fmt="o",
                      capsize=4)
        axis.annotate(row["model"], (row["latency_ms_median"], row[metric]), textcoords="offset points",
                      xytext=(5, 5), fontsize=8)
    axis.set(xlabel="latency, batch 1 (ms, median)", ylabel=metric.replace("_", " "), ylim=(0, 1), title=title)
    latencies = timed["latency_ms_median"].astype(float)
    # A log axis only where latencies span an order of magnitude; otherwise its ticks are unreadable.
    if len(latencies) and latencies.min() > 0 and latencies.max() / latencies.min() > 10:
        axis.set_xscale("log")
    axis.margins(x=0.15)
    return figure


def plot_paired_differences(table: pd.DataFrame, title: str):
    """Return a forest plot: each pair's difference (a minus b) with its 95% interval; supported pairs filled."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 1.2 + 0.45 * len(table)), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(table))[::-1]
    for position, row in zip(positions, table.itertuples(), strict=True):
        axis.errorbar(row.difference, position, xerr=[[row.difference - row.low], [row.high - row.difference]],
                      fmt="o", capsize=4, color="#c44e52" if row.supported else "#4c72b0",
                      markerfacecolor=None if row.supported else "white")
    axis.axvline(0, color="grey", linestyle="--", linewidth=1)
    axis.plot([], [], "o", color="#c44e52", label="supported by the data")
    axis.plot([], [], "o", color="#4c72b0", markerfacecolor="white", label="not supported")
    axis.legend(fontsize=7, loc="best")
    axis.set_yticks(positions, [f"{row.model_a} − {row.model_b}" for row in table.itertuples()], fontsize=8)
    metric = table["metric"].iloc[0].replace("_", " ") if len(table) else ""
    axis.set(xlabel=f"difference in {metric} (95% paired subject bootstrap)", title=title)
    return figure


# ----------------------------------------------------------------------------------------------- the stage


def evaluated_predictions(evaluation_dir: str | Path, model_names: Sequence[str], level: str,
                          split: str = "test") -> dict[str, pd.DataFrame]:
    """Return each model's `split` predictions as notebook 09 wrote them (slice rows, or subject soft votes)."""
    file_name = "predictions.parquet" if level == "slice" else "subject_predictions.parquet"
    frames = {name: read_parquet(Path(evaluation_dir) / name / file_name) for name in model_names}
    return {name: frame[frame["split"] == split] for name, frame in frames.items()}


def crossval_predictions(crossval_dir: str | Path, model_names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Return the pooled out-of-fold predictions of every model with `<crossval>/<model>/oof_predictions.parquet`.

    The design's models come first, in `model_names` order, then any other model found, by name.
    """
    crossval_dir = Path(crossval_dir)
    found = sorted(path.parent.name for path in crossval_dir.glob("*/oof_predictions.parquet"))
    ordered = [name for name in model_names if name in found] + [name for name in found if name not in model_names]
    return {name: read_parquet(crossval_dir / name / "oof_predictions.parquet") for name in ordered}


def paired_difference_tables(predictions_by_level: dict[str, dict[str, pd.DataFrame]],
                             n_bootstrap: int = PAIRED_RESAMPLES, seed: int = config.DEFAULT_SEED) -> pd.DataFrame:
    """Return the paired differences in balanced accuracy at every level given (subject first), in one table."""
    tables = [paired_differences(frames, level, "balanced_accuracy", n_bootstrap, seed)
              for level, frames in predictions_by_level.items()]
    return pd.concat(tables, ignore_index=True)


def paired_record(table: pd.DataFrame | None, source: str, skipped: str | None = None) -> dict:
    """Return the comparison.json entry of a paired-differences table: its rule, source and rows (or why skipped)."""
    if table is None:
        return {"skipped": skipped, "rule": SUPPORT_RULE, "source": source}
    return {"rule": SUPPORT_RULE, "source": source, "metric": "balanced_accuracy", "headline_level": "subject",
            "resamples": int(PAIRED_RESAMPLES), "confidence": 0.95,
            "sentences": table.loc[table["level"] == "subject", "sentence"].tolist(),
            "rows": table.to_dict(orient="records")}


def write_comparison(out_dir: str | Path, table: pd.DataFrame, differences: pd.DataFrame | None, skipped: list,
                     data_label: str, hardware: dict | None = None, crossval: dict | None = None) -> dict:
    """Write comparison/table.csv, paired_differences.csv, comparison.json and the figures; return the JSON.

    `differences` is `paired_difference_tables` of the test predictions (None: fewer than two models); `crossval`
    the comparison.json entry of the cross-validated differences (written to paired_differences_crossval.csv by
    the caller).
    """
    out_dir = Path(out_dir)
    if table.empty:
        raise ValueError(f"Nothing to compare: every model was skipped ({skipped}).")
    write_csv(out_dir / "table.csv", table)
    suffix = f" ({data_label})" if data_label else ""
    metrics = [metric for metric in CHART_METRICS if table[metric].notna().any()]
    bars = plot_metric_bars(table, metrics, f"Test metrics with 95% subject-bootstrap intervals{suffix}")
    figures = [save_figure(bars, out_dir / "metrics_bars.png").name]
    if "latency_ms_median" in table and table["latency_ms_median"].notna().any():
        figures.append(save_figure(plot_accuracy_latency(table, f"Balanced accuracy against latency{suffix}"),
                                   out_dir / "accuracy_latency.png").name)
    if differences is not None:
        write_csv(out_dir / "paired_differences.csv", differences)
        subject_rows = differences[differences["level"] == "subject"]
        figure = plot_paired_differences(subject_rows, f"Paired differences, subject level, test split{suffix}")
        figures.append(save_figure(figure, out_dir / "paired_differences.png").name)
    record = {"data_label": data_label, "models": table["model"].tolist(), "skipped": skipped,
              "hardware": hardware, "figures": figures,
              "paired_differences": paired_record(differences, "test split of the single split (notebook 09)",
                                                  "fewer than two models evaluated"),
              "paired_differences_crossval": crossval or paired_record(None, "crossval/<model>/oof_predictions.parquet",
                                                                       "not computed"),
              "note": "Slice-level McNemar tests were removed (slices of one subject are not independent): the paired "
                      "subject bootstrap above replaces them at subject and at slice level."}
    write_json(out_dir / "comparison.json", record)
    return record


def _compare_crossval(settings: config.Settings, names: Sequence[str], out_dir: Path) -> dict:
    """Write paired_differences_crossval.csv from pooled out-of-fold predictions; return its comparison.json entry."""
    crossval_dir = settings.paths.root / "crossval"
    source = f"{crossval_dir}/<model>/oof_predictions.parquet (pooled out-of-fold test predictions)"
    frames = crossval_predictions(crossval_dir, names)
    if len(frames) < 2:
        return paired_record(None, source, f"cross-validated predictions found for {len(frames)} model(s) "
                                           f"({', '.join(frames) or 'none'}); at least two are needed")
    levels = {level: frames for level in ("subject", "slice")}
    table = paired_difference_tables(levels, seed=settings.seed)
    write_csv(out_dir / "paired_differences_crossval.csv", table)
    return paired_record(table, source)


def _inference_or_reason(settings: config.Settings, name: str, repeats: int) -> tuple[dict | None, str | None]:
    """Return a model's measured speed (None for a model that is not Keras), or None and why it is not compared.

    Deep models (config.ALL_MODEL_NAMES) are Keras models and need their .keras file; any other model (the
    non-deep baselines) needs only its recipe record, and is compared without a latency.
    """
    from alzlib.training import load_trained_model

    path = settings.paths.models / f"{name}.keras"
    if path.is_file():
        return measure_inference(load_trained_model(path), settings.profile.image_size, repeats), None
    record = settings.paths.models / f"{name}.json"
    if name not in config.ALL_MODEL_NAMES and record.is_file():
        return None, None
    return None, f"{path if name in config.ALL_MODEL_NAMES else record} does not exist (model not trained)"


def compare_models(settings: config.Settings, data_label: str, model_names: Sequence[str] | None = None,
                   repeats: int = LATENCY_REPEATS) -> dict:
    """Measure each trained model's speed, join its recorded cost and test metrics, compare pairs; write comparison/.

    `model_names` None: the run's models (settings.models) and the non-deep baselines (config.BASELINE_MODEL_NAMES).
    Pairs are compared by paired subject bootstrap on the test split, and on pooled cross-validated predictions
    where `<outputs>/crossval/<model>/oof_predictions.parquet` exists for two or more models.
    """
    from alzlib.environment import hardware

    names = list(model_names or [*settings.models, *config.BASELINE_MODEL_NAMES])
    inference, trained, skipped = {}, [], []
    for name in names:
        speed, reason = _inference_or_reason(settings, name, repeats)
        if reason:
            skipped.append({"model": name, "reason": reason})
            continue
        trained.append(name)
        if speed is not None:
            inference[name] = speed
    table, not_evaluated = comparison_table(settings.paths.models, settings.paths.evaluation, trained, inference)
    compared = table["model"].tolist() if len(table) else []
    differences = None
    if len(compared) >= 2:
        levels = {level: evaluated_predictions(settings.paths.evaluation, compared, level)
                  for level in ("subject", "slice")}
        differences = paired_difference_tables(levels, seed=settings.seed)
    out_dir = settings.paths.comparison
    crossval = _compare_crossval(settings, names, out_dir)
    return write_comparison(out_dir, table, differences, skipped + not_evaluated, data_label, hardware(), crossval)
