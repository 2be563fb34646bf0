"""Training of the extra published systems (alzlib.systems) through the same files as the four design models.

Writes models/<name>.keras and models/<name>.json (a recipe record that alzlib.predict and the evaluation read) and
training/<name>/epoch_log.json. Keras 3 API only: batches come from a keras.utils.PyDataset, not tf.data, so it runs
on every backend. Train split to fit, val split to choose (best epoch, or the SWA average); the test split is never
read here.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from alzlib import augmentation, averaging, config, environment, preprocessing, systems, training
from alzlib.storage import atomic_path, save_figure, write_json


def system_spec(name: str, image_size: int, recipe: dict) -> dict:
    """Return a system's preprocessing spec: the pass-through family (it normalises inside), its augmentation."""
    spec = preprocessing.preprocessing_spec("efficientnetb0", image_size)
    return {**spec, "model": name, "family": systems.PREPROCESSING_FAMILY,
            "scaling": f"none in the data pipeline; inside the model: {recipe['normalisation']}",
            "augmentation": recipe["augmentation"], "augmentation_code": "alzlib.augmentation"}


def _rgb(images: np.ndarray) -> np.ndarray:
    """Return uint8 greyscale N x S x S as float32 RGB 0-255 N x S x S x 3 (grey repeated)."""
    return np.repeat(images.astype(np.float32)[..., np.newaxis], 3, axis=-1)


def _batch_norm_images(train_images: np.ndarray, seed: int) -> list[np.ndarray]:
    """Return up to training.BATCH_NORM_IMAGES un-augmented training images in batches, for batch-norm statistics."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(train_images))[:training.BATCH_NORM_IMAGES])
    images = _rgb(train_images[chosen])
    return [images[start:start + training.BATCH_NORM_BATCH]
            for start in range(0, len(images), training.BATCH_NORM_BATCH)]


def _callbacks(recipe: dict, model, paths: dict, val: tuple, norm_batches: list, records: list, best: dict):
    """Return the run's callbacks (schedule, batch norm, validation scores, log, checkpoint or SWA) and the SWA one."""
    import keras

    schedule = recipe["learning_rate_schedule"]
    callbacks = []
    if "total_epochs" in schedule:
        callbacks.append(keras.callbacks.LearningRateScheduler(lambda epoch, rate: training.learning_rate_at(
            epoch, recipe["optimizer"]["learning_rate"], schedule["warmup_epochs"], schedule["total_epochs"])))
    if averaging.has_batch_norm(model):
        callbacks.append(training.batch_norm_callback(norm_batches))
    callbacks += [training.validation_callback(_rgb(val[0]), val[1], recipe["loss"]["label_smoothing"]),
                  training.epoch_recorder(paths["epochs"], records)]
    swa = None
    if recipe["weight_averaging"]:
        swa = averaging.WeightAveraging(recipe["weight_averaging"]["start_epoch"], assign_at_end=False)
        callbacks.append(swa)
    else:
        callbacks.append(training.best_checkpoint(paths["checkpoint"], best))
    return [*callbacks, keras.callbacks.TerminateOnNaN()], swa


def _keep_model(model, swa, paths: dict, val: tuple, norm_batches: list, recipe: dict, best: dict) -> dict:
    """Write the model the recipe keeps (the SWA average, else the best validation epoch); describe it."""
    if swa is not None:
        summary = averaging.finish_weight_averaging(model, swa, norm_batches)
        probabilities = model.predict(_rgb(val[0]), verbose=0)
        summary["validation"] = training.validation_scores(val[1], probabilities, recipe["loss"]["label_smoothing"])
        with atomic_path(paths["model"]) as temporary:
            training.save_model(model, temporary)
        return {"checkpoint": "stochastic weight average (evaluated as is)", "weight_averaging": summary}
    if paths["checkpoint"].is_file():
        training._move_atomically(paths["checkpoint"], paths["model"])
        return {"checkpoint": f"best validation epoch ({best['epoch']})"}
    with atomic_path(paths["model"]) as temporary:
        training.save_model(model, temporary)
    return {"checkpoint": "last epoch (no epoch had a finite validation score)"}


def search_vit(settings: config.Settings, manifest: pd.DataFrame, images: np.ndarray | None = None) -> dict:
    """Run the ViT's hyperparameter search on the (thinned) train split, scored on the val split; write search.json.

    The profile's search_trials grid points, search_epochs each. The test split never reaches alzlib.search.
    """
    from alzlib import search

    profile = settings.profile
    if images is None:
        images = preprocessing.load_image_cache(manifest, profile.image_size, settings.paths.cache)
    manifest, images, _ = training._thinned_training("vit", profile, manifest, images)
    train, val = (training.split_arrays(manifest, images, split) for split in ("train", "val"))
    folder = training._output_paths(settings, "vit")["folder"]
    started = time.perf_counter()
    result = search.search_vit((_rgb(train[0]), train[1]), (_rgb(val[0]), val[1]),
                               len(training.class_names_of(manifest)), epochs=profile.search_epochs,
                               batch_size=profile.batch_size, max_trials=profile.search_trials, seed=settings.seed,
                               directory=folder / "search")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result.update(search_verdict(result["trials"]))
    write_json(folder / "search.json", result)
    return result


