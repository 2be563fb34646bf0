"""Training (notebooks 05-08): the recipes, the callbacks, and the recipe record every trained model carries.

Every model trains on the train split only; the best epoch is chosen on the validation split (balanced accuracy,
ties broken by the lower validation loss); the test split is never read here.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import backend, config, environment, preprocessing
from alzlib.metrics import balanced_accuracy
from alzlib.storage import atomic_path, read_json, save_figure, write_json

CHECKPOINT_MONITOR = "val_balanced_accuracy"
CHECKPOINT_RULE = ("highest validation balanced accuracy (mean per-class recall on the val split, computed in a "
                   "callback each epoch); ties go to the lower validation loss; the test split is never used")
# Several train steps per compiled call on a CPU, 1 on a GPU: decided with precision and compilation per backend in
# alzlib.backend.execution_settings (measured there).
CPU_STEPS_PER_EXECUTION = backend.CPU_STEPS_PER_EXECUTION
# Batch scaling to the GPU's memory (alzlib.backend.batch_scale) with the learning rate scaled alike (Goyal et al.
# 2017) needs a warm-up: the transfer recipe has one; the baseline's ReduceLROnPlateau recipe keeps its batch.
BATCH_SCALING_RULE = ("per-replica batch x{scale} to fill the GPU's memory, learning rate x{scale} (linear scaling "
                      "with the recipe's warm-up); allowed for recipes with a warm-up only")
# Batch-norm statistics are re-estimated after every epoch on this many un-augmented training images (fewer when
# the train split is smaller). Measured on the cpu-profile cohort: moving statistics gathered on augmented batches
# (rotations up to 72 degrees, 20% zoom) made the inference-mode baseline predict one class for every image (val
# balanced accuracy 0.26) while the same weights scored 0.54 once re-estimated on clean images.
BATCH_NORM_IMAGES = 128
BATCH_NORM_BATCH = 64  # larger batches than training's: fewer forward calls (16 s per epoch for ResNet50 at 256/16)
BATCH_NORM_RULE = ("re-estimated after every epoch, before validation, as the mean of per-batch statistics over "
                   "up to {images} un-augmented training images (batches of {batch}) with dropout off (PreciseBN as "
                   "in pycls/detectron2, on inference-time inputs); frozen layers keep theirs")
BASELINE_RECIPE = {
    "optimizer": {"name": "Adam", "learning_rate": 1e-4},
    "loss": {"name": "sparse_categorical_crossentropy", "label_smoothing": 0.0, "labels": "integer"},
    "learning_rate_schedule": {"name": "ReduceLROnPlateau", "monitor": "val_loss", "factor": 0.5, "patience": 3,
                               "min_lr": 1e-7},
}
TRANSFER_RECIPE = {
    "optimizer": {"name": "AdamW", "learning_rate": 1e-3, "weight_decay": 1e-4, "clipnorm": 1.0},
    "loss": {"name": "categorical_crossentropy", "label_smoothing": 0.1, "labels": "one-hot"},
    "learning_rate_schedule": {"name": "linear warm-up then cosine decay (per epoch)", "base_learning_rate": 1e-3},
}


# ----------------------------------------------------------------------------------------------- recipe pieces


def learning_rate_at(epoch: int, base_lr: float, warmup_epochs: int, total_epochs: int) -> float:
    """Return the learning rate of 0-based `epoch`: linear warm-up over `warmup_epochs`, then cosine decay to ~0.

    Epochs 1..warmup (1-based) rise linearly to base_lr; from there the rate follows half a cosine, reaching
    about base_lr / 800 in the last of 50 epochs (never exactly 0, so the last epoch still trains).
    """
    if total_epochs < 1 or not 0 <= warmup_epochs <= total_epochs:
        raise ValueError(f"Need total_epochs >= 1 and 0 <= warmup_epochs <= total_epochs, got warmup_epochs="
                         f"{warmup_epochs}, total_epochs={total_epochs}.")
    if not 0 <= epoch < total_epochs:
        raise ValueError(f"epoch must be a 0-based index below total_epochs={total_epochs}, got {epoch}.")
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    progress = (epoch - warmup_epochs) / (total_epochs - warmup_epochs)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Return sklearn's 'balanced' weights n_samples / (n_present_classes * count) per class present in `labels`."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels, dtype=int)
    if labels.size == 0:
        raise ValueError("No training labels: cannot compute class weights.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"Labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}.")
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(label): float(weight) for label, weight in zip(present, weights)}


def validation_scores(labels: np.ndarray, probabilities: np.ndarray, label_smoothing: float = 0.0) -> dict:
    """Return val_loss (the training loss, unweighted), val_accuracy, val_balanced_accuracy and val_macro_f1."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = probabilities.shape[1]
    targets = np.eye(num_classes)[labels] * (1.0 - label_smoothing) + label_smoothing / num_classes
    loss = float(-np.mean(np.sum(targets * np.log(np.clip(probabilities, 1e-7, 1.0)), axis=1)))
    predictions = probabilities.argmax(axis=1)
    # Macro F1 over the classes present in the val split, like the balanced accuracy: a class the model predicts
    # but the split lacks would add an F1 of 0 and move the checkpoint rule with the split, not the model.
    macro_f1 = f1_score(labels, predictions, labels=np.unique(labels), average="macro", zero_division=0)
    return {"val_loss": loss, "val_accuracy": float(np.mean(predictions == labels)),
            "val_balanced_accuracy": balanced_accuracy(labels, predictions), "val_macro_f1": float(macro_f1)}


