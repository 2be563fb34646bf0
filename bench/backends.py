#!/usr/bin/env python
"""Training throughput (images/s) per Keras backend and model, fed by the pipeline training uses on that backend.

    python bench/backends.py                              # every installed backend, four models, 64 and 224 px
    python bench/backends.py --backends jax,torch --models baseline_cnn --sizes 64
    python bench/backends.py --parity                     # + the baseline CNN's cpu-profile training per backend

Each backend runs in its own child process (Keras fixes its backend at import) with KERAS_BACKEND set. There every
model is built with random weights (the transfer models' recipe layers frozen, as an ImageNet run trains), compiled
with alzlib.training's recipe for that backend and the devices it sees (alzlib.backend.execution_settings:
precision, XLA or not, steps per call, batch scale), and fitted on uint8 images through
alzlib.preprocessing.make_dataset: tf.data under TensorFlow, the PyDataset loader under JAX and PyTorch. The first
fit (compilation plus one call) is reported apart; throughput is the median of --rounds fits of --steps steps.

--parity also trains the baseline CNN on the cpu profile's synthetic cohort with alzlib.training.train_model per
backend (outputs in a temporary folder) and reports its best validation balanced accuracy and training seconds.

This replaces bench/jax_train_step.py: on a GPU machine with only JAX, `python bench/backends.py --backends jax
--sizes 224 --steps 50` measures the GPU path with the GPU settings the pipeline itself would use.
Writes outputs/bench/backends.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from alzlib import backend, config

NUM_CLASSES = 4


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    installed = [name for name in backend.BACKENDS if importlib.util.find_spec(name) is not None]
    parser.add_argument("--backends", default=",".join(installed), help="comma-separated Keras backends (default: "
                                                                         "every installed one)")
    parser.add_argument("--models", default=",".join(config.MODEL_NAMES), help="comma-separated model names")
    parser.add_argument("--sizes", default=common.PROFILE_SIZES, help=common.PROFILE_SIZES_HELP)
    parser.add_argument("--batch-size", type=common.positive_int, default=None,
                        help="per-replica batch (default: the recipe's for the profile of that size)")
    parser.add_argument("--steps", type=common.positive_int, default=None,
                        help="timed steps per fit (default: 8 up to 128 px, else 4)")
    parser.add_argument("--rounds", type=common.positive_int, default=2, help="timed fits; the median is reported")
    parser.add_argument("--parity", action="store_true",
                        help="also train the baseline CNN on the cpu profile per backend (minutes each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one backend, print JSON
    common.add_output_argument(parser, "backends")
    arguments = parser.parse_args(argv)
    arguments.backends = common.parse_names(arguments.backends, backend.BACKENDS)
    arguments.models = common.parse_names(arguments.models, config.MODEL_NAMES)
    arguments.sizes = common.parse_sizes(arguments.sizes)
    return arguments


def profile_for_size(size: int) -> config.Profile:
    """Return the profile whose image size is `size` (the cpu profile otherwise): its recipe is the one compiled."""
    return next((profile for profile in config.PROFILES.values() if profile.image_size == size), config.PROFILES["cpu"])


# ----------------------------------------------------------------------------------------------- one backend (child)


def compiled_model(name: str, size: int, seed: int) -> tuple[object, dict, dict]:
    """Return (model, info, recipe): random weights, the recipe's frozen layers, compiled as training compiles it."""
    import keras

    from alzlib import models, training

    keras.utils.set_random_seed(seed)
    recipe = training.training_recipe(name, profile_for_size(size), tuple(backend.visible_gpus()))
    training.configure_precision(recipe["dtype_policy"])
    model, info = models.build_model(name, NUM_CLASSES, size, weights="none")
    if name in models.FROZEN_LAYERS:
        info.update(models.freeze_layers(model.get_layer(info["backbone"]), models.FROZEN_LAYERS[name]))
    training.compile_model(model, recipe)
    return model, info, recipe


def training_feed(name: str, size: int, recipe: dict, batch_size: int, steps: int, seed: int):
    """Return the training pipeline over steps x batch random uint8 images, with the recipe's targets and weights."""
    from alzlib import preprocessing

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (steps * batch_size, size, size), dtype=np.uint8)
    labels = rng.permutation(np.arange(len(images)) % NUM_CLASSES)
    targets = np.eye(NUM_CLASSES, dtype=np.float32)[labels] if recipe["loss"]["labels"] == "one-hot" else labels
    spec = preprocessing.preprocessing_spec(name, size)
    return preprocessing.make_dataset(images, targets, spec, True, batch_size, seed, np.ones(len(images), np.float32))


