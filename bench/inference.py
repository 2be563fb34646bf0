#!/usr/bin/env python
"""Inference latency (batch 1) and throughput (batch 32) per model, measured as notebook 11 measures it.

    python bench/inference.py                                   # all four models at the cpu and full sizes (64, 224 px)
    python bench/inference.py --sizes 64 --models baseline_cnn,efficientnetb0 --repeats 10

Each model is built with random weights (speed does not depend on the weight values) and timed with
alzlib.comparison.measure_inference: predict_on_batch on random float32 inputs, warm-up calls first, median of
--repeats batch-1 calls and of max(3, repeats // 5) batch-32 calls. The model is not compiled, as notebook 11 loads
trained models with compile=False, so Keras' own default applies (no XLA on a CPU-only machine).
Writes outputs/bench/inference.json.
"""

from __future__ import annotations

import argparse
import time

import common
from alzlib import config

NUM_CLASSES = 4


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(config.MODEL_NAMES), help="comma-separated model names")
    parser.add_argument("--sizes", default=common.PROFILE_SIZES, help=common.PROFILE_SIZES_HELP)
    parser.add_argument("--repeats", type=common.positive_int, default=30, help="timed batch-1 calls per model")
    parser.add_argument("--batch-size", type=common.positive_int, default=32, help="throughput batch")
    parser.add_argument("--seed", type=int, default=0)
    common.add_output_argument(parser, "inference")
    arguments = parser.parse_args(argv)
    arguments.models = common.parse_names(arguments.models, config.MODEL_NAMES)
    arguments.sizes = common.parse_sizes(arguments.sizes)
    return arguments


def benchmark_model(name: str, size: int, arguments: argparse.Namespace) -> dict:
    """Build one model at one size and return its inference row."""
    import keras

    from alzlib import models
    from alzlib.comparison import measure_inference

    keras.utils.set_random_seed(arguments.seed)
    started = time.perf_counter()
    model, info = models.build_model(name, NUM_CLASSES, size, weights="none")
    build_seconds = time.perf_counter() - started
    result = measure_inference(model, size, repeats=arguments.repeats, batch_size=arguments.batch_size)
    row = {"model": name, "image_size": size, "parameters": info["total_parameters"],
           "build_seconds": build_seconds, **result, "load_average": common.load_average()}
    print(f"  {name} {size}px: batch 1 {row['latency_ms_median']:.1f} ms, batch {arguments.batch_size} "
          f"{row['throughput_images_per_second']:.1f} images/s", flush=True)
    keras.backend.clear_session()
    return row


def main(argv: list[str] | None = None) -> int:
    """Time every model at every size, print the table, write the JSON."""
    arguments = parse_arguments(argv)
    common.quiet_tensorflow()
    from alzlib import training

    training.configure_precision("float32")
    machine = common.machine_record()
    rows = [benchmark_model(name, size, arguments) for size in arguments.sizes for name in arguments.models]
    common.print_table(rows, ["model", "image_size", "parameters", "latency_ms_median", "latency_ms_p90",
                              "throughput_images_per_second"],
                       f"Inference, batch 1 latency and batch {arguments.batch_size} throughput (load average at "
                       f"start {machine['load_average_at_start']})")
    common.write_result("inference", arguments.output, {
        "benchmark": "inference", "machine": machine, "repeats": arguments.repeats,
        "weights": "random (speed only; no download)", "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