def training_recipe(name: str, profile: config.Profile, gpus: tuple[backend.Gpu, ...] = (), replicas: int = 1,
                    backend_name: str | None = None) -> dict:
    """Return every hyperparameter of how `name` trains under `profile` on `gpus` (none: a CPU) and `replicas`
    devices of backend `backend_name` (default: the requested one). JSON-ready."""
    from alzlib import models

    models.check_model_name(name)
    base = BASELINE_RECIPE if name == "baseline_cnn" else TRANSFER_RECIPE
    recipe = {key: dict(value) for key, value in base.items()}
    epochs = profile.epochs_for(name)
    if name in profile.model_learning_rates:
        recipe["optimizer"]["learning_rate"] = float(profile.model_learning_rates[name])
        if "base_learning_rate" in recipe["learning_rate_schedule"]:
            recipe["learning_rate_schedule"]["base_learning_rate"] = float(profile.model_learning_rates[name])
    if name != "baseline_cnn":
        recipe["learning_rate_schedule"].update(warmup_epochs=min(profile.warmup_epochs, epochs), total_epochs=epochs)
    scaling_allowed = name != "baseline_cnn" and profile.warmup_epochs > 0
    execution = backend.execution_settings(backend_name or backend.requested_backend(), list(gpus),
                                           profile.image_size, scaling_allowed, replicas)
    scale = execution.batch_scale
    if scale > 1:
        for key in ("learning_rate", "base_learning_rate"):
            for part in ("optimizer", "learning_rate_schedule"):
                if key in recipe[part]:
                    recipe[part][key] = recipe[part][key] * scale
    recipe.update({
        "epochs": epochs,
        "early_stopping": None,
        "batch_size_per_replica": profile.batch_size * scale,
        "replicas": replicas,
        "global_batch_size": profile.batch_size * scale * replicas,
        "batch_scaling": (BATCH_SCALING_RULE.format(scale=scale) if scale > 1 else
                          "none: the recipe's batch" + ("" if scaling_allowed else " (this recipe has no warm-up)")),
        "class_weighting": "balanced (sklearn formula) as per-sample weights in the loss",
        "checkpoint": CHECKPOINT_RULE,
        "checkpoint_monitor": CHECKPOINT_MONITOR,
        "backend": execution.backend,
        "mixed_precision": execution.dtype_policy != "float32",
        "dtype_policy": execution.dtype_policy,
        "loss_scaling": execution.loss_scaling,
        "jit_compile": execution.jit_compile,
        "steps_per_execution": execution.steps_per_execution,
        "execution": execution.to_dict(),
        "metrics": ["accuracy"],
        "batch_norm_statistics": BATCH_NORM_RULE.format(images=BATCH_NORM_IMAGES, batch=BATCH_NORM_BATCH),
    })
    return recipe


