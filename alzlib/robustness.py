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
from alzlib.evaluation import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    percentile_interval,
    resample_subject_counts,
    soft_vote,
    subject_confusions,
    subject_strata,
)
from alzlib.metrics import balanced_accuracy, confusion_scores

SEVERITIES = (1, 2, 3, 4, 5)
CLEAN = "clean"
MEAN_ROW = "mean"
METRICS = ("accuracy", "balanced_accuracy")
SUBJECT_METRICS = ("subject_accuracy", "subject_balanced_accuracy")
REFERENCE_MODEL = "baseline_cnn"
# A CE divides by the reference's error, a relative CE by its rise above its clean error: near zero, either ratio
# explodes. At the cpu profile's ~27 test subjects (about 7 per class) one subject moves balanced accuracy by about
# 1 / (4 x 7) = 0.036, so a mean per severity below 0.05 is within one subject's worth of noise.
REFERENCE_ERROR_FLOOR = 0.05
FLOOR_RULE = ("A CE is undefined where the reference model's error under the corruption, averaged over severities, is "
              "below {floor}; a relative CE is undefined where the reference's rise above its clean error, averaged "
              "over severities, is below {floor}. Undefined ratios are reported with their reason and left out of "
              "the mCE and relative mCE, which average the corruptions that remain (counted in corruptions_used).")
INTERVAL_COLUMNS = ("clean_error", "mean_error", "ce", "relative_ce")
SUMMARY_COLUMNS = ("model", "reference_model", "clean_error", "clean_error_low", "clean_error_high", "mce", "mce_low",
                   "mce_high", "relative_mce", "relative_mce_low", "relative_mce_high", "corruptions_used",
                   "relative_corruptions_used")
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


def _checked_probabilities(probabilities: np.ndarray, count: int) -> np.ndarray:
    """Return a model's output as float64, raising ValueError unless it is (count, classes)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != count:
        raise ValueError(f"predict_fn must return probabilities of shape ({count}, classes), "
                         f"got {probabilities.shape}.")
    return probabilities


def _score(probabilities: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray | None) -> dict:
    """Return accuracy and balanced accuracy per image (and per subject when ids are given)."""
    predictions = probabilities.argmax(axis=1)
    scores = {"accuracy": float(np.mean(predictions == labels)),
              "balanced_accuracy": balanced_accuracy(labels, predictions)}
    if subject_ids is not None:
        _, voted_labels, votes = soft_vote(probabilities, subject_ids, labels)
        voted_predictions = votes.argmax(axis=1)
        scores.update(n_subjects=len(voted_labels),
                      subject_accuracy=float(np.mean(voted_predictions == voted_labels)),
                      subject_balanced_accuracy=balanced_accuracy(voted_labels, voted_predictions))
    return scores


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt every image of an N x H x W uint8 batch; image i gets the same noise at every severity."""
    function = _corruption_function(name)
    return np.stack([function(image, severity, _image_rng(seed, name, index)) for index, image in enumerate(images)])


