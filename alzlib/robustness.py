"""MRI-specific corruptions of test images and how much each model's accuracy falls under them (ImageNet-C style)."""

from __future__ import annotations

import io as bytes_io
import itertools
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import sampling, storage
from alzlib.evaluation import soft_vote
from alzlib.metrics import balanced_accuracy

SEVERITIES = (1, 2, 3, 4, 5)
CLEAN = "clean"
MEAN_ROW = "mean"
METRICS = ("accuracy", "balanced_accuracy")
# Spatial parameters are stated for a 128-pixel image and scaled to the image's longest side, so a
# severity means the same anatomical blur or shift on the 64-pixel smoke images and the 224-pixel full ones.
REFERENCE_SIZE = 128

PredictFunction = Callable[[np.ndarray], np.ndarray]


def _severity_value(values: Sequence[float], severity: int) -> float:
    """Return the parameter of `severity` (1..5) from a five-value table."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in {SEVERITIES}, got {severity!r}.")
    return values[int(severity) - 1]


def _check_image(image: np.ndarray) -> np.ndarray:
    """Raise ValueError unless `image` is a 2D uint8 array; return it as float64."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"Expected a uint8 greyscale image of shape (height, width), got shape {shape} dtype {dtype}.")
    return image.astype(np.float64)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image back to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _scale(image: np.ndarray) -> float:
    """Return the image's longest side relative to the reference size (at least 0.5)."""
    # The floor keeps severity 1 visible on tiny images: a sigma much below 0.4 pixel changes no grey level.
    return max(max(image.shape) / REFERENCE_SIZE, 0.5)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add zero-mean Gaussian noise (sigma in grey levels)."""
    sigma = _severity_value((4, 8, 13, 20, 30), severity)
    pixels = _check_image(image)
    return _to_uint8(pixels + sigma * rng.standard_normal(pixels.shape))


def rician_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add MRI magnitude noise: Gaussian noise on the real and imaginary channels, then the modulus."""
    sigma = _severity_value((4, 8, 13, 20, 30), severity)
    pixels = _check_image(image)
    real = pixels + sigma * rng.standard_normal(pixels.shape)
    imaginary = sigma * rng.standard_normal(pixels.shape)
    return _to_uint8(np.hypot(real, imaginary))


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur with a Gaussian kernel whose width grows with severity."""
    from scipy import ndimage

    sigma = _severity_value((0.8, 1.2, 1.7, 2.4, 3.2), severity)
    pixels = _check_image(image)
    return _to_uint8(ndimage.gaussian_filter(pixels, sigma=sigma * _scale(pixels), mode="nearest"))


def motion_ghosting(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Simulate motion during acquisition: a translation phase error on a random subset of k-space lines."""
    fraction, shift = _severity_value(((0.06, 0.03), (0.12, 0.05), (0.18, 0.07), (0.25, 0.09), (0.35, 0.12)), severity)
    pixels = _check_image(image)
    height, width = pixels.shape
    # Draws come in the same order at every severity, so one seed gives nested line sets and one direction.
    lines = rng.permutation(height)[: max(1, int(round(fraction * height)))]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    shift_y, shift_x = shift * max(height, width) * np.sin(angle), shift * max(height, width) * np.cos(angle)
    kspace = np.fft.fft2(pixels)
    frequency_y = np.fft.fftfreq(height)[lines, None]
    frequency_x = np.fft.fftfreq(width)[None, :]
    kspace[lines, :] *= np.exp(-2j * np.pi * (frequency_y * shift_y + frequency_x * shift_x))
    return _to_uint8(np.abs(np.fft.ifft2(kspace)))