def configure_precision(policy: str = "float32") -> str:
    """Set Keras' global dtype policy (float32, mixed_bfloat16 or mixed_float16); return its name.

    Under mixed_float16 Keras' compile() wraps the optimizer in a LossScaleOptimizer (dynamic loss scaling).
    """
    import keras

    keras.config.set_dtype_policy(policy)
    return keras.config.dtype_policy().name


def compile_model(model, recipe: dict) -> None:
    """Compile `model` with the recipe's optimizer, loss and execution settings."""
    import keras

    optimizer_settings = recipe["optimizer"]
    if optimizer_settings["name"] == "Adam":
        optimizer = keras.optimizers.Adam(learning_rate=optimizer_settings["learning_rate"])
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=optimizer_settings["learning_rate"],
                                           weight_decay=optimizer_settings["weight_decay"],
                                           clipnorm=optimizer_settings["clipnorm"])
    if recipe["loss"]["labels"] == "one-hot":
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe["loss"]["label_smoothing"])
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, steps_per_execution=recipe["steps_per_execution"],
                  jit_compile=recipe["jit_compile"])


# ----------------------------------------------------------------------------------------------- callbacks


def _callback_base():
    """Return keras.callbacks.Callback (imported lazily)."""
    import keras

    return keras.callbacks.Callback


def validation_callback(dataset, labels: np.ndarray, label_smoothing: float):
    """Return a callback that scores the validation set once per epoch and adds val_* to the logs."""

    class ValidationScores(_callback_base()):
        def on_epoch_end(self, epoch, logs=None):
            probabilities = self.model.predict(dataset, verbose=0)
            if logs is not None:
                logs.update(validation_scores(labels, probabilities, label_smoothing))

    return ValidationScores()


def _flat_layers(model) -> list:
    """Return every layer of `model`, descending into nested models (the transfer models' backbones)."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers.extend(_flat_layers(layer))
    return layers


def recalibrate_batch_norm(model, batches) -> int:
    """Set every trainable BatchNormalization layer's moving statistics to their mean over `batches`; return the count.

    `batches` yields preprocessed model inputs (or tuples whose first item is) as inference sees them. The forward
    passes run in training mode with dropout off, each batch weighted equally; frozen layers are left alone
    (Keras runs them in inference mode), and every momentum and dropout rate is restored afterwards.
    """
    import keras

    layers = _flat_layers(model)
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    dropouts = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    if not norms:
        return 0
    momenta, rates = [layer.momentum for layer in norms], [layer.rate for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for index, batch in enumerate(batches):
            for layer in norms:
                layer.momentum = index / (index + 1)  # running mean: the first batch replaces the old statistics
            model(batch[0] if isinstance(batch, tuple) else batch, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
    return len(norms)


def batch_norm_callback(batches):
    """Return a callback that re-estimates batch-norm statistics on `batches` at each epoch's end (before scoring)."""

    class BatchNormStatistics(_callback_base()):
        def on_epoch_end(self, epoch, logs=None):
            recalibrate_batch_norm(self.model, batches)

    return BatchNormStatistics()