def search_if_any(name: str, settings: config.Settings, manifest: pd.DataFrame) -> dict | None:
    """Run system `name`'s hyperparameter search where its recipe has a search space (the ViT); else return None."""
    return search_vit(settings, manifest) if "search_space" in systems.check_system_name(name).recipe else None


# A search whose trials all score within this much validation balanced accuracy of each other cannot tell its grid
# points apart, and KerasTuner's "best" is then the grid's first point by a tie. Met on the cpu cohort (216 val
# images) when the train split reached the trials in class blocks: 36 one-epoch trials spanned 0.2524-0.2528, all at
# chance (alzlib.search now mixes the classes); kept as the guard against any search that cannot separate its points.
SEARCH_MIN_SPREAD = 0.02


def search_verdict(trials: list[dict]) -> dict:
    """Return whether a search's trials differ enough to choose from ('informative') and the spread of their scores."""
    scores = [trial["score"] for trial in trials if np.isfinite(trial["score"])]
    spread = float(max(scores) - min(scores)) if scores else 0.0
    informative = len(scores) >= 2 and spread >= SEARCH_MIN_SPREAD
    return {"informative": informative, "score_spread": round(spread, 4),
            "decision": "the best trial's values are used" if informative else
            f"the trials' scores span {spread:.3f} (< {SEARCH_MIN_SPREAD}): the search could not tell the grid "
            f"points apart at this budget, so the recipe's own values are kept"}


def train_system(name: str, settings: config.Settings, manifest: pd.DataFrame, images: np.ndarray | None = None,
                 search: dict | None = None, verbose: int = 2) -> dict:
    """Train system `name` on the train split, keep what its recipe keeps, write the model and its recipe record.

    `search` is alzlib.search.search_vit's result (the ViT's chosen hyperparameters), recorded in the recipe.
    """
    systems.check_system_name(name)
    environment.set_seeds(settings.seed, settings.deterministic)
    profile = settings.profile
    if images is None:
        images = preprocessing.load_image_cache(manifest, profile.image_size, settings.paths.cache)
    class_names = training.class_names_of(manifest)
    # Thinned to the profile's transfer_train_images, as the design's transfer models are (every k-th slice).
    manifest_hash = training.manifest_hash(manifest)  # of the run's manifest, as the design models record it
    manifest, images, train_subset = training._thinned_training(name, profile, manifest, images)
    train = training.split_arrays(manifest, images, "train")
    val = training.split_arrays(manifest, images, "val")
    recipe = systems.system_recipe(name, profile.epochs_for(name), profile.batch_size, search)
    paths = training._output_paths(settings, name)
    paths["folder"].mkdir(parents=True, exist_ok=True)
    model, info = systems.build_system(name, len(class_names), profile.image_size, settings.weights)
    systems.compile_system(model, recipe)
    class_weights = training.balanced_class_weights(train[1], len(class_names))
    batches = augmentation.MixedBatches(
        _rgb(train[0]), np.eye(len(class_names), dtype=np.float32)[train[1]], recipe["batch_size"], recipe["epochs"],
        recipe["mixing"], augmentation.build_system_augmentation(recipe["augmentation"], settings.seed), settings.seed,
        np.array([class_weights[int(label)] for label in train[1]], dtype=np.float32))
    norm_batches = _batch_norm_images(train[0], settings.seed)
    records, best = [], {"score": -np.inf, "loss": np.inf, "epoch": None}
    callbacks, swa = _callbacks(recipe, model, paths, val, norm_batches, records, best)
    started = time.perf_counter()
    model.fit(batches, epochs=recipe["epochs"], callbacks=callbacks, verbose=verbose)
    kept = _keep_model(model, swa, paths, val, norm_batches, recipe, best)
    seconds = time.perf_counter() - started
    history = {key: [entry.get(key) for entry in records] for key in dict.fromkeys(
        key for entry in records for key in entry)}
    if records:
        save_figure(training.plot_training_curves(history, title=name), paths["curves"])
    best_entry = next((entry for entry in records if entry["epoch"] == best["epoch"]), None)
    run = environment.run_metadata(settings)
    if swa is not None:
        best_entry = {"epoch": "stochastic weight average", **kept["weight_averaging"]["validation"]}
    record = {"model": name, "architecture": name, "system": True, "control": None, "fold": None,
              "synthetic": settings.synthetic, "class_names": class_names, "num_classes": len(class_names),
              "recipe": recipe, "preprocessing": system_spec(name, profile.image_size, recipe), "model_info": info,
              "weights": info["weights"], "trainable_parameters": info["trainable_parameters"],
              "non_trainable_parameters": info["non_trainable_parameters"],
              "class_weights": {class_names[index]: weight for index, weight in class_weights.items()},
              "train_images": len(train[1]), "train_subset": train_subset, "val_images": len(val[1]),
              "epochs_run": len(records), "best_epoch": best["epoch"], "best_validation": best_entry,
              "resumed": False, "stopped_by_nan": len(records) < recipe["epochs"], "epoch_log": records, **kept,
              "training_seconds": round(seconds, 2), "seed": settings.seed,
              "profile": profile.to_dict(), "data_manifest_hash": manifest_hash,
              "files": {"model": paths["model"].name, "epoch_log": str(paths["epochs"]),
                        "curves": str(paths["curves"]) if records else "not drawn: no epoch finished"},
              "backend": run["backend"], "run": run}
    write_json(paths["record"], record)
    return record