def timed_fit(model, feed) -> float:
    """Return the wall seconds of one epoch of model.fit over `feed` (silent)."""
    started = time.perf_counter()
    model.fit(feed, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - started


def benchmark_model(name: str, size: int, arguments: argparse.Namespace) -> dict:
    """Time one model at one size on the active backend; return the row."""
    model, info, recipe = compiled_model(name, size, arguments.seed)
    batch_size = arguments.batch_size or recipe["global_batch_size"]
    execution = recipe["steps_per_execution"]
    steps = arguments.steps or (8 if size <= 128 else 4)
    steps = -(-steps // execution) * execution
    feed = training_feed(name, size, recipe, batch_size, steps, arguments.seed)
    first = timed_fit(model, feed)
    rounds = [timed_fit(model, feed) for _ in range(arguments.rounds)]
    seconds = common.summarise_seconds(rounds)["median"]
    row = {"backend": recipe["backend"], "model": name, "image_size": size, "batch_size": batch_size,
           "steps": steps, "steps_per_execution": execution, "jit_compile": recipe["jit_compile"],
           "dtype_policy": recipe["dtype_policy"], "first_fit_seconds": round(first, 2),
           "round_seconds": [round(value, 3) for value in rounds],
           "images_per_second": round(steps * batch_size / seconds, 1),
           "trainable_parameters": info["trainable_parameters"], "load_average": common.load_average()}
    print(f"  {row['backend']} {name} {size}px: first fit {first:.1f} s, {row['images_per_second']} images/s",
          file=sys.stderr, flush=True)
    return row


def baseline_parity() -> dict:
    """Train the baseline CNN on the cpu profile's manifest (ALZ_OUTPUTS_DIR, made by `ingest_cpu_profile`) under
    the name baseline_cnn_<backend>, with the pipeline's default seed; return its scores."""
    from alzlib import environment, pipeline, training

    settings = config.load_settings("cpu", config.DEFAULT_SEED, None, "subject", None, None, False, 1)
    environment.set_seeds(settings.seed)
    manifest, _ = pipeline.load_manifest(settings)
    started = time.perf_counter()
    record = training.train_model("baseline_cnn", settings, manifest, verbose=0,
                                  output_name=f"baseline_cnn_{backend.active_backend()}")
    seconds = time.perf_counter() - started
    best = record["best_validation"] or {}
    return {"backend": record["backend"], "epochs_run": record["epochs_run"], "best_epoch": record["best_epoch"],
            "best_val_balanced_accuracy": best.get("val_balanced_accuracy"), "best_val_loss": best.get("val_loss"),
            "train_images": record["train_images"], "val_images": record["val_images"],
            "training_seconds": round(seconds, 1)}


def run_worker(arguments: argparse.Namespace) -> int:
    """Benchmark every model and size on this process's backend; print one JSON line with the rows."""
    rows = [benchmark_model(name, size, arguments) for size in arguments.sizes for name in arguments.models]
    result = {"rows": rows, "gpus": [gpu.name for gpu in backend.visible_gpus()]}
    if arguments.parity:
        result["parity"] = baseline_parity()
    print(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------------------------- all backends


def ingest_cpu_profile(outputs: Path) -> None:
    """Run notebook 01 on the cpu profile (default seed) into `outputs` (the manifest the parity runs train on)."""
    environment = {**os.environ, "ALZ_OUTPUTS_DIR": str(outputs), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, str(config.PROJECT_ROOT / "run_all.py"), "--profile", "cpu", "--only", "01"],
                   env=environment, check=True, stdout=subprocess.DEVNULL)


def run_backend(name: str, argv: list[str], outputs: Path | None) -> dict:
    """Run this script as a worker with KERAS_BACKEND=`name`; return its JSON (or the error it ended with)."""
    environment = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if outputs is not None:
        environment["ALZ_OUTPUTS_DIR"] = str(outputs)
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", name]
    result = subprocess.run(command, env=environment, stdout=subprocess.PIPE, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"rows": [], "error": f"exit code {result.returncode}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    """Run each backend in a child process, print the table, write the JSON."""
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    common.quiet_tensorflow()
    if arguments.worker:
        return run_worker(arguments)
    machine = common.machine_record({"cpu_cores": os.cpu_count()})
    with tempfile.TemporaryDirectory(prefix="alz-parity-") as folder:
        if arguments.parity:
            ingest_cpu_profile(Path(folder))
        results = {name: run_backend(name, argv, Path(folder) if arguments.parity else None)
                   for name in arguments.backends}
    rows = [row for result in results.values() for row in result["rows"]]
    common.print_table(rows, ["backend", "model", "image_size", "batch_size", "dtype_policy", "jit_compile",
                              "steps_per_execution", "first_fit_seconds", "images_per_second"],
                       f"Training throughput per backend (load average at start {machine['load_average_at_start']})")
    parity = [result["parity"] for result in results.values() if "parity" in result]
    if parity:
        common.print_table(parity, ["backend", "epochs_run", "best_epoch", "best_val_balanced_accuracy",
                                    "best_val_loss", "training_seconds"], "Baseline CNN, cpu profile, per backend")
    errors = {name: result["error"] for name, result in results.items() if "error" in result}
    common.write_result("backends", arguments.output, {"benchmark": "backends", "machine": machine, "rows": rows,
                                                       "parity": parity, "errors": errors,
                                                       "gpus": {name: result.get("gpus") for name, result in
                                                                results.items()}})
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
