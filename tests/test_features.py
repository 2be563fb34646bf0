"""Tests of the feature maps: sampling, t-SNE/UMAP settings, the embedding source and the neighbour statistic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alzlib import features
from fixtures import save_image

CLASSES = ("NonDemented", "MildDemented", "ModerateDemented")
OFFLINE_ERROR = ("URL fetch failure on https://storage.googleapis.com/keras-applications/x_notop.h5: None -- "
                 "<urlopen error [Errno -3] Temporary failure in name resolution>")


def subject_slices(subject: int, slices: int, size: int = 72) -> list[np.ndarray]:
    """Return consecutive slices of one fake head: its own shape and texture, changing a little per slice."""
    rng = np.random.default_rng(subject)
    axes, phase, texture = rng.uniform(0.55, 0.9, 2), rng.uniform(0, 6, 2), rng.normal(0, 12, (size, size))
    rows, cols = np.mgrid[0:size, 0:size] / size * 2 - 1
    images = []
    for slice_index in range(slices):
        scale = 1 - 0.03 * slice_index
        brain = (cols / (axes[0] * scale)) ** 2 + (rows / (axes[1] * scale)) ** 2 < 1
        image = np.where(brain, 120 + 40 * np.sin(7 * cols + phase[0]) * np.cos(5 * rows + phase[1]) + texture, 0)
        images.append(np.clip(image + rng.normal(0, 2, (size, size)), 0, 255).astype(np.uint8))
    return images


def make_manifest(root: Path, subjects_per_class: tuple[int, ...] = (6, 5, 5), slices: int = 3) -> pd.DataFrame:
    """Write a tiny cohort of JPEG slices; return its manifest (two test subjects per class, the rest train)."""
    rows, subject = [], 0
    for label_index, (label, count) in enumerate(zip(CLASSES, subjects_per_class)):
        for number in range(count):
            subject += 1
            for slice_index, pixels in enumerate(subject_slices(subject, slices)):
                path = save_image(root / label / f"SYN{subject:04d}_slice{slice_index:02d}.jpg", pixels)
                rows.append({"path": str(path), "label": label, "label_index": label_index,
                             "subject_id": f"SYN{subject:04d}", "split": "test" if number < 2 else "train",
                             "slice_index": slice_index})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run BLAS/OpenMP on one thread: on a small shared machine extra threads only wait for each other."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pd.DataFrame:
    return make_manifest(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def offline_run(manifest, tmp_path_factory) -> tuple[dict, Path]:
    """run_features with ImageNet downloads failing as they do offline (never downloads)."""
    import keras
    from keras.src.utils import file_utils

    def refuse_download(*args, **kwargs):
        raise Exception(OFFLINE_ERROR)

    out_dir = tmp_path_factory.mktemp("features")
    with pytest.MonkeyPatch.context() as patch:
        # Both names of Keras' downloader: the test must never download, online or not.
        patch.setattr(keras.utils, "get_file", refuse_download)
        patch.setattr(file_utils, "get_file", refuse_download)
        record = features.run_features(manifest, out_dir, "synthetic cohort", seed=3, max_points=40,
                                       weights=None, cnn_image_size=32)
    return record, out_dir


# ----------------------------------------------------------------------------------------------- sampling, settings


def test_stratified_sample_is_bounded_seeded_and_keeps_every_class(manifest):
    sample = features.stratified_sample(manifest, 12, seed=1)
    assert 10 <= len(sample) <= 13 and set(sample["label"]) == set(CLASSES)
    assert sample.index.equals(features.stratified_sample(manifest, 12, seed=1).index)
    assert not sample.index.equals(features.stratified_sample(manifest, 12, seed=2).index)
    assert sample.index.is_monotonic_increasing
    assert len(features.stratified_sample(manifest, 500, seed=1)) == len(manifest)
    with pytest.raises(ValueError, match="max_points"):
        features.stratified_sample(manifest, 3, seed=1)


def test_small_point_counts_get_a_valid_perplexity_and_neighbour_count():
    for points in (10, 12, 50, 5000):
        assert features.tsne_parameters(points)["perplexity"] < (points - 1) / 3 + 1e-9
        assert features.umap_parameters(points)["n_neighbors"] < points
    assert features.tsne_parameters(5000)["perplexity"] == 30.0
    with pytest.raises(ValueError, match="at least 10"):
        features.tsne_parameters(9)
    with pytest.raises(ValueError, match="at least 10 images"):
        features.run_features(pd.DataFrame({"path": ["a"], "label": ["x"], "subject_id": ["s"], "split": ["train"]}),
                              "unused", "synthetic cohort", 0, 40)


def test_maps_are_deterministic_for_a_seed():
    points = np.random.default_rng(0).normal(size=(12, 6))
    for mapper in (features.tsne_map, features.umap_map):
        first, again = mapper(points, 5), mapper(points, 5)
        assert first.shape == (12, 2)
        np.testing.assert_array_equal(first, again)
    # t-SNE starts from PCA (no randomness left); UMAP's layout depends on its seed.
    assert not np.allclose(features.umap_map(points, 5), features.umap_map(points, 6))


# ----------------------------------------------------------------------------------------------- embeddings


def test_patch_features_have_fixed_size_and_repeat_for_a_seed(manifest):
    images = features.load_images(manifest.iloc[:6], features.PIXEL_SIZE)
    fit_rows = np.array([True, True, True, False, False, False])
    first = features.patch_features(images, fit_rows, seed=0)
    assert first.shape == (6, 4 * features.PATCH_CENTROIDS) and np.all(first >= 0) and first.std() > 0
    np.testing.assert_array_equal(first, features.patch_features(images, fit_rows, seed=0))


def test_weights_none_takes_the_fallback_without_trying_a_download():
    extractor, spec, source = features.load_embedding_model("none", 64)
    assert extractor is None and spec is None and source["attempts"] == []
    assert "WEIGHTS='none'" in source["reason"]


def test_missing_or_foreign_weights_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        features.load_embedding_model(tmp_path / "nothing.h5", 64)
    foreign = tmp_path / "other.h5"
    foreign.write_bytes(b"not keras weights")
    with pytest.raises(ValueError, match="other.h5"):
        features.load_embedding_model(foreign, 64)
    lonely = tmp_path / "lonely.keras"
    lonely.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lonely.json"):
        features.load_embedding_model(lonely, 64)


def test_a_trained_model_file_gives_its_pooled_embedding(manifest, tmp_path):
    from alzlib import models, preprocessing, storage

    model, _ = models.build_model("baseline_cnn", 3, 32)
    model.save(tmp_path / "baseline_cnn.keras")
    storage.write_json(tmp_path / "baseline_cnn.json",
                  {"name": "baseline_cnn", "preprocessing": preprocessing.preprocessing_spec("baseline_cnn", 32)})
    extractor, spec, source = features.load_embedding_model(tmp_path / "baseline_cnn.keras", 96)
    assert source["kind"] == "trained_model" and "global_pool" in source["model"] and spec["image_size"] == 32
    embedding = features.model_embeddings(extractor, spec, manifest.iloc[:5])
    assert embedding.shape == (5, 256) and np.isfinite(embedding).all()


# ----------------------------------------------------------------------------------------------- neighbours


def test_neighbour_statistics_separate_subject_from_class():
    # Two subjects per class; each subject a tight cluster, the classes far apart.
    centres = np.array([[0, 0], [0, 3], [30, 0], [30, 3]], float)
    points = np.repeat(centres, 3, axis=0) + np.random.default_rng(0).normal(0, 0.1, (12, 2))
    subjects = np.repeat(["a", "b", "c", "d"], 3)
    labels = np.repeat(["X", "X", "Y", "Y"], 3)
    statistics = features.neighbour_statistics(points, subjects, labels, neighbours=2)
    assert statistics["same_subject_share"] == 1.0 and statistics["same_subject_chance"] == pytest.approx(2 / 11,
                                                                                                         abs=1e-4)
    assert statistics["same_class_chance"] == pytest.approx(5 / 11, abs=1e-4)
    assert statistics["nearest_neighbour_balanced_accuracy"] == 1.0
    assert statistics["nearest_other_subject_balanced_accuracy"] == 1.0  # the other subject of the class is next
    assert statistics["silhouette_by_subject"] > 0.5 and statistics["silhouette_by_class"] > 0.5
    # Classes that differ only through their subjects: excluding the subject leaves chance.
    mixed = features.neighbour_statistics(points, subjects, np.repeat(["X", "Y", "X", "Y"], 3), neighbours=2)
    assert mixed["nearest_neighbour_balanced_accuracy"] == 1.0 and mixed["nearest_other_subject_balanced_accuracy"] == 0
    with pytest.raises(ValueError, match="at least 2 points"):
        features.neighbour_statistics(points[:1], subjects[:1], labels[:1])


# ----------------------------------------------------------------------------------------------- run


def test_offline_run_records_the_fallback_and_why(offline_run):
    record, out_dir = offline_run
    source = record["embedding_source"]
    assert source["kind"] == "fallback" and source["feature_space"] == "patch_kmeans"
    assert [attempt["backbone"] for attempt in source["attempts"]] == ["EfficientNetB0", "ResNet50"]
    assert all("URL fetch failure" in attempt["error"] for attempt in source["attempts"])
    assert "No CNN embedding was used" in source["statement"] and source["dictionary_fitted_on"] == "train split"
    on_disk = json.loads((out_dir / "summary.json").read_text())
    assert on_disk["embedding_source"] == source and on_disk["statements"][0] == source["statement"]


def test_offline_run_writes_embeddings_with_the_right_shape_and_columns(offline_run, manifest):
    record, out_dir = offline_run
    embeddings = pd.read_parquet(out_dir / "embeddings.parquet")
    assert {"path", "subject_id", "label", "split", "method", "x", "y"} <= set(embeddings.columns)
    assert record["points"] == 40 and len(embeddings) == 40 * 2 * 2
    assert set(embeddings["method"]) == {"tsne", "umap"} and set(embeddings["features"]) == {"pixels", "patch_kmeans"}
    assert embeddings.groupby(["features", "method"]).size().eq(40).all()
    assert np.isfinite(embeddings[["x", "y"]].to_numpy()).all() and embeddings["path"].isin(manifest["path"]).all()
    assert record["methods"]["tsne"]["perplexity"] == 13.0 and record["methods"]["umap"]["n_neighbors"] == 15
    assert set(record["files"]) == {"map_pixels.png", "map_patch_kmeans.png", "embeddings.parquet",
                                    "neighbour_statistics.csv", "summary.json"}
    assert all((out_dir / name).is_file() for name in record["files"])


def test_slices_of_one_subject_are_each_others_neighbours(offline_run):
    record, _ = offline_run
    pixels = record["neighbour_statistics"]["pixels"]
    # Each fake subject has its own head shape: its slices find each other far above chance.
    assert pixels["nearest_is_same_subject"] > 0.8
    assert pixels["same_subject_share"] > 0.7 * pixels["same_subject_ceiling"] > 2 * pixels["same_subject_chance"]
    assert any("same subject" in sentence for sentence in record["statements"])