def predict_corrupted(
    predict_fn: PredictFunction | Mapping[str, PredictFunction],
    images_uint8: np.ndarray,
    labels: np.ndarray,
    subject_ids: Sequence | None = None,
    seed: int = 0,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
) -> pd.DataFrame:
    """Return every model's prediction of every image, clean and under every corruption and severity.

    One row per model, condition and image: model, corruption ("clean", severity 0, for the clean images), severity,
    image (position in the batch), subject_id (None without subject ids), label_index, mean_abs_difference (grey
    levels from the clean image), prob_0..prob_<K-1> and pred_index. `score_corrupted` and
    `corruption_error_intervals` read this table.
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
    parts = []
    for corruption, severity, batch in itertools.chain([(CLEAN, 0, images)], conditions):
        difference = np.abs(batch.astype(np.int16) - images.astype(np.int16)).mean(axis=(1, 2))
        for model_name, function in models.items():
            probabilities = _checked_probabilities(function(batch), len(labels))
            part = pd.DataFrame({"model": model_name, "corruption": corruption, "severity": severity,
                                 "image": np.arange(len(images)), "subject_id": subjects, "label_index": labels,
                                 "mean_abs_difference": difference})
            for index in range(probabilities.shape[1]):
                part[f"prob_{index}"] = probabilities[:, index]
            parts.append(part.assign(pred_index=probabilities.argmax(axis=1)))
    return pd.concat(parts, ignore_index=True)


def _probability_columns(predictions: pd.DataFrame) -> list[str]:
    """Return the prob_<index> columns of a corrupted-predictions table in class order."""
    columns = sorted((column for column in predictions.columns if column.startswith("prob_")),
                     key=lambda column: int(column.removeprefix("prob_")))
    if not columns:
        raise ValueError("The corrupted-predictions table has no prob_<index> columns: make it with predict_corrupted.")
    return columns


def score_corrupted(predictions: pd.DataFrame) -> pd.DataFrame:
    """Return one row per model, corruption and severity with accuracy and balanced accuracy (and subject scores).

    Columns: model, corruption, severity, n_images, mean_abs_difference, accuracy, balanced_accuracy and, with
    subject ids, n_subjects, subject_accuracy and subject_balanced_accuracy.
    """
    columns = _probability_columns(predictions)
    rows = []
    for (model, corruption, severity), group in predictions.groupby(["model", "corruption", "severity"], sort=False):
        subjects = None if group["subject_id"].isna().all() else group["subject_id"].to_numpy()
        scores = _score(group[columns].to_numpy(), group["label_index"].to_numpy(), subjects)
        rows.append({"model": model, "corruption": corruption, "severity": severity, "n_images": len(group),
                     "mean_abs_difference": float(group["mean_abs_difference"].mean()), **scores})
    return pd.DataFrame(rows)


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
        `score_corrupted` of `predict_corrupted`: one row per model, corruption and severity (corruption "clean",
        severity 0 for the clean images) with accuracy, balanced_accuracy, n_images, mean_abs_difference and, with
        subject ids, n_subjects, subject_accuracy and subject_balanced_accuracy.
    """
    return score_corrupted(predict_corrupted(predict_fn, images_uint8, labels, subject_ids, seed, corruptions,
                                             severities))


# ----------------------------------------------------------------------------------------------- corruption errors