def bias_field(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiply by a smooth random intensity inhomogeneity exp(alpha * polynomial), as from a receive coil."""
    alpha = _severity_value((0.1, 0.2, 0.3, 0.45, 0.6), severity)
    pixels = _check_image(image)
    height, width = pixels.shape
    y, x = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    terms = np.stack([x, y, x * y, x**2 - 1 / 3, y**2 - 1 / 3, x**3, y**3])
    surface = np.tensordot(rng.standard_normal(len(terms)), terms, axes=1)
    # Scale the field over the head, not the corners: polynomials peak in the black background where a
    # multiplicative field changes nothing, which would make the visible inhomogeneity arbitrarily weak.
    foreground = pixels > 0.1 * pixels.max()
    region = surface[foreground] if foreground.any() else surface
    surface = (surface - region.mean()) / max(np.abs(region - region.mean()).max(), 1e-12)
    return _to_uint8(pixels * np.exp(alpha * surface))


def contrast_change(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink intensities towards the image mean."""
    factor = _severity_value((0.75, 0.6, 0.45, 0.3, 0.15), severity)
    pixels = _check_image(image)
    mean = pixels.mean()
    return _to_uint8(mean + factor * (pixels - mean))


def brightness_shift(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a constant offset to every pixel, background included."""
    offset = _severity_value((15, 30, 50, 70, 95), severity)
    return _to_uint8(_check_image(image) + offset)


def gamma_change(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply a gamma curve above 1 (darker mid-tones), as from a different windowing."""
    gamma = _severity_value((1.3, 1.6, 2.0, 2.5, 3.2), severity)
    return _to_uint8(255.0 * (_check_image(image) / 255.0) ** gamma)


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Re-encode as JPEG at a falling quality."""
    from PIL import Image

    quality = _severity_value((50, 30, 18, 10, 5), severity)
    _check_image(image)
    buffer = bytes_io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), dtype=np.uint8).copy()


def resolution_loss(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Down-sample by area averaging, then up-sample bilinearly to the original size."""
    from PIL import Image

    factor = _severity_value((1.5, 2.0, 3.0, 4.0, 6.0), severity)
    _check_image(image)
    height, width = image.shape
    small_size = (max(1, int(round(width / factor))), max(1, int(round(height / factor))))
    small = Image.fromarray(image, mode="L").resize(small_size, Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8).copy()


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "rician_noise": rician_noise,
    "gaussian_blur": gaussian_blur,
    "motion_ghosting": motion_ghosting,
    "bias_field": bias_field,
    "contrast": contrast_change,
    "brightness": brightness_shift,
    "gamma": gamma_change,
    "jpeg_compression": jpeg_compression,
    "resolution_loss": resolution_loss,
}


def _corruption_function(name: str) -> Callable:
    """Return the corruption called `name`, or raise ValueError listing the known ones."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}.")
    return CORRUPTIONS[name]


def _image_rng(seed: int, name: str, index: int = 0) -> np.random.Generator:
    """Return the generator of one image and corruption: the same at every severity and for every model."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(index)])


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Return `image` (uint8, H x W) with corruption `name` at `severity` (1..5), deterministic for `seed`."""
    function = _corruption_function(name)
    return function(image, severity, _image_rng(seed, name))


def _check_batch(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raise ValueError unless images are N x H x W uint8 with N integer labels."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"images_uint8 must be a non-empty uint8 array (N, H, W), got shape {images.shape} "
                         f"dtype {images.dtype}.")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {len(images)} integers, got shape {labels.shape} dtype {labels.dtype}.")
    return images, labels


def _score(probabilities: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray | None) -> dict:
    """Return accuracy and balanced accuracy per image (and per subject when ids are given)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(f"predict_fn must return probabilities of shape ({len(labels)}, classes), "
                         f"got {probabilities.shape}.")
    predictions = probabilities.argmax(axis=1)
    scores = {"accuracy": float(np.mean(predictions == labels)),
              "balanced_accuracy": balanced_accuracy(labels, predictions)}
    if subject_ids is not None:
        _, subject_labels, subject_probabilities = soft_vote(probabilities, subject_ids, labels)
        subject_predictions = subject_probabilities.argmax(axis=1)
        scores.update(n_subjects=len(subject_labels),
                      subject_accuracy=float(np.mean(subject_predictions == subject_labels)),
                      subject_balanced_accuracy=balanced_accuracy(subject_labels, subject_predictions))
    return scores


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt every image of an N x H x W uint8 batch; image i gets the same noise at every severity."""
    function = _corruption_function(name)
    return np.stack([function(image, severity, _image_rng(seed, name, index)) for index, image in enumerate(images)])


def evaluate_robustness(
    predict_fn: PredictFunction | Mapping[str, PredictFunction],
    images_uint8: np.ndarray,
    labels: np.ndarray,
    subject_ids: Sequence | None = None,
    seed: int = 0,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
) -> pd.DataFrame:
    """Score each model on the clean images and on every corruption and severity.

    Args:
        predict_fn: uint8 images (N, H, W) -> class probabilities (N, C); or a mapping model name -> such a function.
        images_uint8, labels: the test images and their integer labels.
        subject_ids: optional subject of each image; adds subject-level scores (probabilities averaged per subject).

    Returns:
        One row per model, corruption and severity (corruption "clean", severity 0 for the clean images) with
        accuracy, balanced_accuracy, n_images, mean_abs_difference (grey levels from the clean image) and,
        with subject ids, n_subjects, subject_accuracy and subject_balanced_accuracy.
    """
    images, labels = _check_batch(images_uint8, labels)
    models = dict(predict_fn) if isinstance(predict_fn, Mapping) else {"model": predict_fn}
    subjects = None if subject_ids is None else np.asarray(subject_ids)
    if subjects is not None and len(subjects) != len(images):
        raise ValueError(f"subject_ids has {len(subjects)} entries for {len(images)} images.")
    names = list(corruptions or CORRUPTIONS)
    # Check every name and severity before any model runs, not after minutes of predictions.
    for name in names:
        _corruption_function(name)
    for severity in severities:
        _severity_value(SEVERITIES, severity)
    # A generator keeps one corrupted batch in memory at a time (600 x 224 x 224 x 51 conditions would be 1.5 GB).
    conditions = ((name, int(severity), corrupt_batch(images, name, severity, seed))
                  for name in names for severity in severities)
    rows = []
    for corruption, severity, batch in itertools.chain([(CLEAN, 0, images)], conditions):
        difference = float(np.mean(np.abs(batch.astype(np.int16) - images.astype(np.int16))))
        for model_name, function in models.items():
            scores = _score(function(batch), labels, subjects)
            rows.append({"model": model_name, "corruption": corruption, "severity": severity,
                         "n_images": len(images), "mean_abs_difference": difference, **scores})
    return pd.DataFrame(rows)


def _errors(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Return the table with an `error` column (1 - metric), checking the columns it needs."""
    needed = {"model", "corruption", "severity", metric}
    if metric not in METRICS and not metric.startswith("subject_"):
        raise ValueError(f"metric must be one of {METRICS} (or a subject_ variant), got {metric!r}.")
    if not needed.issubset(table.columns):
        raise ValueError(f"Robustness table lacks columns {sorted(needed - set(table.columns))}.")
    return table.assign(error=1.0 - table[metric].astype(float))


def _ratio(numerator: float, denominator: float) -> float:
    """Return 100 * numerator / denominator, NaN where the denominator is not positive."""
    # The tolerance keeps a rounding residue of a zero rise (0.05 + 0.15 - 2 * 0.1) from making a huge ratio.
    return float(100.0 * numerator / denominator) if denominator > 1e-9 else float("nan")


def _model_corruption_errors(errors: pd.DataFrame, model: str, reference: str, clean: dict) -> list[dict]:
    """Return CE and relative CE of one model for every corruption."""
    rows = []
    for corruption in errors.loc[errors["corruption"] != CLEAN, "corruption"].unique():
        model_errors = errors[(errors["model"] == model) & (errors["corruption"] == corruption)]
        reference_errors = errors[(errors["model"] == reference) & (errors["corruption"] == corruption)]
        if sorted(model_errors["severity"]) != sorted(reference_errors["severity"]) or model_errors.empty:
            raise ValueError(f"Model {model!r} and reference {reference!r} differ in the severities of {corruption!r}.")
        model_sum, reference_sum = model_errors["error"].sum(), reference_errors["error"].sum()
        count = len(model_errors)
        rows.append({"model": model, "corruption": corruption, "clean_error": clean[model],
                     "error_sum": float(model_sum), "ce": _ratio(model_sum, reference_sum),
                     "relative_ce": _ratio(model_sum - count * clean[model], reference_sum - count * clean[reference])})
    return rows


def corruption_errors(table: pd.DataFrame, reference_model: str = "baseline_cnn",
                      metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Return ImageNet-C corruption errors (in %) normalised by `reference_model`.

    Error is 1 - `metric`. Per model and corruption: CE = sum over severities of the model's error divided by the
    reference's; relative CE = the same for the rise above each one's clean error. Rows with corruption "mean"
    hold mCE and relative mCE (means over corruptions, undefined ratios skipped; `corruptions_used` and
    `relative_corruptions_used` count the corruptions each mean covers).
    The reference model scores 100 by construction.
    """
    errors = _errors(table, metric)
    models = list(dict.fromkeys(errors["model"]))
    if reference_model not in models:
        raise ValueError(f"Reference model {reference_model!r} is not in the table; models: {models}.")
    clean_rows = errors[errors["corruption"] == CLEAN].groupby("model")["error"].mean()
    missing_clean = [model for model in models if model not in clean_rows.index]
    if missing_clean:
        raise ValueError(f"No clean row for models {missing_clean}: run evaluate_robustness on clean images too.")
    clean = clean_rows.to_dict()
    rows = [row for model in models for row in _model_corruption_errors(errors, model, reference_model, clean)]
    per_corruption = pd.DataFrame(rows)
    means = per_corruption.groupby("model", sort=False).agg(
        ce=("ce", "mean"), relative_ce=("relative_ce", "mean"), corruptions_used=("ce", "count"),
        relative_corruptions_used=("relative_ce", "count")).reset_index()
    means = means.assign(corruption=MEAN_ROW, clean_error=means["model"].map(clean), error_sum=np.nan)
    per_corruption = per_corruption.assign(corruptions_used=per_corruption["ce"].notna().astype(int),
                                           relative_corruptions_used=per_corruption["relative_ce"].notna().astype(int))
    return pd.concat([per_corruption, means], ignore_index=True)[
        ["model", "corruption", "clean_error", "error_sum", "ce", "relative_ce", "corruptions_used",
         "relative_corruptions_used"]]


def summarise_corruption_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """Return one row per model: clean error, mCE and relative mCE (from `corruption_errors`)."""
    means = errors[errors["corruption"] == MEAN_ROW]
    return means.rename(columns={"ce": "mce", "relative_ce": "relative_mce"})[
        ["model", "clean_error", "mce", "relative_mce", "corruptions_used", "relative_corruptions_used"]
    ].reset_index(drop=True)


def sample_test_rows(manifest: pd.DataFrame, count: int, seed: int = 0) -> pd.DataFrame:
    """Return up to `count` test rows of the manifest, stratified by label (sampling.stratified_sample)."""
    if count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}.")
    test = manifest[manifest["split"] == "test"]
    if test.empty:
        raise ValueError("The manifest has no test rows to corrupt.")
    return sampling.stratified_sample(test, count, seed, by="label").reset_index(drop=True)


def write_robustness_tables(table: pd.DataFrame, errors: pd.DataFrame, directory: str | os.PathLike) -> dict:
    """Write robustness.csv, corruption_errors.csv and mce_summary.csv under `directory`; return their paths."""
    directory = Path(directory)
    return {"robustness": storage.write_csv(directory / "robustness.csv", table),
            "corruption_errors": storage.write_csv(directory / "corruption_errors.csv", errors),
            "mce_summary": storage.write_csv(directory / "mce_summary.csv", summarise_corruption_errors(errors))}


def _with_clean(table: pd.DataFrame, corruption: str, metric: str) -> pd.DataFrame:
    """Return one corruption's rows plus each model's clean row as severity 0."""
    rows = table[(table["corruption"] == corruption) | (table["corruption"] == CLEAN)]
    severity = np.where(rows["corruption"] == CLEAN, 0, rows["severity"])
    return rows.assign(severity=severity)[["model", "severity", metric]]


def plot_robustness_curves(table: pd.DataFrame, metric: str = "balanced_accuracy", chance: float | None = None,
                           title: str = ""):
    """Return a Figure: one panel per corruption, `metric` against severity (0 = clean), a line per model."""
    from matplotlib.figure import Figure

    corruptions = [name for name in dict.fromkeys(table["corruption"]) if name != CLEAN]
    columns = min(5, max(1, len(corruptions)))
    rows = int(np.ceil(len(corruptions) / columns))
    figure = Figure(figsize=(3.0 * columns, 2.6 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    for axis, corruption in zip(axes, corruptions, strict=False):  # spare axes are hidden below
        frame = _with_clean(table, corruption, metric)
        for model, model_rows in frame.groupby("model", sort=False):
            ordered = model_rows.sort_values("severity")
            axis.plot(ordered["severity"], ordered[metric], marker="o", markersize=3, label=model)
        if chance is not None:
            axis.axhline(chance, color="grey", linestyle=":", linewidth=1)
        axis.set_title(corruption.replace("_", " "), fontsize=9)
        axis.set_xticks(range(0, max(SEVERITIES) + 1))
        axis.set_xlabel("severity (0 = clean)", fontsize=8)
    for axis in axes[len(corruptions):]:
        axis.set_visible(False)
    axes[0].set_ylabel(metric.replace("_", " "))
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=min(len(names), 5), fontsize=8)
    figure.suptitle(title or f"{metric.replace('_', ' ')} under corruption")
    return figure


def plot_robustness_heatmap(table: pd.DataFrame, metric: str = "balanced_accuracy", title: str = ""):
    """Return a Figure: models x corruptions, `metric` averaged over severities (clean column first)."""
    from matplotlib.figure import Figure

    means = table.groupby(["model", "corruption"], sort=False)[metric].mean().unstack("corruption")
    order = [CLEAN] + [name for name in dict.fromkeys(table["corruption"]) if name != CLEAN]
    means = means[[name for name in order if name in means.columns]]
    figure = Figure(figsize=(1.0 + 0.8 * means.shape[1], 1.2 + 0.5 * means.shape[0]), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(means.to_numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (row, column), value in np.ndenumerate(means.to_numpy()):
        axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                  color="white" if value < 0.6 else "black")
    axis.set_xticks(range(means.shape[1]), [name.replace("_", " ") for name in means.columns], rotation=45, ha="right")
    axis.set_yticks(range(means.shape[0]), means.index)
    figure.colorbar(image, ax=axis, label=f"mean {metric.replace('_', ' ')} over severities")
    figure.suptitle(title or f"{metric.replace('_', ' ')} per model and corruption")
    return figure


def plot_corruption_grid(image: np.ndarray, seed: int = 0, corruptions: Sequence[str] | None = None):
    """Return a Figure showing `image` clean and at every severity of every corruption (a row each)."""
    from matplotlib.figure import Figure

    names = list(corruptions or CORRUPTIONS)
    figure = Figure(figsize=(1.5 * (len(SEVERITIES) + 1), 1.6 * len(names)), layout="constrained")
    axes = figure.subplots(len(names), len(SEVERITIES) + 1, squeeze=False)
    for row, name in enumerate(names):
        panels = [image] + [corrupt(image, name, severity, seed) for severity in SEVERITIES]
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(panel, cmap="gray", vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("clean" if column == 0 else f"severity {column}", fontsize=8)
        axes[row, 0].set_ylabel(name.replace("_", " "), fontsize=8)
    return figure


def run_robustness(settings, manifest: pd.DataFrame, images_uint8: np.ndarray, model_records: Sequence[dict],
                   seed: int = 0) -> dict:
    """Score every trained model on corrupted test images; write the tables and return them with the sample.

    `images_uint8` is the uint8 cache aligned with `manifest`; `model_records` are recipe records with a
    `model_path` (alzlib.pipeline.trained_models).
    """
    from alzlib import pipeline, training

    sample = sample_test_rows(manifest.reset_index(drop=True), settings.profile.robustness_images, seed)
    positions = pd.Index(manifest["path"]).get_indexer(sample["path"])
    functions = {record["model"]: pipeline.probability_function(training.load_trained_model(record["model_path"]),
                                                                 record["preprocessing"])
                 for record in model_records}
    table = evaluate_robustness(functions, images_uint8[positions], sample["label_index"].to_numpy(),
                                sample["subject_id"].to_numpy(), seed)
    reference = "baseline_cnn" if "baseline_cnn" in functions else next(iter(functions))
    errors = corruption_errors(table, reference_model=reference)
    files = write_robustness_tables(table, errors, settings.paths.robustness)
    return {"table": table, "errors": errors, "sample": sample, "reference_model": reference,
            "files": {key: str(value) for key, value in files.items()}}
