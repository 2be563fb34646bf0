"""The ViT's hyperparameter search (issue 18) with KerasTuner, scored on validation subjects only.

`search_vit` takes the train and val arrays and nothing else: the test split cannot enter the search. Keras 3 API
only, so the search runs on every backend.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

from alzlib import systems

SEARCH_OBJECTIVE = "val_balanced_accuracy"


def _check_split(arrays: tuple, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (images float32 N x S x S x 3, integer labels) of one split, raising ValueError on a bad pair."""
    images, labels = np.asarray(arrays[0], dtype=np.float32), np.asarray(arrays[1], dtype=int)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"The {split} split must be (images N x S x S x 3, N labels) with N >= 1, got images "
                         f"{images.shape} and {labels.shape} labels.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{split} labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}.")
    return images, labels


def vit_hypermodel(num_classes: int, image_size: int, architecture: dict | None = None,
                   space: dict | None = None):
    """Return a KerasTuner build function: a ViT compiled with AdamW from the searched hyperparameters."""
    space = space or systems.VIT_SEARCH_SPACE

    def build(hyperparameters):
        model, _ = systems.build_vit(num_classes, image_size, None, **(architecture or {}))
        settings = {"name": "AdamW",
                    **{key: hyperparameters.Choice(key, list(values)) for key, values in space.items()}}
        model.compile(optimizer=systems.make_optimizer(settings),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.0),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        return model

    return build


def search_vit(train: tuple, val: tuple, num_classes: int, epochs: int = 1, batch_size: int = 32,
               max_trials: int = 36, seed: int = 0, architecture: dict | None = None, space: dict | None = None,
               directory: str | Path | None = None) -> dict:
    """Grid-search the ViT's learning rate, gradient accumulation and weight decay; score val balanced accuracy.

    Args:
        train, val: (images float RGB 0-255 N x S x S x 3, integer labels); the only data the search sees.
        max_trials: how many grid points to try (36 is the whole grid, in KerasTuner's order).
        architecture: build_vit keyword arguments (depth, dim, heads) to shrink the ViT (tests).
    Returns the best values, their validation score and every trial's (JSON-ready).
    """
    import keras_tuner

    from alzlib.training import balanced_class_weights, validation_callback

    train_images, train_labels = _check_split(train, "train", num_classes)
    val_images, val_labels = _check_split(val, "val", num_classes)
    keras.utils.set_random_seed(seed)
    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vit_search_"))
    tuner = keras_tuner.GridSearch(
        vit_hypermodel(num_classes, train_images.shape[1], architecture, space),
        objective=keras_tuner.Objective(SEARCH_OBJECTIVE, direction="max"), max_trials=max_trials, seed=seed,
        directory=str(folder), project_name="vit", overwrite=True)
    # Every trial starts from the same seed, so trials differ by their hyperparameters only.
    seeding = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: keras.utils.set_random_seed(seed))
    # A pipeline's train split comes in class blocks (the manifest's order). Unshuffled, a one-epoch trial ends on
    # the last block and predicts that class: on the cpu cohort all 36 trials then scored chance and tied. One
    # seeded permutation mixes the classes and keeps every trial's order the same; fit's own shuffle would draw a
    # new order per trial from the backend's random state.
    order = np.random.default_rng(seed).permutation(len(train_labels))
    train_images, train_labels = train_images[order], train_labels[order]
    tuner.search(train_images, np.eye(num_classes, dtype=np.float32)[train_labels], epochs=epochs,
                 batch_size=batch_size, shuffle=False, verbose=0,
                 class_weight=balanced_class_weights(train_labels, num_classes),  # as train_system weighs
                 callbacks=[seeding, validation_callback(val_images, val_labels, 0.0)])
    trials = [{"hyperparameters": dict(trial.hyperparameters.values), "score": float(trial.score)}
              for trial in tuner.oracle.get_best_trials(num_trials=max_trials)]
    return {"best": trials[0]["hyperparameters"], "score": trials[0]["score"], "objective": SEARCH_OBJECTIVE,
            "scored_on": "validation subjects only (the test split is not an argument)", "trials": trials,
            "epochs_per_trial": epochs, "max_trials": max_trials,
            "training": "train split once permuted (seeded), balanced class weights, no augmentation"}
