"""Shared pieces of the benchmark scripts: the machine record, an image folder to read, tables and JSON output.

Benchmarks print numbers and write JSON under outputs/bench/; they are not tests. Heavy libraries (TensorFlow,
pandas, OpenCV) are imported inside the functions that need them, so the JAX benchmark can use this module on a
machine without TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from alzlib import config, environment
from alzlib.storage import write_json

# The image sizes of the cpu and full profiles, the defaults of every --sizes option.
PROFILE_SIZES = f"{config.PROFILES['cpu'].image_size},{config.PROFILES['full'].image_size}"
PROFILE_SIZES_HELP = (f"comma-separated image sizes (cpu profile {config.PROFILES['cpu'].image_size}, "
                      f"full {config.PROFILES['full'].image_size})")
# The Kaggle Alzheimer MRI set: 176 wide x 208 high greyscale JPEGs, 3200/2240/896/64 images per class.
KAGGLE_WIDTH, KAGGLE_HEIGHT = 176, 208
KAGGLE_CLASS_SHARES = {"NonDemented": 0.50, "VeryMildDemented": 0.35, "MildDemented": 0.14, "ModerateDemented": 0.01}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BENCH_LIBRARIES = ("jax", "jaxlib", "scipy", "pillow", "opencv-python-headless")


# ----------------------------------------------------------------------------------------------- arguments


def parse_names(text: str, allowed: Sequence[str]) -> list[str]:
    """Parse 'a,b' into names, raising ValueError on one not in `allowed`."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        raise ValueError(f"Expected a comma-separated list from {', '.join(allowed)}; got {text!r}.")
    return names


def parse_sizes(text: str) -> list[int]:
    """Parse '96,224' into image sizes of at least 32 pixels, raising ValueError otherwise."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"Image sizes must be integers like 96,224; got {text!r}.") from None
    if not sizes or min(sizes) < 32:
        raise ValueError(f"Image sizes must be at least 32 pixels (the backbones' minimum); got {text!r}.")
    return sizes


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_output_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """Add --output (the JSON file, default outputs/bench/<name>.json)."""
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON file to write (default: outputs/bench/{name}.json; ALZ_OUTPUTS_DIR moves outputs/)")


# ----------------------------------------------------------------------------------------------- environment


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up lines out of the benchmark output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def library_versions() -> dict:
    """Return alzlib's library versions plus the ones only benchmarks use."""
    import importlib.metadata

    versions = environment.library_versions()
    for name in BENCH_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine_record(hardware: dict | None = None) -> dict:
    """Return what every benchmark records about where and how it ran."""
    return {"started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "python": platform.python_version(), "hardware": hardware or environment.hardware(),
            "libraries": library_versions(), "git_commit": environment.git_commit(),
            "load_average_at_start": load_average()}


def output_file(name: str, override: Path | None) -> Path:
    """Return where a benchmark's JSON goes: `override`, else outputs/bench/<name>.json."""
    return Path(override) if override else config.outputs_root() / "bench" / f"{name}.json"


def write_result(name: str, override: Path | None, record: dict) -> Path:
    """Write `record` (with the load average at the end) as the benchmark's JSON; print and return the path."""
    path = write_json(output_file(name, override), {**record, "load_average_at_end": load_average()})
    print(f"\nwrote {path}")
    return path


# ----------------------------------------------------------------------------------------------- timing


