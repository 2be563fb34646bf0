"""Training-time augmentation of the extra systems (alzlib.systems): grouped layers, Mixup/CutMix on a schedule.

Keras 3 API only (keras.layers, keras.ops, keras.random, keras.utils.PyDataset): the same code feeds TensorFlow, JAX
or PyTorch. Images are float RGB 0-255, as the systems take them.
"""

from __future__ import annotations

import math

import keras
import numpy as np


class RandomApply(keras.layers.Layer):
    """Apply a chain of augmentation layers to each image with probability `probability`, else leave it.

    Keras has no RandomApply (torchvision's transforms.RandomApply); this lives in the data pipeline only, never in a
    saved model, so it is not registered for serialisation.
    """

    def __init__(self, chain: list, probability: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"RandomApply probability must lie in [0, 1], got {probability!r}.")
        self.chain, self.probability = list(chain), float(probability)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        augmented = images
        for layer in self.chain:
            augmented = layer(augmented, training=True)
        draws = keras.random.uniform((keras.ops.shape(images)[0], 1, 1, 1), seed=self.seed_generator)
        return keras.ops.where(draws < self.probability, augmented, images)


class GaussianPixelNoise(keras.layers.Layer):
    """Add Gaussian noise of `stddev` (in pixel units) to each image in training.

    Keras' GaussianNoise refuses a stddev above 1 (it is meant for activations near 0-1); the images here are 0-255.
    """

    def __init__(self, stddev: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if stddev < 0:
            raise ValueError(f"GaussianPixelNoise stddev must be non-negative, got {stddev!r}.")
        self.stddev = float(stddev)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        noise = keras.random.normal(keras.ops.shape(images), stddev=self.stddev, seed=self.seed_generator)
        return images + keras.ops.cast(noise, images.dtype)


OWN_LAYERS = {"GaussianPixelNoise": GaussianPixelNoise}


def _layer(entry: dict, seed: int):
    """Return the layer one augmentation entry names ({'layer': name, **arguments}), seeded: Keras' or OWN_LAYERS'."""
    arguments = {key: (tuple(value) if isinstance(value, list) else value)
                 for key, value in entry.items() if key != "layer"}
    name = entry.get("layer", "")
    constructor = OWN_LAYERS.get(name) or getattr(keras.layers, name, None)
    if constructor is None:
        raise ValueError(f"Unknown augmentation layer {name!r}: expected a keras.layers name or one of "
                         f"{', '.join(OWN_LAYERS)}.")
    return constructor(seed=seed, **arguments)


def build_system_augmentation(entries: list[dict], seed: int) -> list:
    """Return the layers of a system's augmentation list; {'group': [...], 'probability': p} becomes a RandomApply."""
    built = []
    for offset, entry in enumerate(entries):
        entry_seed = int(seed) + 100 * offset
        if "group" in entry:
            chain = [_layer(inner, entry_seed + index) for index, inner in enumerate(entry["group"])]
            built.append(RandomApply(chain, entry["probability"], seed=entry_seed + 99))
        else:
            built.append(_layer(entry, entry_seed))
    return built


def augment_batch(images, layers: list):
    """Return `images` passed through each augmentation layer in training mode."""
    for layer in layers:
        images = layer(images, training=True)
    return images


# ----------------------------------------------------------------------------------------------- Mixup / CutMix


def mix_strength(epoch: float, epochs: int, full_until: float = 0.5, off_from: float = 0.75) -> float:
    """Return the Mixup/CutMix strength at 0-based `epoch` of `epochs`: 1 until full_until, linear to 0 at off_from.

    The strength is the probability that a batch is mixed (the recipe's probability 1.0 times this schedule).
    """
    if epochs < 1 or not 0.0 <= full_until <= off_from <= 1.0:
        raise ValueError(f"Need epochs >= 1 and 0 <= full_until <= off_from <= 1, got epochs={epochs}, "
                         f"full_until={full_until}, off_from={off_from}.")
    if not 0 <= epoch <= epochs:
        raise ValueError(f"epoch must lie in 0..{epochs}, got {epoch}.")
    progress = epoch / epochs
    if progress <= full_until:
        return 1.0
    if progress >= off_from:
        return 0.0
    return (off_from - progress) / (off_from - full_until)


class MixedBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches with Mixup or CutMix on the `mix_strength` schedule (one-hot labels).

    Each batch is mixed with probability strength x `probability`; a mixed batch uses CutMix with probability
    `switch_probability`, else Mixup (timm's Mixup switch). The epoch counter advances at each epoch's end.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, epochs: int, mixing: dict | None,
                 augmentation: list | None = None, seed: int = 0, sample_weights: np.ndarray | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if len(images) != len(labels) or len(images) == 0 or np.asarray(labels).ndim != 2:
            raise ValueError(f"Need as many one-hot label rows as images (at least one), got {len(images)} images "
                             f"and labels of shape {np.shape(labels)}.")
        self.images, self.labels = np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.float32)
        self.sample_weights = sample_weights
        self.batch_size, self.epochs, self.mixing, self.epoch = int(batch_size), int(epochs), mixing, 0
        self.augmentation = list(augmentation or [])
        self.random = np.random.default_rng(seed)
        self.order = self.random.permutation(len(self.images))
        if mixing:
            self.mixup = keras.layers.MixUp(alpha=mixing["mixup_alpha"], seed=seed + 1)
            self.cutmix = keras.layers.CutMix(factor=mixing["cutmix_alpha"], seed=seed + 2)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def strength(self) -> float:
        """Return the probability that a batch of the current epoch is mixed."""
        if not self.mixing:
            return 0.0
        return self.mixing["probability"] * mix_strength(min(self.epoch, self.epochs), self.epochs,
                                                         self.mixing["full_until"], self.mixing["off_from"])

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images, labels = augment_batch(self.images[rows], self.augmentation), self.labels[rows]
        if self.random.random() < self.strength():
            mixer = self.cutmix if self.random.random() < self.mixing["switch_probability"] else self.mixup
            mixed = mixer({"images": images, "labels": labels}, training=True)
            images, labels = mixed["images"], mixed["labels"]
        batch = (keras.ops.convert_to_numpy(images), keras.ops.convert_to_numpy(labels))
        return batch if self.sample_weights is None else (*batch, self.sample_weights[rows])

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self.random.permutation(len(self.images))
