"""Prediction (the `alzlib predict` command): classify new image files with a saved model and its recipe record.

The model is loaded in Keras safe mode; the images go through exactly the preprocessing its recipe record
(models/<name>.json, written by training) describes. Every answer says whether the model was trained on the
synthetic cohort and that it is for research only.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alzlib import config, environment, preprocessing
from alzlib.storage import save_figure

NOTE = "research use only, not for clinical use"
RECORD_KEYS = ("preprocessing", "class_names", "synthetic")
# The smallest side the models are built for (models.build_model): a smaller image would be upscaled into
# the letterbox from too few pixels to show any anatomy.
MIN_IMAGE_SIDE = 32
# Images are read, prepared and predicted this many at a time, so memory stays bounded on long lists.
CHUNK_SIZE = 64
# PIL modes holding more than 8 bits per pixel.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Every .keras archive holds the model's configuration under this name (with metadata.json and the weights).
KERAS_CONFIG_MEMBER = "config.json"


class ImageError(ValueError):
    """One image could not be answered; the message is the sentence its JSON entry carries."""


@dataclass(frozen=True)
class Predictor:
    """A loaded model with its recipe record."""

    model: object
    record: dict
    model_path: Path

    @property
    def name(self) -> str:
        """The model's name in its record (the file name without .keras when the record has none)."""
        return str(self.record.get("model") or self.model_path.stem)

    @property
    def class_names(self) -> list[str]:
        """The class names in output order."""
        return [str(name) for name in self.record["class_names"]]

    @property
    def spec(self) -> dict:
        """The preprocessing spec the model was trained with."""
        return self.record["preprocessing"]

    @property
    def synthetic(self) -> bool:
        """True when the model was trained on the synthetic cohort."""
        return bool(self.record["synthetic"])


# ----------------------------------------------------------------------------------------------- model and record


def record_path(model_path: str | Path) -> Path:
    """Return where the recipe record of a .keras model lives: the .json of the same name beside it."""
    return Path(model_path).with_suffix(".json")


def _check_record(record: dict, path: Path) -> dict:
    """Return `record` if it has what prediction needs, else raise ValueError naming the file and the gap."""
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a {type(record).__name__}, not the recipe record (a JSON object) training "
                         f"writes.")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: expected the recipe record training writes, with keys "
                         f"{', '.join(RECORD_KEYS)}.")
    spec = record["preprocessing"]
    families = set(preprocessing.FAMILIES.values())
    if not isinstance(spec, dict) or spec.get("family") not in families or "image_size" not in spec:
        raise ValueError(f"{path}: 'preprocessing' is not a preprocessing spec (expected a family among "
                         f"{sorted(families)} and an image_size), got {spec!r}.")
    names = record["class_names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{path}: 'class_names' must list at least two class names, got {names!r}.")
    if record.get("num_classes", len(names)) != len(names):
        raise ValueError(f"{path}: num_classes is {record['num_classes']!r} but class_names lists {len(names)}: "
                         f"expected the recipe record training writes, where they agree.")
    return record


def read_record(model_path: str | Path) -> dict:
    """Return the recipe record beside `model_path`, raising FileNotFoundError/ValueError that name the file."""
    path = record_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"No recipe record {path} beside the model {model_path}: prediction needs the .json "
                                f"that training writes next to the .keras file (keys {', '.join(RECORD_KEYS)}), "
                                f"to prepare images exactly as the model was trained.")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): expected the recipe record training writes.") from error
    return _check_record(record, path)


def _check_model_matches(model, record: dict, model_path: Path) -> None:
    """Raise ValueError when the model's architecture, preprocessing, size or class count disagree with its record."""
    mismatch = f"the record {record_path(model_path)} does not belong to this model"
    # `architecture` names what was built (a control run has its own `model` name); older records have `model` only.
    named = (record.get("architecture"), record.get("model"))
    described = next((name for name in named if name in config.ALL_MODEL_NAMES), None)
    if model.name in config.ALL_MODEL_NAMES and described not in (None, model.name):
        raise ValueError(f"{model_path} holds a {model.name} model but its record describes {described}: {mismatch}.")
    family = preprocessing.FAMILIES.get(model.name)
    if family is not None and record["preprocessing"]["family"] != family:
        raise ValueError(f"{model_path} holds a {model.name} model (preprocessing family {family!r}) but its record "
                         f"prepares images for the {record['preprocessing']['family']!r} family: {mismatch}.")
    size, classes = int(record["preprocessing"]["image_size"]), len(record["class_names"])
    if tuple(model.input_shape[1:3]) != (size, size):
        raise ValueError(f"{model_path} takes {model.input_shape[1:3]} images but its record says {size} x {size}: "
                         f"{mismatch}.")
    if model.output_shape[-1] != classes:
        raise ValueError(f"{model_path} outputs {model.output_shape[-1]} classes but its record names {classes}: "
                         f"{mismatch}.")


