"""Stochastic weight averaging (Izmailov et al. 2018) as a Keras 3 callback, for the extra systems (alzlib.systems).

Keras 3 API only: the averages are NumPy copies of model.get_weights(), so it runs on every backend.
"""

from __future__ import annotations

import keras
import numpy as np


class WeightAveraging(keras.callbacks.Callback):
    """Keep the running mean of the model's weights at the end of every epoch from `start_epoch` (0-based) on.

    Every weight is averaged (batch-norm moving statistics too; `finish_weight_averaging` re-estimates those).
    With `assign_at_end`, the average replaces the model's weights when training ends.
    """

    def __init__(self, start_epoch: int, assign_at_end: bool = True):
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch must be a non-negative integer, got {start_epoch!r}.")
        self.start_epoch, self.assign_at_end = start_epoch, assign_at_end
        self.average: list[np.ndarray] | None = None
        self.count = 0
        self.epochs_averaged: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.start_epoch:
            return
        weights = [np.asarray(weight, dtype=np.float64) for weight in self.model.get_weights()]
        self.count += 1
        if self.average is None:
            self.average = weights
        else:
            # Running mean: avg_n = avg_(n-1) + (w_n - avg_(n-1)) / n, no list of snapshots kept.
            self.average = [mean + (weight - mean) / self.count for mean, weight in zip(self.average, weights)]
        self.epochs_averaged.append(epoch + 1)

    def assign(self) -> bool:
        """Set the model's weights to the average; False (nothing changed) when no epoch was averaged yet."""
        if self.average is None:
            return False
        current = self.model.get_weights()
        self.model.set_weights([mean.astype(weight.dtype) for mean, weight in zip(self.average, current)])
        return True

    def on_train_end(self, logs=None):
        if self.assign_at_end:
            self.assign()


def has_batch_norm(model) -> bool:
    """True when `model` (nested models included) has a trainable BatchNormalization layer."""
    from alzlib.training import _flat_layers

    return any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
               for layer in _flat_layers(model))


def finish_weight_averaging(model, averaging: WeightAveraging, batches) -> dict:
    """Give `model` the averaged weights and re-estimate its batch-norm statistics on `batches`; describe what ran."""
    from alzlib.training import recalibrate_batch_norm

    averaging.set_model(model)
    assigned = averaging.assign()
    recalibrated = recalibrate_batch_norm(model, batches) if assigned and has_batch_norm(model) else 0
    return {"assigned": assigned, "epochs_averaged": list(averaging.epochs_averaged),
            "batch_norm_layers_reestimated": recalibrated,
            "batch_norm": ("re-estimated on un-augmented training images after averaging" if recalibrated else
                           "none to re-estimate (no trainable BatchNormalization)")}
