#!/usr/bin/env python
"""Input-pipeline throughput: our decoded uint8 cache + tf.data against loaders that decode every epoch.

    python bench/input_pipeline.py                       # 1,500 Kaggle-like JPEGs at the cpu size (64 px), two epochs
    python bench/input_pipeline.py --image-size 224 --images 2000 --epochs 3

Loaders, all over the same files, at the same image size, batch 32, with the training augmentation of the chosen
model's family (flip, rotation, zoom; the transfer family adds contrast and brightness where a loader has them):

- ours: alzlib.preprocessing.load_image_cache (decode + letterbox once, uint8) then make_dataset (shuffle, batch,
  grey to RGB, augmentation, family scaling, prefetch), exactly as training uses it. Epoch 1 includes the decode.
- imagedatagenerator: tf.keras.preprocessing.image.ImageDataGenerator.flow_from_directory, which reads, decodes
  and resizes every file every epoch and augments image by image (what many peer notebooks use).
- candidate_grey_augment: ours with the augmentation applied to the one grey channel before it is repeated to RGB
  (a proposed change to make_dataset: the same pixels, a third of the interpolation work).
- image_dataset_from_directory: keras.utils.image_dataset_from_directory (decodes in tf.data every epoch, no
  .cache()), followed by the same Keras augmentation layers and prefetch.

Prints images/s per epoch and the ratio ours / loader; writes outputs/bench/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from alzlib import config, preprocessing

LOADERS = ("ours", "candidate_grey_augment", "imagedatagenerator", "image_dataset_from_directory")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-folder", type=Path, default=None,
                        help="<root>/<Class>/*.jpg to read (default: data/synthetic/cpu/images if it has enough "
                             "images, else Kaggle-like JPEGs written under /tmp)")
    parser.add_argument("--images", type=common.positive_int, default=1500, help="images to write when none are given")
    parser.add_argument("--image-size", type=common.positive_int, default=config.PROFILES["cpu"].image_size,
                        help="square size in pixels (default: the cpu profile's)")
    parser.add_argument("--epochs", type=common.positive_int, default=2, help="epochs per loader (at least 2)")
    parser.add_argument("--batch-size", type=common.positive_int, default=32)
    parser.add_argument("--model", default="baseline_cnn", choices=sorted(preprocessing.FAMILIES),
                        help="whose augmentation and scaling to apply")
    parser.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated subset of {', '.join(LOADERS)}")
    parser.add_argument("--seed", type=int, default=0)
    common.add_output_argument(parser, "input_pipeline")
    arguments = parser.parse_args(argv)
    if arguments.epochs < 2:
        parser.error("--epochs must be at least 2: the second epoch is the one that shows the cache.")
    arguments.loaders = common.parse_names(arguments.loaders, LOADERS)
    return arguments


def time_epochs(iterate_epoch, epochs: int) -> list[float]:
    """Return the wall seconds of each of `epochs` calls of `iterate_epoch`."""
    return [common.time_call(iterate_epoch) for _ in range(epochs)]


def drain(dataset) -> int:
    """Iterate a tf.data dataset to its end; return the number of images seen."""
    return sum(int(batch[0].shape[0]) for batch in dataset)


# ----------------------------------------------------------------------------------------------- loaders


def run_ours(paths: list[str], labels: list[int], spec: dict, arguments: argparse.Namespace) -> dict:
    """Time our loader: epoch 1 decodes into the uint8 cache (a fresh folder) and iterates; later epochs iterate."""
    manifest = common.manifest_of(paths, labels)
    cache_dir = Path(tempfile.mkdtemp(prefix="alzlib_bench_cache_"))
    try:
        started = time.perf_counter()
        images = preprocessing.load_image_cache(manifest, arguments.image_size, cache_dir)
        decode_seconds = time.perf_counter() - started
        # What a later session pays: the .npy file is already on disk.
        reload_seconds = common.time_call(
            lambda: preprocessing.load_image_cache(manifest, arguments.image_size, cache_dir))
        dataset = preprocessing.make_dataset(images, np.asarray(labels), spec, True, arguments.batch_size,
                                             arguments.seed)
        seconds = time_epochs(lambda: drain(dataset), arguments.epochs)
        seconds[0] += decode_seconds
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"epoch_seconds": seconds, "cache_decode_seconds": decode_seconds, "cache_reload_seconds": reload_seconds,
            "cache_megabytes": images.nbytes / 2**20,
            "note": "epoch 1 = decode + letterbox into the uint8 cache, then one pass of the tf.data pipeline"}


def grey_first_dataset(images: np.ndarray, labels: np.ndarray, spec: dict, batch_size: int, seed: int):
    """Return make_dataset's training pipeline with the augmentation moved before the grey-to-RGB repeat."""
    import tensorflow as tf

    layers = preprocessing.build_augmentation(spec, seed)

    def augment(images, labels):
        images = tf.cast(images, tf.float32)[..., tf.newaxis]
        for layer in layers:
            images = layer(images, training=True)
        return tf.repeat(images, 3, axis=-1), labels

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(images), seed=seed)
    dataset = dataset.batch(batch_size).map(augment, num_parallel_calls=None)
    dataset = dataset.map(lambda images, labels: (preprocessing.scale_for_family(images, spec["family"]), labels),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def run_grey_first(paths: list[str], labels: list[int], spec: dict, arguments: argparse.Namespace) -> dict:
    """Time the grey-first candidate the same way as ours (decode into a fresh cache in epoch 1)."""
    manifest = common.manifest_of(paths, labels)
    cache_dir = Path(tempfile.mkdtemp(prefix="alzlib_bench_cache_"))
    try:
        started = time.perf_counter()
        images = preprocessing.load_image_cache(manifest, arguments.image_size, cache_dir)
        decode_seconds = time.perf_counter() - started
        dataset = grey_first_dataset(images, np.asarray(labels), spec, arguments.batch_size, arguments.seed)
        seconds = time_epochs(lambda: drain(dataset), arguments.epochs)
        seconds[0] += decode_seconds
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"epoch_seconds": seconds, "cache_decode_seconds": decode_seconds,
            "note": "candidate, not the training code: augmentation on the grey channel, then repeat to RGB"}