def _check_keras_archive(model_path: Path) -> None:
    """Raise ValueError unless `model_path` is a zip archive holding the config.json every .keras file has."""
    if not zipfile.is_zipfile(model_path):
        raise ValueError(f"{model_path} is not a Keras model archive (a .keras file is a zip archive): expected a "
                         f"model saved by training.")
    try:
        with zipfile.ZipFile(model_path) as archive:
            members = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{model_path} is not a Keras model archive ({error}): expected a .keras file saved by "
                         f"training.") from error
    if KERAS_CONFIG_MEMBER not in members:
        raise ValueError(f"{model_path} is not a Keras model archive: it is a zip file without the "
                         f"{KERAS_CONFIG_MEMBER} a .keras file holds; expected a model saved by training.")


def load_predictor(model_path: str | Path) -> Predictor:
    """Load a .keras model in safe mode with its recipe record; raise FileNotFoundError/ValueError naming the file."""
    from alzlib import training

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"Model file {model_path} does not exist: expected a .keras file written by training "
                                f"(outputs/<profile>/<run>/models/<name>.keras).")
    if model_path.suffix != ".keras":
        raise ValueError(f"{model_path} is not a .keras file: expected a model saved by training "
                         f"(outputs/<profile>/<run>/models/<name>.keras).")
    _check_keras_archive(model_path)
    record = read_record(model_path)
    environment.quiet_tensorflow()
    try:
        model = training.load_trained_model(model_path)
    # What Keras raised on damaged archives (tried: config.json not JSON, not a model, layers cut or mistyped; weights
    # missing or not HDF5): ValueError, TypeError, RuntimeError (a layer graph it cannot rebuild), KeyError (a missing
    # member) and OSError (h5py, zipfile).
    except (ValueError, TypeError, RuntimeError, KeyError, OSError) as error:
        raise ValueError(f"{model_path} could not be loaded as a Keras model in safe mode "
                         f"({type(error).__name__}: {error}): expected a .keras model saved by training.") from error
    _check_model_matches(model, record, model_path)
    return Predictor(model=model, record=record, model_path=model_path)


# ----------------------------------------------------------------------------------------------- images


def _clipped_high_bit_depth(path: Path, image: np.ndarray) -> int | None:
    """Return the file's maximum value when it holds more than 8 bits and the reader clipped it, else None."""
    from PIL import Image

    with Image.open(path) as handle:
        if handle.mode not in HIGH_BIT_DEPTH_MODES:
            return None
        values = np.asarray(handle)
    if values.ndim != 2 or values.max() <= 255:
        return None
    clipped = np.clip(values, 0, 255).astype(np.uint8)
    return int(values.max()) if np.array_equal(image, clipped) else None


def read_for_prediction(path: str | Path) -> np.ndarray:
    """Return an image file as uint8 greyscale (preprocessing.read_image), or raise ImageError saying why not."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path} does not exist.")
    if not path.is_file():
        raise ImageError(f"{path} is not a file: expected an image file.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes): expected an image file.")
    try:
        image = preprocessing.read_image(str(path))
    # Pillow signals undecodable, truncated and unknown files with OSError (UnidentifiedImageError is one),
    # some broken headers with SyntaxError or ValueError, and oversized ones with DecompressionBombError.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path} could not be read as an image ({type(error).__name__}: {error}).") from error
    maximum = _clipped_high_bit_depth(path, image)
    if maximum is not None:
        raise ImageError(f"{path} has more than 8 bits per pixel (values up to {maximum}) and the image reader clips "
                         f"everything above 255 to white: convert it to 8-bit greyscale first.")
    height, width = image.shape
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageError(f"{path} is {width} x {height} pixels: too small, expected at least {MIN_IMAGE_SIDE} "
                         f"pixels on each side.")
    return image


# ----------------------------------------------------------------------------------------------- answers


def top_classes(probabilities: np.ndarray, class_names: Sequence[str], count: int) -> list[dict]:
    """Return the `count` most probable classes, most probable first, as {"class", "probability"}."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:count]
    return [{"class": class_names[index], "probability": float(probabilities[index])} for index in order]