def _errors(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Return the table with an `error` column (1 - metric), checking the columns it needs."""
    needed = {"model", "corruption", "severity", metric}
    _check_metric(metric)
    if not needed.issubset(table.columns):
        raise ValueError(f"Robustness table lacks columns {sorted(needed - set(table.columns))}.")
    return table.assign(error=1.0 - table[metric].astype(float))


def _check_metric(metric: str) -> str:
    """Return `metric` if corruption errors can be computed from it, else raise ValueError naming the valid ones."""
    if metric not in METRICS and metric not in SUBJECT_METRICS:
        raise ValueError(f"metric must be one of {METRICS} (or a subject_ variant), got {metric!r}.")
    return metric


def _floored_ratio(numerator: np.ndarray, denominator: np.ndarray, count: int, floor: float) -> np.ndarray:
    """Return 100 * numerator / denominator, NaN where the denominator's mean per severity is below `floor`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator / count >= floor, 100.0 * numerator / denominator, np.nan)


def _undefined_reason(value: float, what: str, reference: str, corruption: str, floor: float) -> str | None:
    """Return why a ratio is undefined (its reference denominator is below the floor), or None when it is defined."""
    if value >= floor:
        return None
    return (f"undefined: the reference {reference}'s {what} under {corruption} is {value:+.3f} per severity, below "
            f"the floor {floor}")


def _corruption_row(errors: dict, model: str, reference: str, corruption: str, floor: float) -> dict:
    """Return one model's errors, CE and relative CE under one corruption, as arrays over resamples."""
    severities = sorted(key[2] for key in errors if key[:2] == (model, corruption))
    if not severities or severities != sorted(key[2] for key in errors if key[:2] == (reference, corruption)):
        raise ValueError(f"Model {model!r} and reference {reference!r} differ in the severities of {corruption!r}.")
    count = len(severities)
    model_sum = np.sum([errors[(model, corruption, severity)] for severity in severities], axis=0)
    reference_sum = np.sum([errors[(reference, corruption, severity)] for severity in severities], axis=0)
    clean, reference_clean = errors[(model, CLEAN, 0)], errors[(reference, CLEAN, 0)]
    reference_rise = reference_sum - count * reference_clean
    return {"model": model, "reference_model": reference, "corruption": corruption, "clean_error": clean,
            "mean_error": model_sum / count, "error_sum": model_sum,
            "ce": _floored_ratio(model_sum, reference_sum, count, floor),
            "ce_undefined_reason": _undefined_reason(reference_sum[0] / count, "mean error", reference, corruption,
                                                     floor),
            "relative_ce": _floored_ratio(model_sum - count * clean, reference_rise, count, floor),
            "relative_ce_undefined_reason": _undefined_reason(reference_rise[0] / count, "rise above its clean error",
                                                              reference, corruption, floor)}


def _mean_row(rows: list[dict]) -> dict:
    """Return a model's mCE and relative mCE: means over the corruptions whose point ratio is defined."""
    summary = {"model": rows[0]["model"], "reference_model": rows[0]["reference_model"], "corruption": MEAN_ROW,
               "clean_error": rows[0]["clean_error"]}
    for key, used in (("ce", "corruptions_used"), ("relative_ce", "relative_corruptions_used")):
        defined = [row[key] for row in rows if np.isfinite(row[key][0])]
        # A resample where one of those ratios falls below the floor leaves that resample's mean undefined.
        summary[key] = np.mean(defined, axis=0) if defined else np.full_like(rows[0][key], np.nan)
        summary[used] = len(defined)
    return summary


def _corruption_table(errors: dict, reference: str, floor: float) -> list[dict]:
    """Return per model the per-corruption rows and its mean row, every value an array over resamples."""
    models = list(dict.fromkeys(key[0] for key in errors))
    if reference not in models:
        raise ValueError(f"Reference model {reference!r} is not in the table; models: {models}.")
    missing_clean = [model for model in models if (model, CLEAN, 0) not in errors]
    if missing_clean:
        raise ValueError(f"No clean row for models {missing_clean}: run evaluate_robustness on clean images too.")
    corruptions = list(dict.fromkeys(key[1] for key in errors if key[1] != CLEAN))
    rows = []
    for model in models:
        per_corruption = [_corruption_row(errors, model, reference, corruption, floor) for corruption in corruptions]
        for row in per_corruption:
            row.update(corruptions_used=int(np.isfinite(row["ce"][0])),
                       relative_corruptions_used=int(np.isfinite(row["relative_ce"][0])))
        rows.extend([*per_corruption, _mean_row(per_corruption)])
    return rows


def _point_errors(table: pd.DataFrame, metric: str) -> dict:
    """Return {(model, corruption, severity): error as a one-value array} from an aggregated robustness table."""
    errors = _errors(table, metric)
    grouped = errors.groupby(["model", "corruption", "severity"], sort=False)["error"].mean()
    return {key: np.array([value]) for key, value in grouped.items()}


def corruption_errors(table: pd.DataFrame, reference_model: str = "baseline_cnn", metric: str = "balanced_accuracy",
                      floor: float = REFERENCE_ERROR_FLOOR) -> pd.DataFrame:
    """Return ImageNet-C corruption errors (in %) normalised by `reference_model`.

    Error is 1 - `metric`. Per model and corruption: CE = sum over severities of the model's error divided by the
    reference's; relative CE = the same for the rise above each one's clean error. Rows with corruption "mean"
    hold mCE and relative mCE (means over corruptions, undefined ratios skipped; `corruptions_used` and
    `relative_corruptions_used` count the corruptions each mean covers). The reference model scores 100 by
    construction. FLOOR_RULE: a ratio is undefined (NaN, with the reason in *_undefined_reason) where the
    reference's mean error (CE) or mean rise above its clean error (relative CE) per severity is below `floor`.
    """
    rows = _corruption_table(_point_errors(table, metric), reference_model, floor)
    return _table_of(rows, with_intervals=False)


def _table_of(rows: list[dict], with_intervals: bool, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Return the corruption-error rows as a table: point estimates (index 0) and, optionally, percentile intervals."""
    records = []
    for row in rows:
        record = {}
        for key, value in row.items():
            if not isinstance(value, np.ndarray):
                record[key] = value
                continue
            record[key] = float(value[0])
            if with_intervals and key in INTERVAL_COLUMNS:
                # An undefined point estimate gets no interval, whatever the resamples that happen to be defined.
                interval = (percentile_interval(value[1:], value[0], confidence) if np.isfinite(value[0])
                            else {"low": None, "high": None})
                record.update({f"{key}_low": interval["low"], f"{key}_high": interval["high"]})
        records.append(record)
    table = pd.DataFrame(records)
    leading = ["model", "reference_model", "corruption"]
    return table[leading + [column for column in table.columns if column not in leading]]


def summarise_corruption_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """Return one row per model: reference, clean error, mCE and relative mCE (from `corruption_errors`), with any
    interval columns (`corruption_error_intervals`)."""
    means = errors[errors["corruption"] == MEAN_ROW]
    renamed = means.rename(columns={f"{old}{suffix}": f"{new}{suffix}" for old, new in (("ce", "mce"),
                                                                                        ("relative_ce", "relative_mce"))
                                    for suffix in ("", "_low", "_high")})
    return renamed[[column for column in SUMMARY_COLUMNS if column in renamed.columns]].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- intervals


def _condition_confusions(group: pd.DataFrame, codes: dict, num_subjects: int, classes: int, subject_level: bool,
                          columns: list[str]) -> np.ndarray:
    """Return per-subject confusion counts (subjects x classes²) of one model and condition, ordered by `codes`."""
    labels = group["label_index"].to_numpy()
    subject_of_row = group["subject_id"].map(codes).to_numpy()
    if not subject_level:
        return subject_confusions(subject_of_row, num_subjects, labels, group["pred_index"].to_numpy(), classes)
    voted, voted_labels, votes = soft_vote(group[columns].to_numpy(), group["subject_id"].to_numpy(), labels)
    order = pd.Series(voted).map(codes).to_numpy()
    return subject_confusions(order, num_subjects, voted_labels, votes.argmax(axis=1), classes)


def _bootstrap_errors(predictions: pd.DataFrame, metric: str, n_bootstrap: int, seed: int) -> tuple[dict, int]:
    """Return {(model, corruption, severity): error, point estimate first then one per resample} and the subjects.

    Every model and condition is scored on the same resamples: subjects drawn with replacement within each class.
    """
    if predictions["subject_id"].isna().any():
        raise ValueError("Subject-bootstrap intervals need a subject_id for every image: pass subject_ids.")
    columns = _probability_columns(predictions)
    first = predictions.drop_duplicates("image").sort_values("image")
    subject_codes, subjects = pd.factorize(first["subject_id"])
    codes = dict(zip(subjects, range(len(subjects)), strict=True))
    classes = subject_strata(subject_codes, first["label_index"].to_numpy(), len(subjects))
    counts = resample_subject_counts(classes, n_bootstrap, seed).astype(np.float64)
    subject_level, score = metric.startswith("subject_"), metric.removeprefix("subject_")
    errors = {}
    for key, group in predictions.groupby(["model", "corruption", "severity"], sort=False):
        per_subject = _condition_confusions(group, codes, len(subjects), len(columns), subject_level, columns)
        batch = np.vstack([per_subject.sum(axis=0, keepdims=True), counts @ per_subject])
        errors[key] = 1.0 - confusion_scores(batch.reshape(-1, len(columns), len(columns)))[score]
    return errors, len(subjects)


def corruption_error_intervals(predictions: pd.DataFrame, reference_model: str = "baseline_cnn",
                               metric: str = "balanced_accuracy", n_bootstrap: int = BOOTSTRAP_RESAMPLES,
                               seed: int = 0, floor: float = REFERENCE_ERROR_FLOOR) -> pd.DataFrame:
    """Return `corruption_errors` from per-image predictions (`predict_corrupted`), with subject-bootstrap intervals.

    Each resample draws the test subjects with replacement within each class, the same subjects for every model
    and condition, and recomputes every error, CE and relative CE inside the resample; the 95% percentile
    intervals are the `_low` / `_high` columns (`clean_error`, `mean_error`, `ce`, `relative_ce`, and the means).
    A ratio whose point estimate is undefined (FLOOR_RULE) has no interval; resamples in which a defined ratio
    falls below the floor are left out of its interval.
    """
    _check_metric(metric)
    errors, _ = _bootstrap_errors(predictions, metric, n_bootstrap, seed)
    return _table_of(_corruption_table(errors, reference_model, floor), with_intervals=True)


def sample_test_rows(manifest: pd.DataFrame, count: int, seed: int = 0) -> pd.DataFrame:
    """Return up to `count` test rows of the manifest, stratified by label (sampling.stratified_sample)."""
    if count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}.")
    test = manifest[manifest["split"] == "test"]
    if test.empty:
        raise ValueError("The manifest has no test rows to corrupt.")
    return sampling.stratified_sample(test, count, seed, by="label").reset_index(drop=True)


def write_robustness_tables(table: pd.DataFrame, errors: pd.DataFrame, directory: str | os.PathLike,
                            predictions: pd.DataFrame | None = None, record: dict | None = None) -> dict:
    """Write robustness.csv, corruption_errors.csv and mce_summary.csv (and the per-image predictions.parquet and
    robustness.json when given) under `directory`; return their paths."""
    directory = Path(directory)
    files = {"robustness": storage.write_csv(directory / "robustness.csv", table),
             "corruption_errors": storage.write_csv(directory / "corruption_errors.csv", errors),
             "mce_summary": storage.write_csv(directory / "mce_summary.csv", summarise_corruption_errors(errors))}
    if predictions is not None:
        files["predictions"] = storage.write_parquet(directory / "predictions.parquet", predictions)
    if record is not None:
        files["record"] = storage.write_json(directory / "robustness.json", record)
    return files


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


def robustness_record(reference: str, metric: str, predictions: pd.DataFrame, n_bootstrap: int,
                      floor: float = REFERENCE_ERROR_FLOOR) -> dict:
    """Return robustness.json: the reference model, the error metric, the floor rule and the bootstrap's settings."""
    return {"reference_model": reference, "metric": metric, "error": f"1 - {metric}",
            "reference_error_floor": floor, "floor_rule": FLOOR_RULE.format(floor=floor),
            "images": int(predictions["image"].nunique()), "subjects": int(predictions["subject_id"].nunique()),
            "bootstrap": {"resamples": n_bootstrap, "unit": "subject", "stratified_by": "class",
                          "confidence": CONFIDENCE, "method": "percentile",
                          "paired": "every model and condition scored on the same resampled subjects"}}


def run_robustness(settings, manifest: pd.DataFrame, images_uint8: np.ndarray, model_records: Sequence[dict],
                   seed: int = 0, n_bootstrap: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Score every trained model on corrupted test images; write the tables and return them with the sample.

    `images_uint8` is the uint8 cache aligned with `manifest`; `model_records` are recipe records with a
    `model_path` (alzlib.pipeline.trained_models). The reference for CE is baseline_cnn when it was trained.
    """
    from alzlib import pipeline, training

    sample = sample_test_rows(manifest.reset_index(drop=True), settings.profile.robustness_images, seed)
    positions = pd.Index(manifest["path"]).get_indexer(sample["path"])
    functions = {record["model"]: pipeline.probability_function(training.load_trained_model(record["model_path"]),
                                                                 record["preprocessing"])
                 for record in model_records}
    predictions = predict_corrupted(functions, images_uint8[positions], sample["label_index"].to_numpy(),
                                    sample["subject_id"].to_numpy(), seed)
    table = score_corrupted(predictions)
    reference = REFERENCE_MODEL if REFERENCE_MODEL in functions else next(iter(functions))
    errors = corruption_error_intervals(predictions, reference, "balanced_accuracy", n_bootstrap, seed)
    record = robustness_record(reference, "balanced_accuracy", predictions, n_bootstrap)
    files = write_robustness_tables(table, errors, settings.paths.robustness, predictions, record)
    return {"table": table, "errors": errors, "sample": sample, "reference_model": reference, "record": record,
            "files": {key: str(value) for key, value in files.items()}}
