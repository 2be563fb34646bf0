"""Exploratory data analysis (notebook 02): class balance, subjects, sizes, intensities, duplicates, shortcut audit.

The shortcut audit asks whether the class can be told from properties that carry no anatomy (file format, original
size and mode, border and corner intensity): public collections are often stitched together from several sources,
one class from one source, and a model then learns the source instead of the disease.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from alzlib import config, sampling, storage
from alzlib.metrics import balanced_accuracy

MANIFEST_COLUMNS = ("path", "label", "subject_id", "split", "width", "height", "mode", "format")
# Skull-stripped slices have a background of 0-5 grey levels (JPEG noise); above 10 a pixel counts as brain.
BRAIN_THRESHOLD = 10
HISTOGRAM_BINS = 64
# Pixel statistics and the audit read at most this many images (a seeded sample stratified by split and class).
MAX_IMAGES = 3000
SAMPLES_PER_CLASS = 6
BORDER_FRACTION = 0.03
CORNER_FRACTION = 0.1
PERMUTATIONS = 1000
FOREST_TREES = 50
WARNING_MARGIN = 0.15
SIGNIFICANCE = 0.05
# Bits per pixel of PIL's modes; a palette image stores 8-bit indices.
BIT_DEPTHS = {"1": 1, "L": 8, "P": 8, "LA": 16, "La": 16, "PA": 16, "RGB": 24, "YCbCr": 24, "LAB": 24, "HSV": 24,
              "RGBA": 32, "RGBa": 32, "RGBX": 32, "CMYK": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16,
              "I": 32, "F": 32}
# Properties a pixel model can see (they survive decoding and letterboxing) -> what they are.
PIXEL_PROPERTIES = {
    "format": "file format (JPEG artefacts or lossless pixels)",
    "size": "original width, height and aspect ratio (letterbox padding shows the aspect)",
    "mode": "colour mode and bit depth",
    "border": "mean and spread of a thin frame along the image edge",
    "corners": "mean and spread of the four corner squares (background)",
}
NAME_PROPERTY = "file_name"
NAME_DESCRIPTION = "file-name pattern (digits as '#', length, extension, spaces, brackets)"
STATISTIC_COLUMNS = ("mean_all", "std_all", "brain_mean", "brain_std", "brain_fraction", "border_mean",
                     "border_std", "corner_mean", "corner_std", "corner_max")


# ----------------------------------------------------------------------------------------------- helpers


def _load_image(path: str) -> np.ndarray:
    """Return a manifest image as uint8 greyscale (alzlib.ingestion.load_image, PIL until that exists)."""
    try:
        from alzlib.ingestion import load_image
    except ImportError:
        from PIL import Image

        with Image.open(str(path).split("#row=")[0]) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)
    return np.asarray(load_image(path), dtype=np.uint8)


def _check_manifest(manifest: pd.DataFrame, columns: tuple[str, ...] = MANIFEST_COLUMNS) -> pd.DataFrame:
    """Raise ValueError when the manifest is empty or lacks a column; return it."""
    if not isinstance(manifest, pd.DataFrame):
        raise ValueError(f"Expected the manifest as a pandas DataFrame, got {type(manifest).__name__}.")
    missing = [column for column in columns if column not in manifest.columns]
    if missing:
        raise ValueError(f"The manifest lacks the columns {missing}: expected those written by notebook 01.")
    if manifest.empty:
        raise ValueError("The manifest is empty: notebook 01 found no usable images.")
    return manifest


def class_order(manifest: pd.DataFrame) -> list[str]:
    """Return the class names in label-index order (alphabetical when there is no label_index)."""
    if "label_index" in manifest.columns:
        return manifest.drop_duplicates("label").sort_values("label_index")["label"].astype(str).tolist()
    return sorted(manifest["label"].astype(str).unique())


def _split_order(manifest: pd.DataFrame) -> list[str]:
    """Return the splits present, in train/val/test order (unknown ones after)."""
    present = manifest["split"].astype(str).unique().tolist()
    return [split for split in config.SPLITS if split in present] + sorted(set(present) - set(config.SPLITS))


def _titled(text: str, data_label: str) -> str:
    """Return a plot title that carries the data label (so synthetic figures say so)."""
    return f"{text} — {data_label}"


def _file_name(path: str) -> str:
    """Return the file name of a manifest path (the Parquet file's name for `file.parquet#row=<i>`)."""
    return os.path.basename(str(path).split("#row=")[0])


def name_template(path: str) -> str:
    """Return the file name with every run of digits replaced by '#' (nonDem12.jpg -> nonDem#.jpg)."""
    return re.sub(r"\d+", "#", _file_name(path))


# ----------------------------------------------------------------------------------------------- tables


def class_distribution(manifest: pd.DataFrame) -> pd.DataFrame:
    """Return images per split (rows, plus 'all') and class (columns, plus 'all')."""
    _check_manifest(manifest, ("label", "split"))
    table = pd.crosstab(manifest["split"].astype(str), manifest["label"].astype(str), margins=True,
                        margins_name="all")
    table = table.reindex(index=[*_split_order(manifest), "all"], columns=[*class_order(manifest), "all"],
                          fill_value=0)
    table.index.name, table.columns.name = "split", None
    return table.astype(int)


def subject_distribution(manifest: pd.DataFrame) -> pd.DataFrame:
    """Return distinct subjects per split (rows, plus 'all') and class (columns, plus 'all')."""
    _check_manifest(manifest, ("label", "split", "subject_id"))
    frame = manifest.assign(split=manifest["split"].astype(str), label=manifest["label"].astype(str))
    table = frame.groupby(["split", "label"])["subject_id"].nunique().unstack(fill_value=0)
    table["all"] = frame.groupby("split")["subject_id"].nunique()
    totals = frame.groupby("label")["subject_id"].nunique()
    table.loc["all"] = pd.concat([totals, pd.Series({"all": frame["subject_id"].nunique()})])
    table = table.reindex(index=[*_split_order(manifest), "all"], columns=[*class_order(manifest), "all"],
                          fill_value=0)
    table.index.name, table.columns.name = "split", None
    return table.fillna(0).astype(int)


def subject_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Return one row per subject: its class(es), split(s), number of slices and how its id was derived."""
    _check_manifest(manifest, ("label", "split", "subject_id"))
    grouped = manifest.assign(label=manifest["label"].astype(str), split=manifest["split"].astype(str))
    grouped = grouped.groupby("subject_id", sort=True)
    table = pd.DataFrame({
        "label": grouped["label"].agg(lambda values: "|".join(sorted(set(values)))),
        "labels": grouped["label"].nunique(),
        "split": grouped["split"].agg(lambda values: "|".join(sorted(set(values)))),
        "slices": grouped.size(),
    })
    if "subject_source" in manifest.columns:
        table["subject_source"] = grouped["subject_source"].agg(
            lambda values: "|".join(sorted({str(value) for value in values})))
    return table.reset_index()


def slices_per_subject(subjects: pd.DataFrame) -> pd.DataFrame:
    """Return per class: subjects and the min, median, mean and max number of slices per subject."""
    if not {"label", "slices"}.issubset(subjects.columns):
        raise ValueError("Expected the subject table of subject_table() (columns label and slices).")
    summary = subjects.groupby("label")["slices"].agg(["count", "min", "median", "mean", "max"])
    summary = summary.rename(columns={"count": "subjects"})
    summary.loc["all"] = [len(subjects), subjects["slices"].min(), subjects["slices"].median(),
                          subjects["slices"].mean(), subjects["slices"].max()]
    return summary.round(2).reset_index()


def image_properties(manifest: pd.DataFrame) -> pd.DataFrame:
    """Return image counts per class, file format, colour mode and original size."""
    _check_manifest(manifest, ("label", "width", "height", "mode", "format"))
    frame = manifest.assign(format=manifest["format"].fillna("unknown").astype(str),
                            mode=manifest["mode"].fillna("unknown").astype(str))
    table = frame.groupby(["label", "format", "mode", "width", "height"]).size().rename("images").reset_index()
    order = {name: index for index, name in enumerate(class_order(manifest))}
    return table.sort_values(["label", "images"], key=lambda column: column.map(order) if column.name == "label"
                             else -column).reset_index(drop=True)


def duplicates_summary(report: dict) -> pd.DataFrame:
    """Return one row per kind of duplicate the ingestion report lists (groups, images, groups across splits)."""
    duplicates = (report or {}).get("duplicates")
    if duplicates is None:
        return pd.DataFrame(columns=["kind", "groups", "images", "groups_across_splits", "detail"])
    items = duplicates.items() if isinstance(duplicates, dict) else [("duplicates", duplicates)]
    return pd.DataFrame([_duplicate_row(str(kind), value) for kind, value in items])


def _duplicate_row(kind: str, value) -> dict:
    """Summarise one entry of the ingestion report's duplicates (a list of groups, a count or a nested record)."""
    row = {"kind": kind, "groups": None, "images": None, "groups_across_splits": None, "detail": None}
    if isinstance(value, bool) or value is None:
        row["detail"] = str(value)
    elif isinstance(value, (int, float)):
        row["groups"] = value
    elif isinstance(value, list):
        row["groups"] = len(value)
        members = [_group_members(group) for group in value]
        row["images"] = sum(len(group) for group in members) if all(members) else None
        across = [group for group in value if isinstance(group, dict) and len(set(group.get("splits") or [])) > 1]
        row["groups_across_splits"] = len(across) if any(isinstance(group, dict) for group in value) else None
    elif isinstance(value, dict):
        numbers = {key: item for key, item in value.items() if isinstance(item, (int, float)) and
                   not isinstance(item, bool)}
        lists = {key: len(item) for key, item in value.items() if isinstance(item, list)}
        row["detail"] = "; ".join(f"{key}: {item}" for key, item in {**numbers, **lists}.items()) or str(value)[:200]
    else:
        row["detail"] = str(value)[:200]
    return row


def _group_members(group) -> list:
    """Return the paths of one duplicate group (a list of paths or a dict with paths/members/files)."""
    if isinstance(group, (list, tuple)):
        return list(group)
    if isinstance(group, dict):
        for key in ("paths", "members", "files", "images"):
            if isinstance(group.get(key), list):
                return group[key]
    return []


# ----------------------------------------------------------------------------------------------- pixels


def sample_manifest(manifest: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """Return at most `max_images` rows (more only to keep one per split and class), in proportion, seeded."""
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}.")
    return sampling.stratified_sample(manifest, max_images, seed, by=["split", "label"])


def _frame_and_corners(image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the pixels of a thin edge frame and the four corner squares of an image."""
    height, width = image.shape
    border = max(1, int(round(BORDER_FRACTION * min(height, width))))
    corner = max(2, int(round(CORNER_FRACTION * min(height, width))))
    frame = np.concatenate([image[:border].ravel(), image[-border:].ravel(),
                            image[border:-border, :border].ravel(), image[border:-border, -border:].ravel()])
    corners = [image[:corner, :corner], image[:corner, -corner:], image[-corner:, :corner], image[-corner:, -corner:]]
    return frame, corners


def measure_image(image: np.ndarray, threshold: int = BRAIN_THRESHOLD) -> dict:
    """Return intensity statistics of all pixels, of brain pixels (> threshold), of the border and the corners."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8 or min(image.shape) < 4:
        raise ValueError(f"Expected a uint8 greyscale image of at least 4x4 pixels, got shape {image.shape} "
                         f"dtype {image.dtype}.")
    pixels = image.astype(np.float64)
    brain = pixels[pixels > threshold]
    frame, corners = _frame_and_corners(pixels)
    corner_pixels = np.concatenate([corner.ravel() for corner in corners])
    return {"mean_all": pixels.mean(), "std_all": pixels.std(),
            "brain_mean": brain.mean() if brain.size else np.nan, "brain_std": brain.std() if brain.size else np.nan,
            "brain_fraction": brain.size / pixels.size, "border_mean": frame.mean(), "border_std": frame.std(),
            "corner_mean": corner_pixels.mean(), "corner_std": corner_pixels.std(),
            "corner_max": max(float(corner.mean()) for corner in corners),
            "histogram": np.bincount(image.ravel(), minlength=256)}


def image_statistics(manifest: pd.DataFrame, threshold: int = BRAIN_THRESHOLD) -> pd.DataFrame:
    """Return per-image statistics (measure_image) indexed like `manifest`; unreadable images get an `error`."""
    _check_manifest(manifest, ("path", "label"))
    rows = []
    for index, path in manifest["path"].items():
        try:
            rows.append({"index": index, **measure_image(_load_image(path), threshold), "error": None})
        except (OSError, ValueError) as error:
            rows.append({"index": index, "error": f"{type(error).__name__}: {error}"})
    statistics = pd.DataFrame(rows).set_index("index")
    statistics.index.name = None
    for column in (*STATISTIC_COLUMNS, "histogram"):
        if column not in statistics.columns:
            statistics[column] = np.nan
    return manifest[["path", "label", "split", "subject_id"]].join(statistics)


def intensity_by_class(statistics: pd.DataFrame) -> pd.DataFrame:
    """Return per class the mean of per-image intensity statistics (all pixels and brain pixels)."""
    readable = statistics[statistics["error"].isna()]
    columns = ["mean_all", "std_all", "brain_mean", "brain_std", "brain_fraction"]
    table = readable.groupby("label")[columns].mean()
    table.insert(0, "images", readable.groupby("label").size())
    return table.round(3).reset_index()


def _class_histograms(statistics: pd.DataFrame, classes: list[str], threshold: int) -> dict[str, tuple]:
    """Return per class (all-pixel density, brain-pixel density) over HISTOGRAM_BINS bins of 0-255."""
    readable = statistics[statistics["error"].isna()]
    edges = np.linspace(0, 256, HISTOGRAM_BINS + 1).astype(int)
    densities = {}
    for name in classes:
        histograms = readable.loc[readable["label"] == name, "histogram"].tolist()
        if not histograms:
            continue
        counts = np.sum(histograms, axis=0).astype(np.float64)
        brain = counts.copy()
        brain[: threshold + 1] = 0
        binned = [np.add.reduceat(values, edges[:-1]) for values in (counts, brain)]
        densities[name] = tuple(values / max(values.sum(), 1.0) for values in binned)
    return densities


# ----------------------------------------------------------------------------------------------- figures


def class_distribution_figure(images: pd.DataFrame, subjects: pd.DataFrame, data_label: str) -> Figure:
    """Return grouped bar charts of images and subjects per split and class."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    for axis, (table, what) in zip(figure.subplots(1, 2), ((images, "images"), (subjects, "subjects"))):
        shown = table.drop(index="all", errors="ignore").drop(columns="all", errors="ignore")
        width = 0.8 / max(len(shown.columns), 1)
        positions = np.arange(len(shown.index))
        for offset, name in enumerate(shown.columns):
            bars = axis.bar(positions + offset * width, shown[name], width, label=name)
            axis.bar_label(bars, fontsize=7)
        axis.set_xticks(positions + width * (len(shown.columns) - 1) / 2, shown.index)
        axis.set_ylabel(what)
        axis.set_title(f"{what.capitalize()} per split and class", fontsize=10)
    axis.legend(fontsize=8)
    figure.suptitle(_titled("Class distribution", data_label))
    return figure


def slices_per_subject_figure(subjects: pd.DataFrame, data_label: str, classes: list[str]) -> Figure:
    """Return a histogram of slices per subject, one colour per class."""
    figure = Figure(figsize=(7, 3.5), layout="constrained")
    axis = figure.subplots()
    values = [subjects.loc[subjects["label"] == name, "slices"].to_numpy() for name in classes]
    upper = int(subjects["slices"].max())
    bins = np.arange(0.5, upper + 1.5) if upper <= 60 else 30
    axis.hist(values, bins=bins, stacked=True, label=classes)
    axis.set_xlabel("slices per subject")
    axis.set_ylabel("subjects")
    axis.legend(fontsize=8)
    axis.set_title(_titled("Slices per subject", data_label), fontsize=10)
    return figure


def intensity_histogram_figure(statistics: pd.DataFrame, data_label: str, classes: list[str],
                               threshold: int = BRAIN_THRESHOLD) -> Figure:
    """Return per-class intensity histograms of all pixels (log scale) and of brain pixels only."""
    densities = _class_histograms(statistics, classes, threshold)
    centres = (np.linspace(0, 256, HISTOGRAM_BINS + 1)[:-1] + 128 / HISTOGRAM_BINS)
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    all_axis, brain_axis = figure.subplots(1, 2)
    for name, (everything, brain) in densities.items():
        all_axis.plot(centres, everything, label=name)
        brain_axis.plot(centres, brain, label=name)
    all_axis.set_yscale("log")
    all_axis.set_title("All pixels (log scale: background dominates)", fontsize=10)
    brain_axis.set_title(f"Brain pixels only (grey level > {threshold})", fontsize=10)
    for axis in (all_axis, brain_axis):
        axis.set_xlabel("grey level")
        axis.set_ylabel("share of pixels")
    brain_axis.legend(fontsize=8)
    figure.suptitle(_titled(f"Intensity histograms per class ({int(statistics['error'].isna().sum())} images)",
                            data_label))
    return figure


def sample_grid_figure(manifest: pd.DataFrame, data_label: str, seed: int,
                       per_class: int = SAMPLES_PER_CLASS) -> Figure:
    """Return a grid of example images: one row per class, each from a different subject where possible."""
    _check_manifest(manifest, ("path", "label", "subject_id"))
    rng = np.random.default_rng(seed)
    classes = class_order(manifest)
    figure = Figure(figsize=(1.7 * per_class, 1.9 * len(classes)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(classes), per_class, squeeze=False))
    for row, name in enumerate(classes):
        rows = manifest[manifest["label"] == name]
        one_per_subject = rows.groupby("subject_id", sort=True).sample(n=1, random_state=int(rng.integers(2**31)))
        chosen = one_per_subject.iloc[rng.permutation(len(one_per_subject))[:per_class]]
        for column, axis in enumerate(axes[row]):
            axis.axis("off")
            if column < len(chosen):
                axis.imshow(_load_image(chosen["path"].iloc[column]), cmap="gray", vmin=0, vmax=255)
                axis.set_title(str(chosen["subject_id"].iloc[column])[:18], fontsize=7)
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=9)
    figure.suptitle(_titled("Example slices per class (subject id above each)", data_label))
    return figure


# ----------------------------------------------------------------------------------------------- shortcut audit


def _categories(values: pd.Series, prefix: str) -> pd.DataFrame:
    """Return one-hot columns of a categorical series (missing values as 'unknown')."""
    return pd.get_dummies(values.fillna("unknown").astype(str), prefix=prefix).astype(float)


def _codes(values: pd.Series) -> np.ndarray:
    """Return ordinal codes of a categorical series (sorted categories: no label information)."""
    return pd.factorize(values.astype(str), sort=True)[0].astype(float)


def shortcut_features(sample: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Return the numeric columns of every anatomy-free property (PIXEL_PROPERTIES and the file name) per image."""
    _check_manifest(sample, ("path", "width", "height", "mode", "format", "border_mean", "corner_mean"))
    names = sample["path"].map(_file_name)
    stems = names.map(lambda name: os.path.splitext(name)[0])
    bit_depth = sample["mode"].map(lambda mode: BIT_DEPTHS.get(str(mode), 0)).astype(float)
    width, height = sample["width"].astype(float), sample["height"].astype(float)
    return {
        "format": _categories(sample["format"], "format"),
        "size": pd.DataFrame({"width": width, "height": height, "aspect": width / height.where(height > 0)}),
        "mode": _categories(sample["mode"], "mode").assign(bit_depth=bit_depth),
        "border": sample[["border_mean", "border_std"]].astype(float),
        "corners": sample[["corner_mean", "corner_std", "corner_max"]].astype(float),
        NAME_PROPERTY: pd.DataFrame({
            "template": _codes(sample["path"].map(name_template)),
            "extension": _codes(names.map(lambda name: os.path.splitext(name)[1].lower())),
            "length": stems.str.len().astype(float),
            "digit_runs": stems.map(lambda stem: len(re.findall(r"\d+", stem))).astype(float),
            "has_space": stems.str.contains(" ", regex=False).astype(float),
            "has_bracket": stems.str.contains(r"[()\[\]]").astype(float),
        }, index=sample.index),
    }


def audit_sets(manifest: pd.DataFrame) -> tuple[pd.Series, pd.Series, str]:
    """Return (fit mask, score mask, description): train vs test, or vs val+test when test lacks a class."""
    split = manifest["split"].astype(str)
    fit = split == "train"
    train_classes = set(manifest.loc[fit, "label"])
    test = split == "test"
    if test.any() and train_classes <= set(manifest.loc[test, "label"]):
        return fit, test, "fit on train, scored on test"
    return fit, split.isin(["val", "test"]), "fit on train, scored on val+test (test lacks a class of train)"


def permutation_p_value(truth: np.ndarray, predicted: np.ndarray, groups: np.ndarray, seed: int,
                        permutations: int = PERMUTATIONS) -> float:
    """Return the p-value of the balanced accuracy against labels shuffled between subjects (fixed predictions)."""
    truth, predicted, groups = np.asarray(truth), np.asarray(predicted), np.asarray(groups)
    # Integer codes make scikit-learn's score 5x faster than on class-name strings (0.6 ms against 3 ms for 300
    # slices), which matters a thousand times per property: the audit of a cpu-profile sample (7 properties, 1000
    # permutations) takes 7 s.
    codes = pd.factorize(np.concatenate([truth, predicted]))[0]
    truth, predicted = codes[:len(truth)], codes[len(truth):]
    observed = balanced_accuracy(truth, predicted)
    subjects, inverse = np.unique(groups.astype(str), return_inverse=True)
    subject_labels = pd.Series(truth).groupby(inverse).agg(lambda values: values.iloc[0]).to_numpy()
    # Slices of one subject are not independent: shuffling whole subjects keeps the null honest. A subject with
    # several labels (a data error) falls back to shuffling slices.
    by_subject = len(subjects) > 1 and np.array_equal(subject_labels[inverse], truth)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        shuffled = rng.permutation(subject_labels)[inverse] if by_subject else rng.permutation(truth)
        exceed += balanced_accuracy(shuffled, predicted) >= observed - 1e-12
    return (exceed + 1) / (permutations + 1)


def _score_property(features: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, fit: np.ndarray,
                    score: np.ndarray, seed: int, permutations: int) -> dict:
    """Fit a seeded random forest on the fit rows of `features`; return balanced accuracy and p on the score rows."""
    from sklearn.ensemble import RandomForestClassifier

    values = features.to_numpy(dtype=np.float64)
    forest = RandomForestClassifier(n_estimators=FOREST_TREES, min_samples_leaf=2, class_weight="balanced",
                                    random_state=seed, n_jobs=1)
    forest.fit(values[fit], labels[fit])
    predicted = forest.predict(values[score])
    return {"score": round(balanced_accuracy(labels[score], predicted), 4),
            "p_value": round(permutation_p_value(labels[score], predicted, groups[score], seed, permutations), 4)}


def _reveals(result: dict, chance: float, margin: float) -> bool:
    """True when a property's score is well above chance and significant."""
    return result["score"] > chance + margin and result["p_value"] < SIGNIFICANCE


def name_pattern_summary(sample: pd.DataFrame, margin: float = WARNING_MARGIN) -> dict:
    """Return how much the file-name template alone says about the class (in-sample, all splits)."""
    templates = sample["path"].map(name_template)
    labels = sample["label"].astype(str)
    majority = pd.crosstab(templates, labels).idxmax(axis=1)
    purity = balanced_accuracy(labels.to_numpy(), templates.map(majority).to_numpy())
    chance = 1.0 / labels.nunique()
    top = (pd.DataFrame({"template": templates, "label": labels}).value_counts().rename("images").reset_index()
           .groupby("label").head(3))
    return {"templates": int(templates.nunique()), "template_balanced_accuracy": round(purity, 4),
            "encodes_class": bool(templates.nunique() > 1 and purity > chance + margin),
            "top_templates_per_class": top.to_dict(orient="records")}


def shortcut_audit(sample: pd.DataFrame, seed: int, permutations: int = PERMUTATIONS,
                   margin: float = WARNING_MARGIN) -> dict:
    """Return whether anatomy-free properties predict the class under the split (see module docstring).

    `sample` is manifest rows joined with image_statistics(); the forest is fit on train and scored on test.
    """
    readable = sample[sample["error"].isna()] if "error" in sample.columns else sample
    fit, score, protocol = audit_sets(readable)
    base = {"properties_used": dict(PIXEL_PROPERTIES), "name_property": NAME_DESCRIPTION, "protocol": protocol,
            "classifier": f"RandomForestClassifier(n_estimators={FOREST_TREES}, min_samples_leaf=2, "
                          "class_weight='balanced', seeded)",
            "significance": f"subject-level label permutation ({permutations} shuffles), alpha {SIGNIFICANCE}",
            "warning_rule": f"balanced accuracy > chance + {margin} and p < {SIGNIFICANCE}",
            "margin": margin, "images": int(len(readable)), "images_fit": int(fit.sum()),
            "images_scored": int(score.sum()), "subjects_scored": int(readable.loc[score, "subject_id"].nunique())}
    reason = _audit_skip_reason(readable, fit, score)
    if reason:
        return {**base, "ran": False, "skip_reason": reason, "score": None, "chance": None, "p_value": None,
                "property_scores": {}, "revealing_properties": [], "warning": False,
                "sentence": f"Shortcut audit not run: {reason}.", "file_names": None}
    features = shortcut_features(readable)
    labels = readable["label"].astype(str).to_numpy()
    groups = readable["subject_id"].astype(str).to_numpy()
    fit, score = fit.to_numpy(), score.to_numpy()
    chance = 1.0 / len(np.unique(labels[score]))
    arguments = (labels, groups, fit, score, seed, permutations)
    property_scores = {name: _score_property(features[name], *arguments) for name in PIXEL_PROPERTIES}
    combined = _score_property(pd.concat([features[name] for name in PIXEL_PROPERTIES], axis=1), *arguments)
    names = {**_score_property(features[NAME_PROPERTY], *arguments), **name_pattern_summary(readable, margin)}
    revealing = [name for name, result in property_scores.items() if _reveals(result, chance, margin)]
    warning = _reveals(combined, chance, margin)
    audit = {**base, "ran": True, "score": combined["score"], "chance": round(chance, 4),
             "p_value": combined["p_value"], "property_scores": property_scores, "revealing_properties": revealing,
             "warning": bool(warning), "file_names": names}
    return {**audit, "sentence": audit_sentence(audit)}


def _audit_skip_reason(sample: pd.DataFrame, fit: pd.Series, score: pd.Series) -> str | None:
    """Return why the audit cannot run on this sample, or None."""
    if not fit.any():
        return "the manifest has no train split"
    if not score.any():
        return "the manifest has no val or test split to score on"
    if sample.loc[fit, "label"].nunique() < 2:
        return "the train split holds fewer than two classes"
    return None


def audit_sentence(audit: dict) -> str:
    """Return the human sentence that states the audit's result."""
    if not audit.get("ran"):
        return f"Shortcut audit not run: {audit.get('skip_reason')}."
    numbers = f"balanced accuracy {audit['score']:.2f} (chance {audit['chance']:.2f}, p = {audit['p_value']:.3g})"
    if audit["warning"]:
        revealing = ", ".join(audit["revealing_properties"]) or "their combination"
        sentence = (f"WARNING: a classifier that never sees the brain tells the classes apart from file and border "
                    f"properties alone with {numbers}; most telling: {revealing}. The classes probably come from "
                    f"different sources, so a model can score well by learning the source instead of anatomy.")
    elif audit["score"] > audit["chance"] + audit["margin"]:
        sentence = (f"Inconclusive: properties that carry no anatomy predict the class at {numbers}, well above "
                    f"chance but not significant with {audit['subjects_scored']} scored subjects; recheck with more "
                    f"subjects before trusting any model.")
    else:
        sentence = (f"No shortcut found: properties that carry no anatomy (format, size, mode, border and corners) "
                    f"predict the class at {numbers}.")
    names = audit.get("file_names") or {}
    if names.get("encodes_class"):
        sentence += (" File names encode the class (name template alone: balanced accuracy "
                     f"{names['template_balanced_accuracy']:.2f}); a model sees pixels only, so this is no shortcut "
                     "for it, but names must never feed a model, a subject grouping or a split.")
    return sentence


def shortcut_warning_markdown(audit: dict) -> str:
    """Return Markdown for the notebook: a loud warning when the audit warns, else a short all-clear."""
    if not audit.get("ran"):
        return f"**Shortcut audit not run.** {audit.get('sentence', '')}"
    rows = "\n".join(f"| {name} | {PIXEL_PROPERTIES.get(name, name)} | {result['score']:.2f} "
                     f"| {result['p_value']:.3g} |" for name, result in audit["property_scores"].items())
    names = audit.get("file_names") or {}
    if names:
        rows += (f"\n| {NAME_PROPERTY} (not visible to a model) | {NAME_DESCRIPTION} | {names['score']:.2f} | "
                 f"{names['p_value']:.3g} |")
    table = ("| property | what it is | balanced accuracy | p |\n|---|---|---|---|\n" + rows +
             f"\n| **all visible properties** | combined | **{audit['score']:.2f}** | {audit['p_value']:.3g} |\n\n"
             f"Chance level: {audit['chance']:.2f}; {audit['protocol']}.")
    if audit["warning"]:
        header = ("> ## ⚠️ SHORTCUT WARNING\n>\n> **" + audit["sentence"] + "**\n>\n> Check every later result "
                  "against this: high accuracy on these data may come from the source, not from the brain.\n\n")
        return header + table
    return f"**Shortcut audit: no warning.** {audit['sentence']}\n\n{table}"


# ----------------------------------------------------------------------------------------------- run


def _save(figure: Figure, path: Path) -> Path:
    """Save a figure as PNG and release its memory."""
    storage.save_figure(figure, path)
    figure.clear()
    return path


def run_eda(manifest: pd.DataFrame, report: dict, out_dir: str | os.PathLike, data_label: str, seed: int,
            max_images: int = MAX_IMAGES, permutations: int = PERMUTATIONS) -> dict:
    """Write every EDA table, figure and the shortcut audit under `out_dir`; return (and write) the summary."""
    _check_manifest(manifest)
    out_dir = Path(out_dir)
    classes = class_order(manifest)
    images, subjects_per_split = class_distribution(manifest), subject_distribution(manifest)
    subjects = subject_table(manifest)
    sample = sample_manifest(manifest, max_images, seed)
    statistics = image_statistics(sample)
    written = [
        storage.write_csv(out_dir / "class_distribution_images.csv", images, index=True),
        storage.write_csv(out_dir / "class_distribution_subjects.csv", subjects_per_split, index=True),
        _save(class_distribution_figure(images, subjects_per_split, data_label), out_dir / "class_distribution.png"),
        storage.write_csv(out_dir / "subjects.csv", subjects),
        storage.write_csv(out_dir / "slices_per_subject.csv", slices_per_subject(subjects)),
        _save(slices_per_subject_figure(subjects, data_label, classes), out_dir / "slices_per_subject.png"),
        storage.write_csv(out_dir / "image_properties.csv", image_properties(manifest)),
        storage.write_csv(out_dir / "intensity_by_class.csv", intensity_by_class(statistics)),
        storage.write_parquet(out_dir / "image_statistics.parquet", statistics.drop(columns="histogram")),
        _save(intensity_histogram_figure(statistics, data_label, classes), out_dir / "intensity_histograms.png"),
        _save(sample_grid_figure(manifest, data_label, seed), out_dir / "sample_grid.png"),
        storage.write_csv(out_dir / "duplicates.csv", duplicates_summary(report)),
    ]
    audit_input = sample.join(statistics[[*STATISTIC_COLUMNS, "error"]])
    audit = {"data_label": data_label, **shortcut_audit(audit_input, seed, permutations)}
    written.append(storage.write_json(out_dir / "shortcut_audit.json", audit))
    summary = _summary(manifest, subjects, statistics, report, audit, data_label, seed)
    summary["files"] = sorted(path.name for path in [*written, out_dir / "summary.json"])
    storage.write_json(out_dir / "summary.json", summary)
    return summary


def _summary(manifest: pd.DataFrame, subjects: pd.DataFrame, statistics: pd.DataFrame, report: dict, audit: dict,
             data_label: str, seed: int) -> dict:
    """Return the JSON summary of the EDA (counts, subjects, sizes, intensities, duplicates, audit)."""
    unreadable = statistics[statistics["error"].notna()]
    return {
        "data_label": data_label, "seed": seed, "images": int(len(manifest)),
        "subjects": int(manifest["subject_id"].nunique()), "classes": class_order(manifest),
        "images_per_class": manifest["label"].astype(str).value_counts().to_dict(),
        "images_per_split": manifest["split"].astype(str).value_counts().to_dict(),
        "subjects_with_several_labels": subjects.loc[subjects["labels"] > 1, "subject_id"].astype(str).tolist(),
        "subjects_in_several_splits": int(subjects["split"].str.contains("|", regex=False).sum()),
        "image_sizes": (manifest["width"].astype(str) + "x" + manifest["height"].astype(str)).value_counts().to_dict(),
        "modes": manifest["mode"].fillna("unknown").astype(str).value_counts().to_dict(),
        "formats": manifest["format"].fillna("unknown").astype(str).value_counts().to_dict(),
        "brain_threshold": BRAIN_THRESHOLD, "images_measured": int(statistics["error"].isna().sum()),
        "unreadable": [{"path": str(path), "reason": reason} for path, reason in
                       zip(unreadable["path"], unreadable["error"])],
        "intensity_by_class": intensity_by_class(statistics).to_dict(orient="records"),
        "duplicates": duplicates_summary(report).to_dict(orient="records"),
        "shortcut_audit": audit,
    }