def image_data_generator_arguments(spec: dict) -> dict:
    """Return ImageDataGenerator arguments matching the spec's augmentation (rotation factor x 360 degrees)."""
    arguments = {"fill_mode": "constant", "cval": 0.0}
    for entry in spec["augmentation"]:
        if entry["layer"] == "RandomFlip":
            arguments["horizontal_flip"] = True
        elif entry["layer"] == "RandomRotation":
            arguments["rotation_range"] = entry["factor"] * 360.0
        elif entry["layer"] == "RandomZoom":
            arguments["zoom_range"] = entry["height_factor"]
        elif entry["layer"] == "RandomBrightness":
            arguments["brightness_range"] = (1 - entry["factor"], 1 + entry["factor"])
        # RandomContrast has no ImageDataGenerator counterpart; it is left out there.
    if spec["family"] == "baseline":
        arguments["rescale"] = 1.0 / 255
    elif spec["family"] == "resnet50":
        from keras.applications import resnet50

        arguments["preprocessing_function"] = resnet50.preprocess_input
    return arguments


def run_image_data_generator(root: Path, spec: dict, arguments: argparse.Namespace) -> dict:
    """Time ImageDataGenerator.flow_from_directory: every epoch reads, decodes, resizes and augments each file."""
    import tensorflow as tf

    generator = tf.keras.preprocessing.image.ImageDataGenerator(**image_data_generator_arguments(spec))
    iterator = generator.flow_from_directory(str(root), target_size=(arguments.image_size, arguments.image_size),
                                             color_mode="rgb", class_mode="sparse", batch_size=arguments.batch_size,
                                             shuffle=True, seed=arguments.seed, interpolation="bilinear")

    def epoch() -> None:
        for index in range(len(iterator)):
            iterator[index]
        iterator.on_epoch_end()

    return {"epoch_seconds": time_epochs(epoch, arguments.epochs),
            "note": "squashes to the square size (flow_from_directory's default); no RandomContrast equivalent"}


