#!/usr/bin/env python
"""Training throughput of the four models on the JAX backend, fed synthetic tensors: the GPU path of the benchmarks.

    # a GPU machine with JAX but no TensorFlow: Keras and its small deps from wheels, alzlib on the path
    pip install "jax[cuda12]" keras && PYTHONPATH=. python bench/jax_train_step.py --sizes 224 --steps 50
    # checked on this CPU machine in a separate virtual environment, tiny sizes only
    PYTHONPATH=. /tmp/jaxenv/bin/python bench/jax_train_step.py --models baseline_cnn --sizes 32 --steps 2

Needs only numpy, jax, keras and alzlib's TensorFlow-free modules (config, io, environment, models). It does not
import alzlib.training (which imports pandas at module level through alzlib.preprocessing); the recipe's optimizer
and loss are read from alzlib/training.py's source with ast.literal_eval, so they cannot drift from training.

On a GPU the recipe's GPU settings apply: mixed_float16, jit_compile, steps_per_execution 1 (the model's softmax stays
float32). The inputs are one random batch held on the device, so this measures the model, not a data pipeline. The
table compares with NVIDIA's published one-A100 mixed-precision figures and projects a full-profile run:
    hours = epochs x training images / images per second / 3600   (training steps only; validation adds a little).
Writes outputs/bench/jax_train_step.json.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import time
from pathlib import Path

import numpy as np

import common
from alzlib import config

NUM_CLASSES = 4
TRAINING_SOURCE = config.PROJECT_ROOT / "alzlib" / "training.py"
SPLITS_SOURCE = config.PROJECT_ROOT / "alzlib" / "splits.py"
# As quoted in the performance issue: NVIDIA Deep Learning Examples (TensorFlow 2 ConvNets), one A100, mixed
# precision, 224 px, their batch size (256) and pipeline (DALI), whole network trained. Not re-checked here.
NVIDIA_A100_IMAGES_PER_SECOND = {"resnet50": 2375.0, "efficientnetb0": 3454.0}
NVIDIA_REFERENCE_OF = {"resnet50": "resnet50", "resnet50_attention": "resnet50", "efficientnetb0": "efficientnetb0"}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(config.MODEL_NAMES), help="comma-separated model names")
    parser.add_argument("--sizes", default=common.PROFILE_SIZES, help=common.PROFILE_SIZES_HELP)
    parser.add_argument("--batch-size", type=common.positive_int, default=32, help="recipe: 32; NVIDIA used 256")
    parser.add_argument("--steps", type=common.positive_int, default=20, help="timed steps per model and size")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_float16"), default="auto",
                        help="auto: mixed_float16 on a GPU, float32 otherwise (the recipe)")
    parser.add_argument("--trainable", choices=("recipe", "all"), default="recipe",
                        help="recipe: freeze the backbone layers an ImageNet run freezes; all: every layer trains")
    parser.add_argument("--train-images", type=common.positive_int, default=None,
                        help="training images of the projected full run (default: the full profile's train split)")
    parser.add_argument("--seed", type=int, default=0)
    common.add_output_argument(parser, "jax_train_step")
    arguments = parser.parse_args(argv)
    arguments.models = common.parse_names(arguments.models, config.MODEL_NAMES)
    arguments.sizes = common.parse_sizes(arguments.sizes)
    return arguments


def select_jax_backend() -> None:
    """Make Keras use JAX; raise ValueError if another backend was asked for or Keras is already imported."""
    requested = os.environ.get("KERAS_BACKEND", "jax")
    if requested != "jax":
        raise ValueError(f"KERAS_BACKEND={requested!r}: this benchmark runs on the JAX backend only (unset it or set "
                         f"jax).")
    import sys

    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != "jax":
        raise ValueError("Keras was imported with another backend before this script could select JAX.")
    os.environ["KERAS_BACKEND"] = "jax"


def source_constant(path: Path, name: str):
    """Return the literal value assigned to module-level `name` in a Python source file, without importing it."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{path} assigns no literal constant {name!r}: the JAX benchmark reads the recipe from there.")


def full_profile_train_images() -> int:
    """Return the training images of a full-profile run on the synthetic cohort (subjects x slices x train share)."""
    profile = config.PROFILES["full"]
    train_share = source_constant(SPLITS_SOURCE, "DEFAULT_FRACTIONS")[0]
    return round(train_share * sum(profile.cohort_subjects.values()) * profile.slices_per_subject)


def jax_hardware() -> dict:
    """Describe the machine from JAX's point of view (alzlib.environment asks TensorFlow, which may be absent)."""
    import jax

    devices = jax.devices()
    return {"platform": platform.platform(), "cpu_cores": os.cpu_count(), "jax_backend": jax.default_backend(),
            "devices": [f"{device.platform}:{getattr(device, 'device_kind', device)}" for device in devices],
            "gpus": [str(getattr(device, "device_kind", device)) for device in devices if device.platform == "gpu"]}


