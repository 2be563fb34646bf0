#!/usr/bin/env python
"""Training throughput per model (images/s, batch 32): fed by our tf.data pipeline and by in-memory tensors.

    python bench/train_step.py                                  # all four models at the cpu and full sizes (64, 224 px)
    python bench/train_step.py --sizes 64 --models baseline_cnn,efficientnetb0
    python bench/train_step.py --sizes 64 --models baseline_cnn --steps-per-execution 1

Each model is built with random weights and, for the transfer models, the recipe's first layers frozen (what an
ImageNet run trains), then compiled exactly as training compiles it on this machine (alzlib.training.training_recipe
and compile_model: optimizer, loss, steps_per_execution, jit_compile). Two feeds:

- pipeline: alzlib.preprocessing.make_dataset on uint8 images (shuffle, grey to RGB, augmentation, scaling,
  prefetch) with one-hot or integer targets and per-sample class weights, as training feeds it;
- tensors: one preprocessed batch held in memory and repeated (tf.data.Dataset.from_tensors(...).repeat()), the
  cost of the model alone.

The first fit of each feed (tracing + one execution) is timed and reported apart; throughput comes from the median
of --rounds fits of --steps steps, the two feeds interleaved round by round so that load drift on a shared machine
hits both alike. The pipeline overhead is 1 - pipeline/tensors throughput. Writes outputs/bench/train_step.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import common
from alzlib import config, preprocessing

NUM_CLASSES = 4


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(config.MODEL_NAMES), help="comma-separated model names")
    parser.add_argument("--sizes", default=common.PROFILE_SIZES, help=common.PROFILE_SIZES_HELP)
    parser.add_argument("--batch-size", type=common.positive_int, default=32)
    parser.add_argument("--steps", type=common.positive_int, default=None,
                        help="timed steps per feed (default: 8 up to 128 px, else 4; rounded up to a multiple of "
                             "steps_per_execution)")
    parser.add_argument("--rounds", type=common.positive_int, default=3,
                        help="timed fits per feed, the feeds interleaved round by round; the median is reported")
    parser.add_argument("--steps-per-execution", type=common.positive_int, default=None,
                        help="override the recipe's steps_per_execution (CPU recipe: 4)")
    parser.add_argument("--jit-compile", choices=("recipe", "on", "off"), default="recipe",
                        help="override the recipe's jit_compile (CPU recipe: off)")
    parser.add_argument("--trainable", choices=("recipe", "all"), default="recipe",
                        help="recipe: freeze the backbone layers an ImageNet run freezes; all: every layer trains")
    parser.add_argument("--feeds", default="pipeline,tensors", help="comma-separated subset of pipeline,tensors")
    parser.add_argument("--image-folder", type=Path, default=None,
                        help="<root>/<Class>/*.jpg to take the training images from (default as input_pipeline.py)")
    parser.add_argument("--seed", type=int, default=0)
    common.add_output_argument(parser, "train_step")
    arguments = parser.parse_args(argv)
    arguments.models = common.parse_names(arguments.models, config.MODEL_NAMES)
    arguments.sizes = common.parse_sizes(arguments.sizes)
    arguments.feeds = common.parse_names(arguments.feeds, ("pipeline", "tensors"))
    return arguments


def profile_for_size(size: int) -> config.Profile:
    """Return the profile whose image size is `size` (the cpu profile otherwise): its recipe is the one compiled."""
    return next((profile for profile in config.PROFILES.values() if profile.image_size == size), config.PROFILES["cpu"])


def build_compiled_model(name: str, size: int, arguments: argparse.Namespace) -> tuple[object, dict, dict]:
    """Return (model, info, recipe): random weights, the recipe's frozen layers, compiled as training compiles it."""
    from alzlib import models, training

    model, info = models.build_model(name, NUM_CLASSES, size, weights="none")
    if arguments.trainable == "recipe" and name in models.FROZEN_LAYERS:
        info.update(models.freeze_layers(model.get_layer(info["backbone"]), models.FROZEN_LAYERS[name]))
        info.update(models.parameter_counts(model))
    recipe = training.training_recipe(name, profile_for_size(size))
    if arguments.steps_per_execution:
        recipe["steps_per_execution"] = arguments.steps_per_execution
    if arguments.jit_compile != "recipe":
        recipe["jit_compile"] = arguments.jit_compile == "on"
    training.compile_model(model, recipe)
    return model, info, recipe