def time_call(function: Callable[[], object]) -> float:
    """Return the wall seconds one call of `function` takes."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def summarise_seconds(seconds: Iterable[float]) -> dict:
    """Return the median, minimum, 90th percentile and count of repeated timings (seconds)."""
    values = sorted(float(value) for value in seconds)
    if not values:
        raise ValueError("No timings to summarise.")
    return {"median": statistics.median(values), "min": values[0],
            "p90": float(np.percentile(values, 90)), "runs": len(values)}


# ----------------------------------------------------------------------------------------------- tables


def format_cell(value) -> str:
    """Return a table cell: floats with 3 significant digits or 1 decimal, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Return `rows` as a Markdown table of `columns` (missing cells shown as '-')."""
    cells = [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]
    lines = ["| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
    lines += ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in cells]
    return "\n".join(lines)


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> None:
    """Print a Markdown table (with a title line)."""
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns), flush=True)


# ----------------------------------------------------------------------------------------------- images


def _synthetic_slice(rng: np.random.Generator, class_index: int) -> np.ndarray:
    """Return one brain-like 208 x 176 uint8 slice: a bright ellipse, darker ventricles, noise, black background."""
    import cv2

    image = np.zeros((KAGGLE_HEIGHT, KAGGLE_WIDTH), dtype=np.uint8)
    centre = (KAGGLE_WIDTH // 2 + int(rng.integers(-4, 5)), KAGGLE_HEIGHT // 2 + int(rng.integers(-4, 5)))
    axes = (int(rng.integers(60, 72)), int(rng.integers(78, 92)))
    cv2.ellipse(image, centre, axes, 0, 0, 360, int(rng.integers(110, 150)), -1)
    ventricle = (8 + 4 * class_index + int(rng.integers(0, 4)), 18 + 3 * class_index)
    cv2.ellipse(image, centre, ventricle, 0, 0, 360, 30, -1)
    texture = rng.normal(0, 18, image.shape)
    image = np.where(image > 0, np.clip(image + texture, 1, 255), 0).astype(np.uint8)
    return cv2.GaussianBlur(image, (3, 3), 0)


def make_image_folder(root: Path, count: int, seed: int = 0) -> Path:
    """Write `count` Kaggle-like 176x208 greyscale JPEGs as <root>/<Class>/*.jpg (Kaggle's class mix); return root."""
    import cv2

    if count < len(KAGGLE_CLASS_SHARES):
        raise ValueError(f"Need at least {len(KAGGLE_CLASS_SHARES)} images (one per class), got {count}.")
    rng = np.random.default_rng(seed)
    counts = {name: max(1, round(share * count)) for name, share in KAGGLE_CLASS_SHARES.items()}
    counts["NonDemented"] += count - sum(counts.values())
    for class_index, (name, class_count) in enumerate(counts.items()):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(class_count):
            cv2.imwrite(str(folder / f"bench{index:05d}.jpg"), _synthetic_slice(rng, class_index),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
    return Path(root)


def list_images(root: Path) -> tuple[list[str], list[int], list[str]]:
    """Return (paths, label indices, class names) of a <root>/<Class>/<image> folder, classes sorted by name."""
    root = Path(root)
    classes = sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(path for path in (root / name).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(path) for path in files]
        labels += [index] * len(files)
    if not paths:
        raise FileNotFoundError(f"{root} has no <Class>/<image>.jpg|png files to benchmark.")
    return paths, labels, classes


def benchmark_images(folder: Path | None, count: int, seed: int = 0) -> Path:
    """Return an image folder to read: `folder`, else the cpu synthetic cohort if present, else one made under /tmp."""
    if folder is not None:
        list_images(folder)
        return Path(folder)
    cohort = config.DATA_DIR / "synthetic" / "cpu" / "images"
    if cohort.is_dir() and len(list_images(cohort)[0]) >= count:
        return cohort
    made = Path(os.environ.get("TMPDIR", "/tmp")) / f"alzlib_bench_images_{count}_{seed}"
    if not made.is_dir() or len(list_images(made)[0]) != count:
        print(f"writing {count} Kaggle-like JPEGs to {made} ...", flush=True)
        make_image_folder(made, count, seed)
    return made


def manifest_of(paths: Sequence[str], labels: Sequence[int]):
    """Return the manifest columns load_image_cache needs (path, sha256 of each file, label_index)."""
    import hashlib

    import pandas as pd

    hashes = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths]
    return pd.DataFrame({"path": list(paths), "sha256": hashes, "label_index": list(labels)})


def train_keeping_best_epoch(network, train: tuple, val: tuple, spec: dict, epochs: int, batch_size: int,
                             seed: int, num_classes: int) -> float:
    """Train a compiled network as training.train_model does and keep its best validation epoch; return that score.

    Balanced class weights as per-sample weights, batch-norm statistics re-estimated on clean training images after
    each epoch, validation balanced accuracy after each epoch (the bench scripts' shared loop).
    """
    from alzlib import preprocessing, training
    from alzlib.metrics import balanced_accuracy

    (train_images, train_labels), (val_images, val_labels) = train, val
    weights = training.balanced_class_weights(train_labels, num_classes)
    sample_weights = np.array([weights[label] for label in train_labels], dtype=np.float32)
    dataset = preprocessing.make_dataset(train_images, train_labels, spec, True, batch_size, seed, sample_weights)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(train_images))[:training.BATCH_NORM_IMAGES])
    clean = preprocessing.make_dataset(train_images[chosen], train_labels[chosen], spec, False,
                                       training.BATCH_NORM_BATCH, seed)
    validation = preprocessing.prepare_images(val_images, spec)
    best = (-1.0, None)
    for _ in range(epochs):
        network.fit(dataset, epochs=1, verbose=0)
        training.recalibrate_batch_norm(network, clean)
        score = balanced_accuracy(val_labels, network.predict(validation, verbose=0).argmax(1))
        if score > best[0]:
            best = (score, network.get_weights())
    network.set_weights(best[1])
    return best[0]
