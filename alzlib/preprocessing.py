"""Preprocessing (notebook 03): the decoded uint8 image cache, letterboxing, and each model family's input pipeline.

Images are decoded once into a uint8 array (N x S x S) on disk; every later stage reads that array. The input
pipeline then casts each batch to float, applies the training-only augmentation (Keras preprocessing layers, values
0-255, on the grey channel), repeats the grey channel three times and applies the family's preprocessing. Under the
TensorFlow backend that pipeline is tf.data (prefetched, measured fastest there); under JAX and PyTorch it is a
`keras.utils.PyDataset` over the same cache with the same Keras layers, so no TensorFlow is needed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import config
from alzlib.storage import atomic_path

# Bump when the cached pixels would change (letterbox geometry, interpolation): old caches are then ignored.
CACHE_VERSION = 1
INTERPOLATIONS = ("area", "nearest", "linear")
FAMILIES = {
    "baseline_cnn": "baseline",
    config.CONTROL_MODEL_NAME: "baseline",
    "resnet50": "resnet50",
    "resnet50_attention": "resnet50",
    "efficientnetb0": "efficientnet",
}
# Keras' caffe-mode preprocessing of ResNet50: BGR order and these ImageNet means subtracted (0-255 input).
CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)
# Rotation and zoom fill with black: MRI background is black, and the default 'reflect' would mirror brain
# tissue into the padding, drawing anatomy that is not there.
_GEOMETRIC_FILL = {"fill_mode": "constant", "fill_value": 0.0}
# The baseline's rotation is +-0.03 turns (+-11 degrees), not the seed recipe's 0.2 (+-72): slice data sets are
# roughly aligned axial slices, and rotations far beyond any head pose in the data cost the baseline CNN its focal
# evidence in short budgets (bench/cohort_v2.py --cnn, cohort version 2: 0.36 at +-72 degrees and 4 epochs, 0.44 at
# +-11 and 8 epochs, mean of 3 splits; docs/synthetic_cohort.md).
AUGMENTATIONS = {
    "baseline": [
        {"layer": "RandomFlip", "mode": "horizontal"},
        {"layer": "RandomRotation", "factor": 0.03, **_GEOMETRIC_FILL},
        {"layer": "RandomZoom", "height_factor": 0.2, **_GEOMETRIC_FILL},
    ],
    "transfer": [
        {"layer": "RandomFlip", "mode": "horizontal"},
        {"layer": "RandomRotation", "factor": 0.15, **_GEOMETRIC_FILL},
        {"layer": "RandomZoom", "height_factor": 0.2, **_GEOMETRIC_FILL},
        {"layer": "RandomContrast", "factor": 0.2, "value_range": [0, 255]},
        {"layer": "RandomBrightness", "factor": 0.2, "value_range": [0, 255]},
    ],
}
SCALING = {
    "baseline": "divide by 255 (values 0-1)",
    "resnet50": ("keras.applications.resnet50.preprocess_input (caffe mode: 0-255 input, RGB to BGR, ImageNet "
                 "channel means subtracted, no scaling)"),
    "efficientnet": ("none: keras.applications.efficientnet.preprocess_input is a pass-through because Keras' "
                     "EfficientNetB0 contains its own Rescaling(1/255) and Normalization layers, so the model "
                     "takes 0-255 RGB"),
}


# ----------------------------------------------------------------------------------------------- reading


def _load_with_pil(path: str) -> np.ndarray:
    """Read an image file as uint8 greyscale with PIL (used until alzlib.ingestion exists)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def read_image(path: str) -> np.ndarray:
    """Return one manifest image as uint8 greyscale H x W (alzlib.ingestion.load_image)."""
    try:
        from alzlib.ingestion import load_image
    except ImportError:
        load_image = _load_with_pil
    image = np.asarray(load_image(path))
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"{path}: expected a uint8 greyscale image, got shape {image.shape} dtype {image.dtype}.")
    return image


# ----------------------------------------------------------------------------------------------- letterbox