def training_arrays(images: np.ndarray, recipe: dict, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (uint8 images, targets as the recipe's loss wants them, balanced per-sample class weights)."""
    from alzlib import training

    labels = np.arange(len(images)) % NUM_CLASSES
    labels = np.random.default_rng(seed).permutation(labels)
    weights = training.balanced_class_weights(labels, NUM_CLASSES)
    sample_weights = np.array([weights[int(label)] for label in labels], dtype=np.float32)
    targets = np.eye(NUM_CLASSES, dtype=np.float32)[labels] if recipe["loss"]["labels"] == "one-hot" else labels
    return images, targets, sample_weights


def feeds(name: str, images: np.ndarray, recipe: dict, arguments: argparse.Namespace, size: int) -> dict:
    """Return the two feeds: the training pipeline (repeated) and one of its batches repeated from memory."""
    import tensorflow as tf

    images, targets, sample_weights = training_arrays(images, recipe, arguments.seed)
    spec = preprocessing.preprocessing_spec(name, size)
    pipeline = preprocessing.make_dataset(images, targets, spec, True, arguments.batch_size, arguments.seed,
                                          sample_weights).repeat()
    batch = next(iter(pipeline))
    tensors = tf.data.Dataset.from_tensors(tuple(tf.identity(part) for part in batch)).repeat()
    return {"pipeline": pipeline, "tensors": tensors}


def timed_fit(model, dataset, steps: int) -> float:
    """Return the wall seconds of model.fit over `steps` steps of `dataset` (one epoch, silent)."""
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - started


def benchmark_model(name: str, size: int, images: np.ndarray, arguments: argparse.Namespace) -> dict:
    """Time one model at one size on each feed; return the row."""
    import keras

    keras.utils.set_random_seed(arguments.seed)
    model, info, recipe = build_compiled_model(name, size, arguments)
    execution = recipe["steps_per_execution"]
    steps = arguments.steps or (8 if size <= 128 else 4)
    steps = -(-steps // execution) * execution
    sources = feeds(name, images, recipe, arguments, size)
    row = {"model": name, "image_size": size, "batch_size": arguments.batch_size, "steps": steps,
           "steps_per_execution": execution, "jit_compile": recipe["jit_compile"],
           "trainable_parameters": info["trainable_parameters"], "frozen_layers": info.get("frozen_layers", 0)}
    for feed in arguments.feeds:
        row[f"{feed}_first_fit_seconds"] = timed_fit(model, sources[feed], execution)
    # Interleaved rounds: on a shared machine the load drifts, and timing one feed after the other would charge
    # that drift to whichever feed ran second.
    timings = {feed: [] for feed in arguments.feeds}
    for _ in range(arguments.rounds):
        for feed in arguments.feeds:
            timings[feed].append(timed_fit(model, sources[feed], steps))
    for feed, values in timings.items():
        seconds = common.summarise_seconds(values)["median"]
        images_per_second = steps * arguments.batch_size / seconds
        row[f"{feed}_trace_seconds_estimate"] = max(0.0, row[f"{feed}_first_fit_seconds"] - execution * seconds / steps)
        row[f"{feed}_seconds"] = seconds
        row[f"{feed}_round_seconds"] = values
        row[f"{feed}_images_per_second"] = images_per_second
        print(f"  {name} {size}px {feed}: first fit {row[f'{feed}_first_fit_seconds']:.1f} s, "
              f"{images_per_second:.1f} images/s (median of {len(values)}: {', '.join(f'{v:.1f}' for v in values)} s)",
              flush=True)
    if {"pipeline", "tensors"} <= set(arguments.feeds):
        row["pipeline_overhead"] = 1 - row["pipeline_images_per_second"] / row["tensors_images_per_second"]
    row["load_average"] = common.load_average()
    return row


def main(argv: list[str] | None = None) -> int:
    """Run every model at every size, print the table, write the JSON."""
    arguments = parse_arguments(argv)
    common.quiet_tensorflow()
    from alzlib import training

    training.configure_precision("float32")
    machine = common.machine_record()
    root = common.benchmark_images(arguments.image_folder, 1500, arguments.seed)
    paths = common.list_images(root)[0]
    rows = []
    for size in arguments.sizes:
        steps = arguments.steps or (8 if size <= 128 else 4)
        count = min(len(paths), arguments.batch_size * max(steps, 8))
        chosen = [paths[index] for index in np.random.default_rng(arguments.seed).permutation(len(paths))[:count]]
        images = preprocessing.decode_images(chosen, size)
        for name in arguments.models:
            rows.append(benchmark_model(name, size, images, arguments))
    common.print_table(rows, ["model", "image_size", "steps", "pipeline_first_fit_seconds",
                              "pipeline_images_per_second", "tensors_images_per_second", "pipeline_overhead"],
                       f"Training throughput, batch {arguments.batch_size} (load average at start "
                       f"{machine['load_average_at_start']})")
    common.write_result("train_step", arguments.output, {
        "benchmark": "train_step", "machine": machine, "trainable": arguments.trainable,
        "weights": "random (no download); transfer models frozen as the ImageNet recipe unless --trainable all",
        "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
