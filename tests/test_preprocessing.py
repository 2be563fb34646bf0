"""Tests of alzlib.preprocessing: letterbox geometry, the uint8 cache, the tf.data pipelines and the specs."""

import hashlib
import json

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alzlib import preprocessing


def write_manifest(folder, count=12, size=(52, 40), seed=0) -> pd.DataFrame:
    """Write `count` greyscale images (PNG and JPEG) into `folder`; return their manifest rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        image = rng.integers(30, 220, size, dtype=np.uint8)
        path = folder / f"SYN{index:04d}_slice01.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(image).save(path)
        rows.append({"path": str(path), "label": f"class{index % 2}", "label_index": index % 2,
                     "subject_id": f"SYN{index:04d}", "split": "train" if index < count - 4 else "val",
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "width": size[1], "height": size[0]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- letterbox


def test_letterbox_keeps_aspect_and_pads_black():
    image = np.full((40, 20), 200, dtype=np.uint8)  # twice as tall as wide
    boxed = preprocessing.letterbox(image, 32)
    assert boxed.shape == (32, 32) and boxed.dtype == np.uint8
    columns = np.flatnonzero(boxed.any(axis=0))
    assert boxed[:, columns].min() == 200 and len(columns) == 16  # 40x20 -> 32x16: aspect 2:1 kept
    assert columns[0] == 8 and columns[-1] == 23  # centred: 8 black columns each side
    assert (boxed[:, :8] == 0).all() and (boxed[:, 24:] == 0).all()
    geometry = preprocessing.letterbox_geometry(40, 20, 32)
    assert (geometry["height"], geometry["width"], geometry["top"], geometry["left"]) == (32, 16, 0, 8)


def test_letterbox_of_a_mask_with_nearest_keeps_its_values_and_maps_back():
    mask = np.zeros((52, 40), dtype=np.uint8)
    mask[10:30, 5:20], mask[30:50, 20:35] = 1, 4
    boxed = preprocessing.letterbox(mask, 26, interpolation="nearest")
    assert set(np.unique(boxed)) == {0, 1, 4}
    restored = preprocessing.unletterbox(preprocessing.letterbox(mask, 104, interpolation="nearest"), 52, 40,
                                         interpolation="nearest")
    assert restored.shape == mask.shape and np.array_equal(restored, mask)  # exact 2x scale round trip


def test_letterbox_rejects_bad_input():
    with pytest.raises(ValueError, match="interpolation"):
        preprocessing.letterbox(np.zeros((4, 4), np.uint8), 8, interpolation="cubic")
    with pytest.raises(ValueError, match="shape"):
        preprocessing.letterbox(np.zeros(5, np.uint8), 8)


# ----------------------------------------------------------------------------------------------- cache


def test_cache_is_decoded_once_and_reused(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path)
    cache_dir = tmp_path / "cache"
    first = preprocessing.load_image_cache(manifest, 32, cache_dir)
    assert first.shape == (12, 32, 32) and first.dtype == np.uint8
    expected = preprocessing.letterbox(np.asarray(Image.open(manifest.path[1])), 32)
    assert np.array_equal(first[1], expected)
    files = list(cache_dir.iterdir())
    assert [path.name for path in files] == [preprocessing.cache_file(manifest, 32, cache_dir).name]

    def must_not_decode(*args, **kwargs):
        raise AssertionError("the cache was decoded again")

    monkeypatch.setattr(preprocessing, "decode_images", must_not_decode)
    assert np.array_equal(preprocessing.load_image_cache(manifest, 32, cache_dir), first)
    changed = manifest.assign(sha256=manifest.sha256.where(manifest.index != 0, "0" * 64))
    with pytest.raises(AssertionError, match="decoded again"):  # another image hash is another cache
        preprocessing.load_image_cache(changed, 32, cache_dir)


def test_cache_rejects_an_empty_manifest_or_missing_hashes(tmp_path):
    manifest = write_manifest(tmp_path, count=2)
    with pytest.raises(ValueError, match="empty"):
        preprocessing.load_image_cache(manifest.iloc[:0], 32, tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        preprocessing.load_image_cache(manifest.drop(columns="sha256"), 32, tmp_path)


# ----------------------------------------------------------------------------------------------- specs


def test_specs_are_json_ready_and_name_their_family():
    for name, family in [("baseline_cnn", "baseline"), ("resnet50", "resnet50"),
                         ("resnet50_attention", "resnet50"), ("efficientnetb0", "efficientnet")]:
        spec = preprocessing.preprocessing_spec(name, 64)
        assert json.loads(json.dumps(spec)) == spec
        assert spec["family"] == family and spec["channels"] == 3 and spec["resize"] == "letterbox"
    baseline = [entry["layer"] for entry in preprocessing.preprocessing_spec("baseline_cnn", 64)["augmentation"]]
    assert baseline == ["RandomFlip", "RandomRotation", "RandomZoom"]
    transfer = preprocessing.preprocessing_spec("resnet50", 64)["augmentation"]
    assert [entry["layer"] for entry in transfer][-2:] == ["RandomContrast", "RandomBrightness"]
    with pytest.raises(ValueError, match="baseline_cnn, .*efficientnetb0"):
        preprocessing.preprocessing_spec("vgg16", 64)


def test_efficientnet_preprocess_input_is_a_pass_through_in_installed_keras():
    from keras.applications import efficientnet

    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(efficientnet.preprocess_input(images)), images)
    assert "pass-through" in preprocessing.preprocessing_spec("efficientnetb0", 32)["scaling"]


def test_prepare_images_applies_each_family():
    images = [np.full((40, 20), 255, dtype=np.uint8), np.zeros((32, 32), dtype=np.uint8)]
    baseline = preprocessing.prepare_images(images, preprocessing.preprocessing_spec("baseline_cnn", 32))
    assert baseline.shape == (2, 32, 32, 3) and baseline.dtype == np.float32
    assert baseline.max() == 1.0 and baseline[0, 0, 0, 0] == 0.0  # padding stays black
    resnet = preprocessing.prepare_images(images, preprocessing.preprocessing_spec("resnet50", 32))
    assert np.allclose(resnet[1, 0, 0], -np.array(preprocessing.CAFFE_MEANS_BGR), atol=1e-3)
    efficientnet = preprocessing.prepare_images(images, preprocessing.preprocessing_spec("efficientnetb0", 32))
    assert efficientnet.max() == 255.0
    with pytest.raises(ValueError, match="uint8 greyscale"):
        preprocessing.prepare_images([np.zeros((8, 8), dtype=np.float32)], preprocessing.preprocessing_spec(
            "baseline_cnn", 32))


# ----------------------------------------------------------------------------------------------- input pipelines


def batches(dataset) -> list:
    """Return one epoch of a dataset as a list of NumPy tuples (a PyDataset is told the epoch ended, as fit does)."""
    epoch = [tuple(np.asarray(part) for part in batch) for batch in dataset]
    if hasattr(dataset, "on_epoch_end"):
        dataset.on_epoch_end()
    return epoch


# make_dataset is tf.data under TensorFlow and the PyDataset elsewhere; make_loader is the PyDataset everywhere.
@pytest.mark.parametrize("make", [preprocessing.make_dataset, preprocessing.make_loader])
def test_training_batches_change_every_epoch_and_eval_batches_do_not(make):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 32, 32), dtype=np.uint8)
    labels = np.arange(20)
    spec = preprocessing.preprocessing_spec("resnet50", 32)
    train = make(images, labels, spec, True, 8, seed=3, sample_weights=np.ones(20))
    first, second = batches(train), batches(train)
    assert [part.shape for part in first[0]] == [(8, 32, 32, 3), (8,), (8,)]
    assert not np.array_equal(first[0][1], second[0][1])  # reshuffled
    assert sorted(np.concatenate([batch[1] for batch in first])) == list(range(20))  # every image once
    same_order = [np.argsort(np.concatenate([batch[1] for batch in epoch])) for epoch in (first, second)]
    first_images = np.concatenate([batch[0] for batch in first])[same_order[0]]
    second_images = np.concatenate([batch[0] for batch in second])[same_order[1]]
    assert not np.allclose(first_images, second_images)  # augmented afresh
    again = batches(make(images, labels, spec, True, 8, seed=3, sample_weights=np.ones(20)))
    assert all(np.allclose(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))  # seeded

    evaluation = make(images, labels, spec, False, 8, seed=3)
    first_images, first_labels = preprocessing.first_batch(evaluation)
    assert isinstance(first_images, np.ndarray) and np.array_equal(first_labels, labels[:8])
    one, two = batches(evaluation), batches(evaluation)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(one, two))
    assert np.array_equal(np.concatenate([batch[1] for batch in one]), labels)  # fixed order
    prepared = preprocessing.prepare_images(images, spec)
    assert np.allclose(np.concatenate([batch[0] for batch in one]), prepared, atol=1e-4)


@pytest.mark.parametrize("make", [preprocessing.make_dataset, preprocessing.make_loader])
def test_make_dataset_rejects_misaligned_or_non_uint8_input(make):
    spec = preprocessing.preprocessing_spec("baseline_cnn", 16)
    with pytest.raises(ValueError, match="uint8"):
        make(np.zeros((4, 16, 16), np.float32), np.zeros(4), spec, False, 2, 0)
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        make(np.zeros((4, 16, 16), np.uint8), np.zeros(3), spec, False, 2, 0)
    with pytest.raises(ValueError, match="spec"):
        make(np.zeros((4, 16, 16), np.uint8), np.zeros(4), {"family": "x"}, False, 2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        make(np.zeros((4, 16, 16), np.uint8), np.zeros(4), spec, False, 0, 0)


def test_the_loader_augments_like_the_training_pipeline_and_feeds_fit():
    images = np.random.default_rng(2).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    spec = preprocessing.preprocessing_spec("baseline_cnn", 32)
    loader = preprocessing.make_loader(images, np.arange(6) % 2, spec, True, 4, seed=5)
    assert len(loader) == 2 and loader[1][0].shape == (2, 32, 32, 3)
    with pytest.raises(IndexError):
        loader[2]
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(loader, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and loader.epoch >= 2  # fit ends each epoch: a new order each time


def test_notebook_helpers_plot_and_summarise(tmp_path):
    manifest = write_manifest(tmp_path, count=4)
    images = preprocessing.load_image_cache(manifest, 32, tmp_path / "cache")
    spec = preprocessing.preprocessing_spec("baseline_cnn", 32)
    figure = preprocessing.plot_augmented_samples(images, spec, seed=0, samples=2, copies=3)
    assert len(figure.axes) == 2 * 4
    summary = preprocessing.preprocessing_summary(manifest, images, 32, tmp_path / "cache")
    json.dumps(summary)
    assert summary["images"] == 4 and summary["cache_megabytes"] == round(4 * 32 * 32 / 2**20, 2)
    assert summary["images_per_split"] == {"val": 4}
    assert summary["padding_fraction_mean"] == pytest.approx(1 - 25 / 32)  # 52x40 -> 32x25 in 32x32
    assert set(summary["specs"]) == {"baseline_cnn", "resnet50", "resnet50_attention", "efficientnetb0"}