def epoch_recorder(path: Path, records: list[dict]):
    """Return a callback that appends each epoch's logs, learning rate and seconds to `records` and writes them."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # Read before ReduceLROnPlateau (later in the list) changes it: this is the rate the epoch used.
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            entry = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()
                                           if key != "learning_rate"},
                     "learning_rate": float(f"{rate:.6g}"), "seconds": time.perf_counter() - self.started}
            records[:] = [record for record in records if record["epoch"] < epoch + 1] + [entry]
            write_json(path, records)

    return EpochRecorder()


def save_model(model, path: Path) -> None:
    """Save `model` without its optimizer state (a third of the file for a fully trainable ResNet50 under AdamW).

    The saved model is for inference and fine-tuning from its weights; resuming an interrupted run uses
    BackupAndRestore's own files, which keep the optimizer.
    """
    optimizer = model.optimizer
    model.optimizer = None
    try:
        model.save(path)
    finally:
        model.optimizer = optimizer


def best_checkpoint(path: Path, best: dict):
    """Return a callback that saves the model atomically whenever the validation score improves (ties: lower loss)."""

    class BestCheckpoint(_callback_base()):
        def on_epoch_end(self, epoch, logs=None):
            score, loss = (logs or {}).get(CHECKPOINT_MONITOR), (logs or {}).get("val_loss", math.inf)
            if score is None or not math.isfinite(score):
                return
            if score > best["score"] or (score == best["score"] and loss < best["loss"]):
                with atomic_path(path) as temporary:
                    save_model(self.model, temporary)
                best.update(score=score, loss=loss, epoch=epoch + 1)

    return BestCheckpoint()


def tensorboard_available() -> bool:
    """True when TensorBoard logs can be written (Keras' callback needs the tensorboard and tensorflow packages)."""
    return backend.tensorboard_available()


def _schedule_callback(recipe: dict):
    """Return the recipe's learning-rate callback (warm-up/cosine or ReduceLROnPlateau), or None for a constant rate."""
    import keras

    schedule = recipe["learning_rate_schedule"]
    if schedule["name"] == "constant":
        return None
    if schedule["name"] == "ReduceLROnPlateau":
        return keras.callbacks.ReduceLROnPlateau(monitor=schedule["monitor"], factor=schedule["factor"],
                                                 patience=schedule["patience"], min_lr=schedule["min_lr"])
    return keras.callbacks.LearningRateScheduler(lambda epoch, rate: learning_rate_at(
        epoch, schedule["base_learning_rate"], schedule["warmup_epochs"], schedule["total_epochs"]))


# ----------------------------------------------------------------------------------------------- data


def manifest_hash(manifest: pd.DataFrame) -> str:
    """Return a sha256 of what a model saw: each row's path, file hash, label index and split."""
    digest = hashlib.sha256()
    columns = [column for column in ("path", "sha256", "label_index", "split") if column in manifest.columns]
    for row in manifest[columns].astype(str).itertuples(index=False):
        digest.update(("\t".join(row) + "\n").encode())
    return digest.hexdigest()


def class_names_of(manifest: pd.DataFrame) -> list[str]:
    """Return the class names in label-index order, raising ValueError when an index has no name or two."""
    pairs = manifest[["label_index", "label"]].drop_duplicates()
    if pairs["label_index"].duplicated().any() or pairs["label"].duplicated().any():
        raise ValueError(f"label and label_index do not map one to one in the manifest: {pairs.values.tolist()}.")
    names = dict(zip(pairs["label_index"].astype(int), pairs["label"].astype(str)))
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise ValueError(f"The manifest has no images of label indices {missing}: cannot name every class.")
    return [names[index] for index in range(len(names))]


def split_arrays(manifest: pd.DataFrame, images: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the cached images and integer labels of one split (rows aligned with the manifest)."""
    mask = (manifest["split"] == split).to_numpy()
    if not mask.any():
        raise ValueError(f"The {split} split of the manifest is empty: training needs train and val images.")
    return images[mask], manifest["label_index"].to_numpy(dtype=int)[mask]


def apply_budget(recipe: dict, spec: dict, budget: dict | None) -> tuple[dict, dict]:
    """Return copies of `recipe` and `spec` changed by a control budget (epochs, learning rate, augmentation).

    `budget` keys: epochs, learning_rate (constant: no schedule), augmentation (False: none), dropout (False: every
    Dropout rate set to 0 after building), keep ('last epoch': no checkpoint selection). None leaves the recipe.
    """
    if not budget:
        return recipe, spec
    unknown = set(budget) - {"epochs", "learning_rate", "augmentation", "dropout", "keep", "reason"}
    if unknown:
        raise ValueError(f"Unknown budget key(s) {sorted(unknown)}: expected epochs, learning_rate, augmentation, "
                         f"dropout, keep, reason.")
    recipe = {key: (dict(value) if isinstance(value, dict) else value) for key, value in recipe.items()}
    spec = dict(spec)
    if "epochs" in budget:
        recipe["epochs"] = int(budget["epochs"])
    if "learning_rate" in budget:
        recipe["optimizer"]["learning_rate"] = float(budget["learning_rate"])
        recipe["learning_rate_schedule"] = {"name": "constant", "learning_rate": float(budget["learning_rate"])}
    if budget.get("augmentation") is False:
        spec["augmentation"] = []
    if budget.get("keep") == "last epoch":
        recipe["checkpoint"], recipe["checkpoint_monitor"] = "last epoch (fixed budget, no selection)", None
    recipe["budget"] = dict(budget)
    return recipe, spec


def switch_off_dropout(model) -> int:
    """Set the rate of every Dropout layer of `model` (nested ones too) to 0; return how many there were."""
    import keras

    dropouts = [layer for layer in _flat_layers(model) if isinstance(layer, keras.layers.Dropout)]
    for layer in dropouts:
        layer.rate = 0.0
    return len(dropouts)


# ----------------------------------------------------------------------------------------------- training


def _output_paths(settings: config.Settings, output_name: str) -> dict[str, Path]:
    """Return the files a training run writes."""
    folder = settings.paths.training / output_name
    return {"folder": folder, "model": settings.paths.models / f"{output_name}.keras",
            "record": settings.paths.models / f"{output_name}.json", "checkpoint": folder / "best.keras",
            "epochs": folder / "epoch_log.json", "history": folder / "history.json", "csv": folder / "log.csv",
            "curves": folder / "curves.png", "tensorboard": folder / "tensorboard", "backup": folder / "backup"}


def _start_or_resume(paths: dict[str, Path]) -> tuple[list[dict], dict]:
    """Return the epoch records and best score of an interrupted run to resume, or clear a finished run's files."""
    best = {"score": -math.inf, "loss": math.inf, "epoch": None}
    if (paths["backup"] / "training_metadata.json").is_file() and paths["epochs"].is_file():
        records = read_json(paths["epochs"])
        scored = [record for record in records if math.isfinite(record.get(CHECKPOINT_MONITOR, math.nan))]
        if scored and paths["checkpoint"].is_file():
            top = max(scored, key=lambda record: (record[CHECKPOINT_MONITOR], -record["val_loss"]))
            best.update(score=top[CHECKPOINT_MONITOR], loss=top["val_loss"], epoch=top["epoch"])
        return records, best
    for key in ("backup", "tensorboard"):
        shutil.rmtree(paths[key], ignore_errors=True)
    for key in ("checkpoint", "epochs", "csv"):
        paths[key].unlink(missing_ok=True)
    return [], best


def _history(records: list[dict]) -> dict[str, list]:
    """Return the epoch records as Keras-style lists per metric."""
    keys = [key for key in records[0] if all(key in record for record in records)] if records else []
    return {key: [record[key] for record in records] for key in keys}


def _datasets(spec: dict, train: tuple, val: tuple, num_classes: int, batch_size: int, seed: int,
              class_weights: dict, one_hot: bool):
    """Return the training, validation and batch-norm pipelines (per-sample class weights on the training one).

    The batch-norm one holds up to BATCH_NORM_IMAGES training images, un-augmented, cached after the first epoch.
    """
    train_images, train_labels = train
    sample_weights = np.array([class_weights[int(label)] for label in train_labels], dtype=np.float32)
    targets = np.eye(num_classes, dtype=np.float32)[train_labels] if one_hot else train_labels
    train_dataset = preprocessing.make_dataset(train_images, targets, spec, True, batch_size, seed, sample_weights)
    val_dataset = preprocessing.make_dataset(val[0], val[1], spec, False, batch_size, seed)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(train_images))[:BATCH_NORM_IMAGES])
    norm_dataset = preprocessing.make_dataset(train_images[chosen], train_labels[chosen], spec, False,
                                              max(batch_size, BATCH_NORM_BATCH), seed)
    return train_dataset, val_dataset, norm_dataset