def answer(path: str | Path, probabilities: np.ndarray, predictor: Predictor, top: int | None = None) -> dict:
    """Return the JSON entry of one answered image."""
    names = predictor.class_names
    entry = {"image": str(path), "model": predictor.name, "model_file": str(predictor.model_path),
             "predicted_class": names[int(np.argmax(probabilities))],
             "probabilities": {name: float(value) for name, value in zip(names, probabilities)}}
    if top is not None:
        entry["top"] = top_classes(probabilities, names, top)
    entry.update(synthetic_training_data=predictor.synthetic, note=NOTE)
    return entry


def check_top(top: int | None, class_count: int) -> int | None:
    """Return `top` if it is None or between 1 and the class count, else raise ValueError."""
    if top is not None and not 1 <= top <= class_count:
        raise ValueError(f"--top must be between 1 and {class_count} (the model's classes), got {top}.")
    return top


def gradcam_file_name(path: Path, used: set[str]) -> str:
    """Return '<stem>_gradcam.png' for an image, numbered when two images share a stem."""
    name, number = f"{path.stem}_gradcam.png", 2
    while name in used:
        name, number = f"{path.stem}_{number}_gradcam.png", number + 1
    used.add(name)
    return name


def write_overlay(image: np.ndarray, heatmap: np.ndarray, caption: str, path: Path) -> Path:
    """Save the Grad-CAM heatmap (on the letterboxed input) over the original image as a PNG; return the path."""
    from matplotlib.figure import Figure

    from alzlib.explain import _show_overlay

    height, width = image.shape
    # The heatmap covers the letterboxed square: map it back onto the original pixels before drawing.
    restored = np.clip(preprocessing.unletterbox(heatmap, height, width), 0.0, 1.0)
    figure = Figure(figsize=(4.0, 4.0 * height / width + 0.4), layout="constrained")
    _show_overlay(figure.subplots(), image, restored, caption)
    return save_figure(figure, path)


# ----------------------------------------------------------------------------------------------- predict


def _predict_chunk(predictor: Predictor, paths: Sequence[Path], images: Sequence[np.ndarray], explainer,
                   gradcam_dir: Path | None, used_names: set[str], top: int | None) -> list[dict]:
    """Return the entries of readable images: probabilities from the model and, with `explainer`, an overlay each."""
    inputs = preprocessing.prepare_images(list(images), predictor.spec)
    probabilities = np.asarray(predictor.model.predict(inputs, batch_size=len(inputs), verbose=0), dtype=np.float64)
    entries = [answer(path, row, predictor, top) for path, row in zip(paths, probabilities)]
    if explainer is None:
        return entries
    heatmaps = explainer.compute(inputs)["heatmaps"]
    for entry, path, image, heatmap in zip(entries, paths, images, heatmaps):
        caption = (f"{path.name}\n{predictor.name}: {entry['predicted_class']} "
                   f"p={entry['probabilities'][entry['predicted_class']]:.2f} (research use only)")
        written = write_overlay(image, heatmap, caption, gradcam_dir / gradcam_file_name(path, used_names))
        entry.update(gradcam=str(written), gradcam_layer="/".join(explainer.target_path))
    return entries


def _read_chunk(paths: Sequence[Path]) -> tuple[list[dict | None], list[tuple[Path, np.ndarray]]]:
    """Return each path's error entry (None where readable) and the readable (path, image) pairs."""
    slots: list[dict | None] = []
    readable: list[tuple[Path, np.ndarray]] = []
    for path in paths:
        try:
            readable.append((path, read_for_prediction(path)))
            slots.append(None)
        except ImageError as error:
            slots.append({"image": str(path), "error": str(error)})
    return slots, readable


def predict_images(predictor: Predictor, image_paths: Sequence[str | Path], gradcam_dir: str | Path | None = None,
                   top: int | None = None) -> list[dict]:
    """Return one JSON-ready entry per image, in order: the prediction, or {"image", "error"} when it is unusable.

    With `gradcam_dir`, a Grad-CAM overlay of the predicted class is written there for each answered image.
    """
    check_top(top, len(predictor.class_names))
    explainer = None
    if gradcam_dir is not None:
        from alzlib.explain import GradCam

        gradcam_dir, explainer = Path(gradcam_dir), GradCam.build(predictor.model)
    entries: list[dict] = []
    used_names: set[str] = set()
    for start in range(0, len(image_paths), CHUNK_SIZE):
        slots, readable = _read_chunk([Path(path) for path in image_paths[start:start + CHUNK_SIZE]])
        answered = iter(_predict_chunk(predictor, [path for path, _ in readable], [image for _, image in readable],
                                       explainer, gradcam_dir, used_names, top) if readable else [])
        entries += [slot if slot is not None else next(answered) for slot in slots]
    return entries