def compile_like_training(model, name: str, gpu: bool) -> dict:
    """Compile `model` with the optimizer and loss of alzlib.training's recipe for `name`; return what was used."""
    import keras

    recipe = source_constant(TRAINING_SOURCE, "BASELINE_RECIPE" if name == "baseline_cnn" else "TRANSFER_RECIPE")
    steps_per_execution = 1 if gpu else source_constant(TRAINING_SOURCE, "CPU_STEPS_PER_EXECUTION")
    settings = recipe["optimizer"]
    if settings["name"] == "Adam":
        optimizer = keras.optimizers.Adam(learning_rate=settings["learning_rate"])
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=settings["learning_rate"],
                                           weight_decay=settings["weight_decay"], clipnorm=settings["clipnorm"])
    one_hot = recipe["loss"]["labels"] == "one-hot"
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=recipe["loss"]["label_smoothing"]) if one_hot
            else keras.losses.SparseCategoricalCrossentropy())
    accuracy_metric = keras.metrics.CategoricalAccuracy if one_hot else keras.metrics.SparseCategoricalAccuracy
    accuracy = accuracy_metric(name="accuracy")
    # JAX always compiles the train step with XLA; jit_compile=True states it (False would run op by op).
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy], steps_per_execution=steps_per_execution,
                  jit_compile=True)
    return {"optimizer": settings["name"], "one_hot": one_hot, "steps_per_execution": steps_per_execution}


def device_batch(size: int, batch_size: int, one_hot: bool, seed: int):
    """Return one (images, targets, sample weights) batch as arrays on the default JAX device."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    labels = np.arange(batch_size) % NUM_CLASSES
    targets = np.eye(NUM_CLASSES, dtype=np.float32)[labels] if one_hot else labels
    return jnp.asarray(images), jnp.asarray(targets), jnp.ones((batch_size,), dtype=jnp.float32)


def timed_fit(model, batch: tuple, steps: int) -> float:
    """Return the wall seconds of fitting `steps` steps of the repeated device batch (fit returns after a sync)."""

    def repeat():
        while True:
            yield batch

    started = time.perf_counter()
    model.fit(repeat(), epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - started


def benchmark_model(name: str, size: int, arguments: argparse.Namespace, gpu: bool, train_images: int) -> dict:
    """Build, compile and time one model at one size; return its row with the NVIDIA comparison and projection."""
    import keras

    from alzlib import models

    keras.utils.set_random_seed(arguments.seed)
    model, info = models.build_model(name, NUM_CLASSES, size, weights="none")
    if arguments.trainable == "recipe" and name in models.FROZEN_LAYERS:
        info.update(models.freeze_layers(model.get_layer(info["backbone"]), models.FROZEN_LAYERS[name]))
        info.update(models.parameter_counts(model))
    compiled = compile_like_training(model, name, gpu)
    execution = compiled["steps_per_execution"]
    steps = -(-arguments.steps // execution) * execution
    batch = device_batch(size, arguments.batch_size, compiled["one_hot"], arguments.seed)
    first = timed_fit(model, batch, execution)
    seconds = timed_fit(model, batch, steps)
    images_per_second = steps * arguments.batch_size / seconds
    epochs = config.PROFILES["full"].epochs
    row = {"model": name, "image_size": size, "batch_size": arguments.batch_size, "steps": steps,
           "steps_per_execution": execution, "dtype_policy": info["dtype_policy"],
           "trainable_parameters": info["trainable_parameters"], "first_fit_seconds": first, "seconds": seconds,
           "images_per_second": images_per_second,
           "projected_full_run_hours": epochs * train_images / images_per_second / 3600}
    reference = NVIDIA_REFERENCE_OF.get(name)
    if reference and size == 224:
        row["nvidia_a100_images_per_second"] = NVIDIA_A100_IMAGES_PER_SECOND[reference]
        row["fraction_of_nvidia"] = images_per_second / NVIDIA_A100_IMAGES_PER_SECOND[reference]
    print(f"  {name} {size}px: first fit {first:.1f} s, {images_per_second:.1f} images/s", flush=True)
    keras.backend.clear_session()
    return row


def main(argv: list[str] | None = None) -> int:
    """Time every model at every size on JAX, print the table and the projection, write the JSON."""
    arguments = parse_arguments(argv)
    select_jax_backend()
    import keras

    hardware = jax_hardware()
    gpu = bool(hardware["gpus"])
    policy = ("mixed_float16" if gpu else "float32") if arguments.precision == "auto" else arguments.precision
    keras.config.set_dtype_policy(policy)
    train_images = arguments.train_images or full_profile_train_images()
    machine = common.machine_record(hardware)
    rows = [benchmark_model(name, size, arguments, gpu, train_images)
            for size in arguments.sizes for name in arguments.models]
    common.print_table(rows, ["model", "image_size", "dtype_policy", "first_fit_seconds", "images_per_second",
                              "nvidia_a100_images_per_second", "fraction_of_nvidia", "projected_full_run_hours"],
                       f"JAX training throughput, batch {arguments.batch_size}, synthetic tensors on "
                       f"{hardware['devices'][0]} (load average at start {machine['load_average_at_start']})")
    epochs = config.PROFILES["full"].epochs
    print(f"projection: hours = {epochs} epochs x {train_images} training images / images per second / 3600 "
          f"(training steps only; per-epoch validation and the first epoch's compilation come on top)")
    common.write_result("jax_train_step", arguments.output, {
        "benchmark": "jax_train_step", "machine": machine, "keras_backend": keras.backend.backend(),
        "dtype_policy": policy, "trainable": arguments.trainable, "weights": "random (speed only; no download)",
        "feed": "one random batch on the device, repeated", "projection": {
            "formula": "epochs x train_images / images_per_second", "epochs": epochs, "train_images": train_images},
        "nvidia_reference": {"images_per_second": NVIDIA_A100_IMAGES_PER_SECOND,
                             "conditions": "one A100, mixed precision, 224 px, batch 256, DALI, full network "
                                           "trained (as quoted in the performance issue)"},
        "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