def run_image_dataset_from_directory(root: Path, spec: dict, arguments: argparse.Namespace) -> dict:
    """Time keras.utils.image_dataset_from_directory + the same augmentation layers + prefetch, without .cache()."""
    import keras
    import tensorflow as tf

    dataset = keras.utils.image_dataset_from_directory(
        str(root), labels="inferred", label_mode="int", color_mode="rgb", batch_size=arguments.batch_size,
        image_size=(arguments.image_size, arguments.image_size), shuffle=True, seed=arguments.seed, verbose=False)
    layers = preprocessing.build_augmentation(spec, arguments.seed)

    def augment(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        return preprocessing.scale_for_family(images, spec["family"]), labels

    dataset = dataset.map(augment, num_parallel_calls=None).prefetch(tf.data.AUTOTUNE)
    return {"epoch_seconds": time_epochs(lambda: drain(dataset), arguments.epochs),
            "note": "decodes in tf.data every epoch (no .cache()); squashes to the square size (its default)"}


# ----------------------------------------------------------------------------------------------- main


def summarise(results: dict, count: int) -> list[dict]:
    """Return one row per loader and epoch: seconds, images/s and how many times faster ours (and the candidate) is."""
    rows = []
    for loader, result in results.items():
        for epoch, seconds in enumerate(result["epoch_seconds"], start=1):
            row = {"loader": loader, "epoch": epoch, "seconds": seconds, "images_per_second": count / seconds}
            references = (("ours", "ours_times_faster"), ("candidate_grey_augment", "candidate_times_faster"))
            for reference, column in references:
                if reference in results and loader not in ("ours", "candidate_grey_augment"):
                    row[column] = row["seconds"] / results[reference]["epoch_seconds"][epoch - 1]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the loaders, print the table, write the JSON."""
    arguments = parse_arguments(argv)
    common.quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(arguments.seed)
    machine = common.machine_record()
    root = common.benchmark_images(arguments.image_folder, arguments.images, arguments.seed)
    paths, labels, classes = common.list_images(root)
    spec = preprocessing.preprocessing_spec(arguments.model, arguments.image_size)
    runners = {"ours": lambda: run_ours(paths, labels, spec, arguments),
               "candidate_grey_augment": lambda: run_grey_first(paths, labels, spec, arguments),
               "imagedatagenerator": lambda: run_image_data_generator(root, spec, arguments),
               "image_dataset_from_directory": lambda: run_image_dataset_from_directory(root, spec, arguments)}
    results = {}
    for loader in arguments.loaders:
        print(f"{loader} ...", flush=True)
        results[loader] = runners[loader]()
    rows = summarise(results, len(paths))
    common.print_table(rows, ["loader", "epoch", "seconds", "images_per_second", "ours_times_faster",
                              "candidate_times_faster"],
                       f"Input pipeline, {len(paths)} images at {arguments.image_size} px, "
                       f"batch {arguments.batch_size}, {spec['family']} augmentation (load average at start "
                       f"{machine['load_average_at_start']})")
    if "ours" in results:
        print(f"ours: decode into the uint8 cache {results['ours']['cache_decode_seconds']:.2f} s, reload from disk "
              f"{results['ours']['cache_reload_seconds']:.3f} s, cache {results['ours']['cache_megabytes']:.1f} MB")
    common.write_result("input_pipeline", arguments.output, {
        "benchmark": "input_pipeline", "machine": machine, "image_folder": str(root), "images": len(paths),
        "classes": classes, "image_size": arguments.image_size, "batch_size": arguments.batch_size,
        "epochs": arguments.epochs, "model": arguments.model, "augmentation": spec["augmentation"],
        "loaders": results, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