def _callbacks(recipe: dict, paths: dict, val_dataset, val_labels, norm_dataset, records: list, best: dict,
               resuming: bool) -> list:
    """Return the callbacks in the order they must run at each epoch's end (scores first, then what reads them)."""
    import keras

    schedule = _schedule_callback(recipe)
    # ReduceLROnPlateau reads val_loss at the epoch's end, so it must follow the validation scores; the
    # warm-up/cosine scheduler acts at the epoch's start and can go first.
    plateau = recipe["learning_rate_schedule"]["name"] == "ReduceLROnPlateau"
    schedules = [schedule] if schedule is not None else []
    return [
        *([] if plateau else schedules),
        batch_norm_callback(norm_dataset),
        validation_callback(val_dataset, val_labels, recipe["loss"]["label_smoothing"]),
        epoch_recorder(paths["epochs"], records),
        *(schedules if plateau else []),
        *([best_checkpoint(paths["checkpoint"], best)] if recipe.get("checkpoint_monitor") else []),
        keras.callbacks.CSVLogger(str(paths["csv"]), append=resuming),
        *([keras.callbacks.TensorBoard(log_dir=str(paths["tensorboard"]), profile_batch=0, write_graph=False)]
          if tensorboard_available() else []),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.BackupAndRestore(str(paths["backup"]), double_checkpoint=True),
    ]