def _cv2_interpolation(interpolation: str) -> int:
    """Return the OpenCV flag of an interpolation name."""
    import cv2

    flags = {"area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR}
    if interpolation not in flags:
        raise ValueError(f"Unknown interpolation {interpolation!r}: expected one of {INTERPOLATIONS}.")
    return flags[interpolation]


def letterbox_geometry(height: int, width: int, size: int) -> dict:
    """Return how an image of height x width sits in a size x size letterbox: scale, content size and offsets."""
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"Letterbox needs positive sizes, got height={height}, width={width}, size={size}.")
    scale = size / max(height, width)
    content_height = min(size, max(1, round(height * scale)))
    content_width = min(size, max(1, round(width * scale)))
    return {"scale": scale, "height": content_height, "width": content_width,
            "top": (size - content_height) // 2, "left": (size - content_width) // 2, "size": size}


def letterbox(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize `image` (H x W or H x W x C) to fit size x size keeping its aspect ratio, centred on black padding."""
    import cv2

    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Expected an image of shape (height, width[, channels]), got shape {image.shape}.")
    geometry = letterbox_geometry(image.shape[0], image.shape[1], size)
    resized = cv2.resize(image, (geometry["width"], geometry["height"]),
                         interpolation=_cv2_interpolation(interpolation))
    if image.ndim == 3 and resized.ndim == 2:  # OpenCV drops a single channel axis
        resized = resized[..., np.newaxis]
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    top, left = geometry["top"], geometry["left"]
    canvas[top:top + geometry["height"], left:left + geometry["width"]] = resized
    return canvas


def unletterbox(array: np.ndarray, height: int, width: int, interpolation: str = "linear") -> np.ndarray:
    """Map a size x size array (a heatmap or mask on the letterboxed image) back onto the original height x width."""
    import cv2

    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.shape[0] != array.shape[1]:
        raise ValueError(f"Expected a square letterboxed array, got shape {array.shape}.")
    geometry = letterbox_geometry(height, width, array.shape[0])
    content = array[geometry["top"]:geometry["top"] + geometry["height"],
                    geometry["left"]:geometry["left"] + geometry["width"]]
    restored = cv2.resize(np.ascontiguousarray(content), (width, height),
                          interpolation=_cv2_interpolation(interpolation))
    if array.ndim == 3 and restored.ndim == 2:
        restored = restored[..., np.newaxis]
    return restored


# ----------------------------------------------------------------------------------------------- cache


def cache_key(manifest: pd.DataFrame, image_size: int) -> str:
    """Return the hash that names a cache: the manifest's paths and sha256 in row order, the size, the version."""
    for column in ("path", "sha256"):
        if column not in manifest.columns:
            raise ValueError(f"The manifest has no {column!r} column: the image cache is keyed by path and sha256.")
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{int(image_size)}|".encode())
    for path, sha in zip(manifest["path"].astype(str), manifest["sha256"].astype(str)):
        digest.update(f"{path}\t{sha}\n".encode())
    return digest.hexdigest()


def cache_file(manifest: pd.DataFrame, image_size: int, cache_dir: str | os.PathLike) -> Path:
    """Return the path of the cache file of `manifest` at `image_size`."""
    return Path(cache_dir) / f"images_{int(image_size)}px_{cache_key(manifest, image_size)[:20]}.npy"


def decode_images(paths: Sequence[str], image_size: int, workers: int | None = None) -> np.ndarray:
    """Read and letterbox every image (a thread pool: OpenCV and PIL release the GIL); return uint8 N x S x S."""
    def decode(path: str) -> np.ndarray:
        return letterbox(read_image(path), image_size, interpolation="area")

    workers = workers or min(8, os.cpu_count() or 1)
    images = np.zeros((len(paths), image_size, image_size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, image in enumerate(pool.map(decode, list(paths))):
            images[index] = image
    return images


def load_image_cache(manifest: pd.DataFrame, image_size: int, cache_dir: str | os.PathLike) -> np.ndarray:
    """Return the letterboxed uint8 images of `manifest` (row order), decoding and saving them only when not cached."""
    if len(manifest) == 0:
        raise ValueError("The manifest is empty: there are no images to cache.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8 pixels, got {image_size!r}.")
    path = cache_file(manifest, image_size, cache_dir)
    if path.is_file():
        images = np.load(path, allow_pickle=False)
        if images.shape == (len(manifest), image_size, image_size) and images.dtype == np.uint8:
            return images
    images = decode_images(manifest["path"].astype(str).tolist(), int(image_size))
    with atomic_path(path) as temporary:
        np.save(temporary, images, allow_pickle=False)
    return images


# ----------------------------------------------------------------------------------------------- specs


def model_family(model_name: str) -> str:
    """Return the preprocessing family of a model name (baseline, resnet50 or efficientnet)."""
    if model_name not in FAMILIES:
        raise ValueError(f"Unknown model {model_name!r}: expected one of {', '.join(FAMILIES)}.")
    return FAMILIES[model_name]


def preprocessing_spec(model_name: str, image_size: int) -> dict:
    """Return the JSON-ready description of how `model_name` sees an image (stored in its recipe record)."""
    family = model_family(model_name)
    augmentation = AUGMENTATIONS["baseline" if family == "baseline" else "transfer"]
    return {
        "model": model_name,
        "family": family,
        "image_size": int(image_size),
        "channels": 3,
        "input": "uint8 greyscale, letterboxed",
        "resize": "letterbox",
        "resize_interpolation": "area",
        "padding": "black (0), image centred",
        "channel_expansion": "grey repeated to 3 channels",
        "scaling": SCALING[family],
        "augmentation": [dict(entry) for entry in augmentation],
        "augmentation_value_range": [0, 255],
        "augmentation_applies_to": "training batches only",
    }


def _check_spec(spec: dict) -> str:
    """Return the spec's family, raising ValueError on a spec that is not one of ours."""
    if not isinstance(spec, dict) or spec.get("family") not in ("baseline", "resnet50", "efficientnet"):
        raise ValueError(f"Not a preprocessing spec (family baseline/resnet50/efficientnet expected): {spec!r}.")
    return spec["family"]


def scale_for_family(images, family: str):
    """Apply the family's preprocessing to float RGB 0-255 images (NumPy arrays or backend tensors)."""
    if family == "baseline":
        return images / 255.0
    if family == "resnet50":
        from keras.applications import resnet50

        return resnet50.preprocess_input(images)
    if family == "efficientnet":
        return images
    raise ValueError(f"Unknown preprocessing family {family!r}: expected baseline, resnet50 or efficientnet.")


def build_augmentation(spec: dict, seed: int) -> list:
    """Return the spec's Keras augmentation layers, each seeded from `seed`."""
    import keras

    _check_spec(spec)
    layers = []
    for offset, entry in enumerate(spec["augmentation"]):
        arguments = {key: (tuple(value) if isinstance(value, list) else value)
                     for key, value in entry.items() if key != "layer"}
        layers.append(getattr(keras.layers, entry["layer"])(seed=int(seed) + offset, **arguments))
    return layers


# ----------------------------------------------------------------------------------------------- input pipelines


def _check_arrays(images: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray | None) -> None:
    """Raise ValueError unless images are uint8 N x S x S and labels (and weights) have N rows."""
    if not isinstance(images, np.ndarray) or images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"Expected uint8 images of shape (N, S, S), got {getattr(images, 'shape', None)} "
                         f"{getattr(images, 'dtype', type(images).__name__)}.")
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images: they must align.")
    if sample_weights is not None and len(sample_weights) != len(images):
        raise ValueError(f"{len(sample_weights)} sample weights for {len(images)} images: they must align.")
    if len(images) == 0:
        raise ValueError("No images: a dataset needs at least one.")


def make_dataset(images_uint8: np.ndarray, labels: np.ndarray, spec: dict, training: bool, batch_size: int,
                 seed: int, sample_weights: np.ndarray | None = None):
    """Return the batches of (images, labels[, sample_weights]) one model family trains or is scored on.

    Training: shuffled with `seed` and reshuffled each epoch, augmented. Evaluation: fixed order, no augmentation,
    and the preprocessed batches are cached so later epochs repeat no work. A prefetched tf.data.Dataset under the
    TensorFlow backend, else a keras.utils.PyDataset (`make_loader`).
    """
    from alzlib import backend

    family = _check_spec(spec)
    labels = np.asarray(labels)
    _check_arrays(images_uint8, labels, sample_weights)
    _check_batch_size(batch_size)
    if backend.active_backend() != "tensorflow":
        return make_loader(images_uint8, labels, spec, training, batch_size, seed, sample_weights)
    import tensorflow as tf

    tensors = (images_uint8, labels) if sample_weights is None else (
        images_uint8, labels, np.asarray(sample_weights, dtype=np.float32))
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        dataset = dataset.shuffle(len(images_uint8), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(int(batch_size))

    def to_float(images, *rest):
        return (tf.cast(images, tf.float32)[..., tf.newaxis], *rest)

    def preprocess(images, *rest):
        # Grey is repeated to three channels only now: augmenting one channel instead of three identical ones
        # gives the same images (the layers act per channel) at 2.4x the speed (docs/benchmarks.md).
        return (scale_for_family(tf.repeat(images, 3, axis=-1), family), *rest)

    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        layers = build_augmentation(spec, seed)

        def augment(images, *rest):
            for layer in layers:
                images = layer(images, training=True)
            return (images, *rest)

        # Sequential on purpose: each Keras layer draws from a seed-generator variable, and parallel calls
        # would race on it and make the augmentation irreproducible. Measured: ~290 images/s at 128 px on
        # 2 cores, far above any model's training throughput, and prefetch overlaps it with training.
        dataset = dataset.map(augment, num_parallel_calls=None)
    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    if not training:
        dataset = dataset.cache()
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_batch_size(batch_size) -> None:
    """Raise ValueError unless `batch_size` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def _augment(images_float, layers: list):
    """Return float32 N x S x S x 1 images (NumPy) after the Keras augmentation `layers`, in training mode."""
    import keras

    batch = keras.ops.convert_to_tensor(images_float, "float32")
    for layer in layers:
        batch = layer(batch, training=True)
    return np.asarray(keras.ops.convert_to_numpy(batch), dtype=np.float32)


def make_loader(images_uint8: np.ndarray, labels: np.ndarray, spec: dict, training: bool, batch_size: int,
                seed: int, sample_weights: np.ndarray | None = None):
    """Return a keras.utils.PyDataset of (images, labels[, sample_weights]) batches: the backend-neutral pipeline.

    The same batches as `make_dataset`'s tf.data pipeline: training shuffled with `seed` (a new order each epoch)
    and augmented by the same Keras layers; evaluation in fixed order, preprocessed once and kept in memory.
    """
    family = _check_spec(spec)
    labels = np.asarray(labels)
    _check_arrays(images_uint8, labels, sample_weights)
    _check_batch_size(batch_size)
    layers = build_augmentation(spec, seed) if training else []
    weights = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float32)
    return _loader_class()(images_uint8, labels, weights, family, layers, int(batch_size), int(seed), training)


@functools.cache
def _loader_class():
    """Return the PyDataset class of `make_loader` (defined on first use, so importing alzlib imports no Keras)."""
    import keras

    class CachedImageLoader(keras.utils.PyDataset):
        """Batches from the uint8 cache: shuffled and augmented for training, cached after preprocessing otherwise.

        One worker, no threads: each augmentation layer draws from its own seed generator, and concurrent batches
        would race on it and make the augmentation irreproducible (the tf.data pipeline maps it sequentially for
        the same reason). JAX and PyTorch dispatch GPU work asynchronously, so the next batch is still prepared
        while the device trains on this one.
        """

        def __init__(self, images, labels, weights, family, layers, batch_size, seed, training):
            super().__init__(workers=1, use_multiprocessing=False)
            self.images, self.labels, self.weights = images, labels, weights
            self.family, self.layers, self.batch_size = family, layers, batch_size
            self.seed, self.training, self.epoch, self.cache = seed, training, 0, {}
            self.order = self._order()

        def _order(self) -> np.ndarray:
            if not self.training:
                return np.arange(len(self.images))
            return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

        def __len__(self) -> int:
            return -(-len(self.images) // self.batch_size)

        def __getitem__(self, index: int):
            if not 0 <= index < len(self):
                raise IndexError(f"Batch {index} of {len(self)}.")
            if index in self.cache:
                return self.cache[index]
            rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
            batch = self.images[rows].astype(np.float32)[..., np.newaxis]
            if self.layers:
                batch = _augment(batch, self.layers)
            # Grey is repeated to three channels only now, as in the tf.data pipeline (2.4x faster augmentation).
            inputs = np.asarray(scale_for_family(np.repeat(batch, 3, axis=-1), self.family), dtype=np.float32)
            item = (inputs, self.labels[rows]) if self.weights is None else (inputs, self.labels[rows],
                                                                             self.weights[rows])
            if not self.training:
                self.cache[index] = item
            return item

        def on_epoch_end(self) -> None:
            if self.training:
                self.epoch += 1
                self.order = self._order()

    return CachedImageLoader


def first_batch(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Return the first (images, labels) batch of a `make_dataset` pipeline as NumPy arrays (for notebooks)."""
    import keras

    images, labels = next(iter(dataset))[:2]
    return keras.ops.convert_to_numpy(images), keras.ops.convert_to_numpy(labels)


def augment_images(images_uint8: np.ndarray, spec: dict, seed: int) -> np.ndarray:
    """Return one augmented copy (float32 0-255, greyscale N x S x S) of each image, as training would draw it."""
    _check_arrays(images_uint8, np.zeros(len(images_uint8)), None)
    return _augment(images_uint8.astype(np.float32)[..., np.newaxis], build_augmentation(spec, seed))[..., 0]


def prepare_images(images: Sequence[np.ndarray] | np.ndarray, spec: dict) -> np.ndarray:
    """Return float32 N x S x S x 3 model inputs from uint8 greyscale images of any size, as evaluation sees them."""
    family = _check_spec(spec)
    size = int(spec["image_size"])
    if len(images) == 0:
        raise ValueError("No images to prepare.")
    boxed = np.zeros((len(images), size, size), dtype=np.uint8)
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"Image {index}: expected uint8 greyscale (height, width), got shape {image.shape} "
                             f"dtype {image.dtype}.")
        boxed[index] = image if image.shape == (size, size) else letterbox(image, size, interpolation="area")
    rgb = np.repeat(boxed.astype(np.float32)[..., np.newaxis], 3, axis=-1)
    return np.asarray(scale_for_family(rgb, family), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- notebook 03


def plot_augmented_samples(images_uint8: np.ndarray, spec: dict, seed: int, samples: int = 4, copies: int = 4,
                           title: str = ""):
    """Return a figure: each row one image, first its letterboxed original, then `copies` training augmentations."""
    from matplotlib.figure import Figure

    samples = min(samples, len(images_uint8))
    if samples < 1 or copies < 1:
        raise ValueError(f"Need at least one sample and one copy, got samples={samples}, copies={copies}.")
    chosen = images_uint8[:samples]
    augmented = [augment_images(chosen, spec, seed + 1000 * copy) for copy in range(copies)]
    figure = Figure(figsize=(1.8 * (copies + 1), 1.8 * samples), layout="constrained")
    axes = figure.subplots(samples, copies + 1, squeeze=False)
    for row in range(samples):
        axes[row, 0].imshow(chosen[row], cmap="gray", vmin=0, vmax=255)
        for column in range(copies):
            axes[row, column + 1].imshow(np.clip(augmented[column][row], 0, 255), cmap="gray", vmin=0, vmax=255)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_title("letterboxed", fontsize=9)
    for column in range(copies):
        axes[0, column + 1].set_title(f"augmented {column + 1}", fontsize=9)
    layers = ", ".join(entry["layer"].replace("Random", "") for entry in spec["augmentation"])
    figure.suptitle(f"{title + ': ' if title else ''}{spec['model']} training augmentation ({layers})", fontsize=10)
    return figure


def preprocessing_summary(manifest: pd.DataFrame, images_uint8: np.ndarray, image_size: int,
                          cache_dir: str | os.PathLike | None = None,
                          model_names: Sequence[str] = config.MODEL_NAMES) -> dict:
    """Return what notebook 03 records: sizes before and after letterboxing, cache size, padding, pixel statistics."""
    if len(images_uint8) != len(manifest):
        raise ValueError(f"{len(images_uint8)} cached images for {len(manifest)} manifest rows: they must align.")
    summary = {"images": int(len(manifest)), "image_size": int(image_size), "resize": "letterbox (aspect kept, "
               "black padding, cv2.INTER_AREA)", "cache_dtype": "uint8",
               "cache_megabytes": round(images_uint8.nbytes / 2**20, 2),
               "float32_equivalent_megabytes": round(images_uint8.nbytes * 4 * 3 / 2**20, 2)}
    if cache_dir is not None:
        summary["cache_file"] = str(cache_file(manifest, image_size, cache_dir))
    if {"width", "height"} <= set(manifest.columns):
        sizes = manifest.groupby(["width", "height"]).size().sort_values(ascending=False)
        summary["original_sizes"] = [{"width": int(width), "height": int(height), "images": int(count)}
                                     for (width, height), count in sizes.head(10).items()]
        geometry = [letterbox_geometry(int(height), int(width), image_size)
                    for width, height in zip(manifest["width"], manifest["height"])]
        summary["padding_fraction_mean"] = float(np.mean(
            [1 - g["height"] * g["width"] / image_size**2 for g in geometry]))
    if "split" in manifest.columns:
        summary["images_per_split"] = {str(key): int(value) for key, value in manifest["split"].value_counts().items()}
    pixels = images_uint8.astype(np.float32)
    summary["pixel_mean"] = float(pixels.mean())
    summary["pixel_std"] = float(pixels.std())
    summary["black_pixel_fraction"] = float((images_uint8 == 0).mean())
    summary["specs"] = {name: preprocessing_spec(name, image_size) for name in model_names}
    return summary