def _thinned_training(name: str, profile: config.Profile, manifest: pd.DataFrame, images: np.ndarray,
                      limit: int | None = None) -> tuple[pd.DataFrame, np.ndarray, dict | None]:
    """Return the manifest and images with the training rows thinned to `limit` images (every k-th slice per subject).

    `limit` None: the profile's transfer_train_images for the transfer models, no limit for the baseline CNN.
    """
    from alzlib import sampling

    rule = "every k-th slice of each training subject"
    if limit is None and name != "baseline_cnn":
        limit, rule = profile.transfer_train_images, f"{rule} (profile transfer_train_images)"
    train = manifest["split"] == "train"
    if limit is None or train.sum() <= limit:
        return manifest, images, None
    kept = sampling.thin_slices(manifest[train], limit).index
    rows = np.sort(np.concatenate([kept.to_numpy(), np.flatnonzero(~train.to_numpy())]))
    subset = {"train_images": int(len(kept)), "of_train_images": int(train.sum()), "limit": int(limit),
              "rule": f"{rule}; val unchanged"}
    return manifest.iloc[rows].reset_index(drop=True), images[rows], subset


def train_model(name: str, settings: config.Settings, manifest: pd.DataFrame, images: np.ndarray | None = None,
                output_name: str | None = None, verbose: int = 2, extra_callbacks: tuple = (),
                budget: dict | None = None, control: dict | None = None, max_train_images: int | None = None,
                fold: dict | None = None, class_names: list[str] | None = None) -> dict:
    """Train `name` on the train split, keep the best validation epoch, write the model and its recipe record.

    Writes models/<output_name>.keras and .json and training/<output_name>/ (history.json, log.csv, curves.png,
    tensorboard/). `budget` changes the recipe (see `apply_budget`); `control` describes a control run (its labels
    and split, see alzlib.controls) and is stored in the record, as is `fold` (a cross-validation fold, see
    alzlib.crossval). `max_train_images` thins the training rows to every k-th slice per subject (None: the
    profile's rule, see `_thinned_training`). `class_names` (None: those of `manifest`) fixes the model's outputs to
    the task's classes when `manifest` lacks some (a control's subset). `extra_callbacks` run after the run's own (after
    BackupAndRestore, so an epoch they interrupt is backed up). A run killed mid-way resumes from its last
    finished epoch (BackupAndRestore) when called again.
    """
    from alzlib import models

    models.check_model_name(name)
    output_name = output_name or name
    environment.set_seeds(settings.seed, settings.deterministic)
    if images is None:
        images = preprocessing.load_image_cache(manifest, settings.profile.image_size, settings.paths.cache)
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images for {len(manifest)} manifest rows: they must align row by row.")
    class_names = list(class_names) if class_names is not None else class_names_of(manifest)
    if manifest["label_index"].max() >= len(class_names):
        raise ValueError(f"label_index {manifest['label_index'].max()} has no name among the {len(class_names)} "
                         f"class names {class_names}.")
    trained, trained_images, train_subset = _thinned_training(name, settings.profile, manifest, images,
                                                              max_train_images)
    train_images, train_labels = split_arrays(trained, trained_images, "train")
    val_images, val_labels = split_arrays(trained, trained_images, "val")
    class_weights = balanced_class_weights(train_labels, len(class_names))
    engine = backend.distribution()
    recipe, spec = apply_budget(training_recipe(name, settings.profile, tuple(backend.visible_gpus()), engine.replicas),
                                preprocessing.preprocessing_spec(name, settings.profile.image_size), budget)
    policy = configure_precision(recipe["dtype_policy"])
    paths = _output_paths(settings, output_name)
    records, best = _start_or_resume(paths)
    paths["folder"].mkdir(parents=True, exist_ok=True)
    resuming = bool(records)
    # Built and trained inside the engine's scope: tf.distribute places variables there, and JAX's DataParallel
    # shards each batch across devices only while its distribution is set.
    with engine.scope():
        model, info = models.build_model(name, len(class_names), settings.profile.image_size,
                                         settings.weights or "imagenet")
        if budget and budget.get("dropout") is False:
            info["dropout_layers_switched_off"] = switch_off_dropout(model)
        compile_model(model, recipe)
        train_dataset, val_dataset, norm_dataset = _datasets(
            spec, (train_images, train_labels), (val_images, val_labels), len(class_names),
            recipe["global_batch_size"], settings.seed, class_weights, recipe["loss"]["labels"] == "one-hot")
        callbacks = [*_callbacks(recipe, paths, val_dataset, val_labels, norm_dataset, records, best, resuming),
                     *extra_callbacks]
        started = time.perf_counter()
        model.fit(train_dataset, epochs=recipe["epochs"], callbacks=callbacks, verbose=verbose, shuffle=False)
        seconds = time.perf_counter() - started
    if not recipe.get("checkpoint_monitor") and records:
        best["epoch"] = records[-1]["epoch"]  # a fixed budget keeps its last epoch
    if paths["checkpoint"].is_file():
        _move_atomically(paths["checkpoint"], paths["model"])
        checkpoint = f"best validation epoch ({best['epoch']})"
    else:
        with atomic_path(paths["model"]) as temporary:
            save_model(model, temporary)
        checkpoint = ("last epoch (fixed budget, no selection)" if not recipe.get("checkpoint_monitor") else
                      "last epoch (no epoch had a finite validation score)")
    history = _history(records)
    write_json(paths["history"], history)
    figure = plot_training_curves(history, title=output_name)
    save_figure(figure, paths["curves"])
    run = TrainingRun(architecture=name, output_name=output_name, settings=settings, manifest=manifest,
                      recipe=recipe, spec=spec, info=info, class_names=class_names, class_weights=class_weights,
                      strategy_name=engine.name, dtype_policy=policy, paths=paths,
                      train_images=len(train_labels), val_images=len(val_labels), control=control, fold=fold,
                      train_subset=train_subset, records=records,
                      best=best, resumed=resuming, checkpoint=checkpoint, seconds=seconds)
    record = run.recipe_record()
    write_json(paths["record"], record)
    return record


def _move_atomically(source: Path, target: Path) -> None:
    """Move `source` onto `target` (copy to a temporary file, rename, delete the source): never half-written."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    source.unlink()


@dataclass
class TrainingRun:
    """What one training run used and did: everything its recipe record (models/<name>.json) is built from."""

    architecture: str
    output_name: str
    settings: config.Settings
    manifest: pd.DataFrame
    recipe: dict
    spec: dict
    info: dict
    class_names: list[str]
    class_weights: dict[int, float]
    strategy_name: str
    dtype_policy: str
    paths: dict[str, Path]
    train_images: int
    val_images: int
    control: dict | None = None
    fold: dict | None = None
    train_subset: dict | None = None
    records: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    resumed: bool = False
    checkpoint: str = ""
    seconds: float = 0.0

    def recipe_record(self) -> dict:
        """Return the recipe record: every hyperparameter and what the run did."""
        best_entry = next((record for record in self.records if record["epoch"] == self.best.get("epoch")), None)
        epochs_run, info, paths = len(self.records), self.info, self.paths
        return {
            "model": self.output_name,
            "architecture": self.architecture,
            "control": self.control,
            "fold": self.fold,
            "synthetic": self.settings.synthetic,
            "class_names": self.class_names,
            "num_classes": len(self.class_names),
            "recipe": self.recipe,
            "preprocessing": self.spec,
            "model_info": info,
            "weights": info["weights"],
            "frozen_layers": info["frozen_layers"],
            "trainable_layers": info["trainable_layers"],
            "trainable_parameters": info["trainable_parameters"],
            "non_trainable_parameters": info["non_trainable_parameters"],
            "class_weights": {self.class_names[index]: weight for index, weight in self.class_weights.items()},
            "train_images": int(self.train_images),
            "train_subset": self.train_subset,
            "val_images": int(self.val_images),
            "learning_rates": [record["learning_rate"] for record in self.records],
            "epochs_run": epochs_run,
            "stopped_by_nan": epochs_run < self.recipe["epochs"],
            "resumed": self.resumed,
            "best_epoch": self.best.get("epoch"),
            "best_validation": best_entry,
            "checkpoint": self.checkpoint,
            "training_seconds": round(self.seconds, 2),
            "epoch_seconds": [round(record["seconds"], 2) for record in self.records],
            "backend": self.recipe.get("backend"),
            "strategy": self.strategy_name,
            "global_batch_size": self.recipe["global_batch_size"],
            "dtype_policy": self.dtype_policy,
            "seed": self.settings.seed,
            "profile": self.settings.profile.to_dict(),
            "data_manifest_hash": manifest_hash(self.manifest),
            "files": {"model": paths["model"].name, "history": str(paths["history"]), "log": str(paths["csv"]),
                      "curves": str(paths["curves"]),
                      "tensorboard": str(paths["tensorboard"]) if tensorboard_available() else
                      "skipped: Keras writes TensorBoard logs through TensorFlow, which is not installed"},
            "run": environment.run_metadata(self.settings),
        }


def load_trained_model(path: str | Path):
    """Load a saved model in Keras safe mode (no arbitrary code), with alzlib's custom layers registered."""
    import keras

    from alzlib import models, systems  # noqa: F401  (importing registers SpatialAttention and the systems' layers)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the model first (notebooks 05-08).")
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def record_overview(record: dict) -> pd.DataFrame:
    """Return a one-row table of what a training run did, from its recipe record (for notebooks)."""
    best = record.get("best_validation") or {}
    return pd.DataFrame([{
        "model": record["model"], "weights": record["weights"], "epochs_run": record["epochs_run"],
        "best_epoch": record["best_epoch"],
        "best_val_balanced_accuracy": best.get("val_balanced_accuracy"), "best_val_loss": best.get("val_loss"),
        "training_seconds": record["training_seconds"], "trainable_parameters": record["trainable_parameters"],
        "non_trainable_parameters": record["non_trainable_parameters"], "resumed": record["resumed"],
    }]).set_index("model")


def plot_training_curves(history: dict, title: str = ""):
    """Return a figure of loss, accuracy (and validation balanced accuracy) and the learning rate per epoch."""
    from matplotlib.figure import Figure

    if not history or not history.get("loss"):
        raise ValueError("The history has no 'loss' values to plot.")
    epochs = history.get("epoch") or list(range(1, len(history["loss"]) + 1))
    figure = Figure(figsize=(13, 3.6), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = [("loss", ["loss", "val_loss"]), ("accuracy", ["accuracy", "val_accuracy", "val_balanced_accuracy"]),
              ("learning rate", ["learning_rate"])]
    for axis, (label, keys) in zip(axes, panels):
        for key in keys:
            if key in history:
                axis.plot(epochs, history[key], marker="o", markersize=3, label=key)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    axes[2].set_yscale("log")
    figure.suptitle(f"{title} training curves" if title else "training curves")
    return figure
