"""Grad-CAM: it finds a learned bright square, builds on every architecture, and its two checks behave."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from alzlib import explain
from fixtures import train_tiny_cnn

SIZE, SIDE = 32, 6


def _squares(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return uint8 noise images, half with a bright square at a random place, their labels and square masks."""
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 60, (count, SIZE, SIZE)).astype(np.uint8)
    labels = np.arange(count) % 2
    corners = generator.integers(0, SIZE - SIDE, (count, 2))
    masks = np.zeros_like(images)
    for index in np.flatnonzero(labels):
        row, column = corners[index]
        images[index, row:row + SIDE, column:column + SIDE] = 255
        masks[index, row:row + SIDE, column:column + SIDE] = 1
    return images, labels, masks


@pytest.fixture(scope="module")
def square_model():
    """A tiny CNN, its convolutions nested as a sub-model, trained in seconds to detect the bright square."""
    images, labels, _ = _squares(600, seed=1)
    model, accuracy = train_tiny_cnn(images, labels, "square")
    assert accuracy > 0.95
    return model


def test_target_layer_is_found_inside_the_nested_model(square_model):
    assert explain.find_target_layer(square_model) == ["backbone", "conv_b"]
    assert explain.find_target_layer(square_model, "conv_a") == ["backbone", "conv_a"]
    with pytest.raises(ValueError, match="no layer named 'conv_z'"):
        explain.find_target_layer(square_model, "conv_z")


def test_gradcam_peaks_on_the_bright_square(square_model):
    images, labels, masks = _squares(40, seed=2)
    present = labels == 1
    result = explain.GradCam.build(square_model).compute(images[present][..., None], np.ones(present.sum(), int))
    assert result["heatmaps"].shape == (present.sum(), SIZE, SIZE)
    assert result["heatmaps"].min() >= 0 and np.allclose(result["heatmaps"].max(axis=(1, 2)), 1.0)
    peaks = [np.unravel_index(heatmap.argmax(), heatmap.shape) for heatmap in result["heatmaps"]]
    # One pixel of tolerance: the map is computed at half resolution and upsampled.
    hits = [ndimage.binary_dilation(mask, iterations=1)[peak] for mask, peak in zip(masks[present], peaks)]
    assert np.mean(hits) >= 0.9
    scores = explain.localisation_scores(result["heatmaps"], masks[present], images[present])
    assert scores["ventricles"].mean() > 3 and scores["cortex"].isna().all()


def test_gradcam_at_an_inner_layer_of_the_nested_model(square_model):
    images, _, _ = _squares(4, seed=3)
    explainer = explain.GradCam.build(square_model, "conv_a")
    result = explainer.compute(images[..., None])
    assert explainer.target_path == ["backbone", "conv_a"] and explainer.score_kind == "logit"
    assert result["heatmaps"].shape == (4, SIZE, SIZE) and np.isfinite(result["heatmaps"]).all()
    assert np.array_equal(result["class_indices"], square_model.predict(images[..., None], verbose=0).argmax(axis=1))
    with pytest.raises(ValueError, match="N x H x W x C"):
        explainer.compute(images)


@pytest.mark.parametrize("name", ["baseline_cnn", "resnet50", "resnet50_attention", "efficientnetb0"])
def test_gradcam_builds_on_each_architecture(name, tmp_path):
    from alzlib.models import build_model
    from alzlib.preprocessing import preprocessing_spec

    model, info = build_model(name, 4, 32, weights="none")
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    explainer = explain.GradCam.build(model)
    result = explainer.compute(images)
    assert result["heatmaps"].shape == (2, 32, 32)
    assert np.isfinite(result["heatmaps"]).all() and result["heatmaps"].max() <= 1.0
    assert explainer.score_kind == "logit"
    # The automatic target agrees with the layer the model builder names for Grad-CAM.
    assert explainer.target_path[0] == info["gradcam_layer"]
    if name == "resnet50":
        inner = explain.GradCam.build(model, "conv4_block6_out")
        assert inner.target_path == ["resnet50", "conv4_block6_out"]
        assert inner.compute(images)["heatmaps"].shape == (2, 32, 32)
    if name == "resnet50_attention":
        maps = explain.attention_maps(model, images)
        assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
        # The whole stage on uint8 images through the model's preprocessing spec adds the attention panel.
        examples = pd.DataFrame({"path": ["/data/0.jpg", "/data/1.jpg"], "subject_id": ["S1", "S2"],
                                 "label_index": [0, 3]})
        uint8_images = np.random.default_rng(1).integers(0, 255, (2, 32, 32), dtype=np.uint8)
        record = explain.explain_model(model, uint8_images, examples, ["A", "B", "C", "D"],
                                       preprocessing_spec(name, 32), tmp_path, name, "synthetic cohort", seed=0)
        # At 32 px the attention layer's map is 1 x 1: the stage explains an earlier backbone block instead.
        assert record["target_layer"] == ["resnet50", "conv2_block3_out"] and "attention.png" in record["figures"]
        assert (record["map_height"], record["map_width"]) == (8, 8)
        assert (tmp_path / "attention.png").stat().st_size > 1000 and "skipped" in record["localisation"]
        assert "skipped" in record["cascading_randomisation"]


def test_randomisation_check_returns_rank_correlations(square_model):
    images, labels, _ = _squares(8, seed=4)
    check = explain.randomisation_check(square_model, images[..., None], labels, seed=3)
    correlations = check["spearman_per_image"]
    assert correlations.shape == (8,)
    defined = correlations[np.isfinite(correlations)]
    assert len(defined) + check["undefined"] == 8 and np.all((defined >= -1) & (defined <= 1))
    if check["mean_spearman"] is not None:
        assert -1 <= check["mean_spearman"] <= 1
    # A signed map (before the ReLU) is constant only where its ReLU map is too, so it is undefined less often.
    signed = check["signed_spearman_per_image"]
    assert check["signed_undefined"] <= check["undefined"]
    assert np.all((signed[np.isfinite(signed)] >= -1) & (signed[np.isfinite(signed)] <= 1))
    assert np.isfinite(signed[np.isfinite(correlations)]).all()
    trained = explain.GradCam.build(square_model).compute(images[..., None], labels)
    reused = explain.randomisation_check(square_model, images[..., None], seed=3, trained=trained)
    assert np.allclose(reused["signed_spearman_per_image"], signed, equal_nan=True)
    copy = explain.reinitialised_copy(square_model, seed=3)
    assert not np.allclose(copy.get_layer("predictions").kernel.numpy(),
                           square_model.get_layer("predictions").kernel.numpy())


def test_rank_correlation_is_one_for_the_same_map_and_undefined_for_a_constant_one():
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert np.allclose(explain.rank_correlations(maps, maps), 1.0)
    assert np.isnan(explain.rank_correlations(maps[:1], np.zeros((1, 8, 8)))[0])
    with pytest.raises(ValueError, match="differ in shape"):
        explain.rank_correlations(maps, maps[:1])


def test_localisation_score_above_one_in_the_mask_and_one_for_a_uniform_map():
    image = np.zeros((20, 20), dtype=np.uint8)
    image[2:18, 2:18] = 120  # the brain: 16 x 16 pixels
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[4:8, 4:8] = 1  # ventricles: 16 pixels, 1/16 of the brain
    mask[10:12, 10:16] |= 2
    brain = explain.brain_mask(image)
    concentrated = np.zeros((20, 20))
    concentrated[5:7, 5:7] = 1.0
    regions = explain.component_regions(mask)
    assert explain.localisation_score(concentrated, regions["ventricles"], brain) == pytest.approx(16.0)
    assert explain.localisation_score(np.ones((20, 20)), regions["ventricles"], brain) == pytest.approx(1.0)
    assert explain.localisation_score(np.ones((20, 20)), regions["any"], brain) == pytest.approx(1.0)
    assert np.isnan(explain.localisation_score(concentrated, regions["medial_temporal"], brain))
    table = explain.localisation_scores(np.ones((1, 20, 20)), mask[None], image[None])
    assert list(table.columns) == ["any", "ventricles", "cortex", "medial_temporal"]
    assert table.loc[0, "cortex"] == pytest.approx(1.0) and np.isnan(table.loc[0, "medial_temporal"])


def test_masks_follow_the_letterbox_geometry_with_nearest_neighbour(tmp_path):
    from alzlib.preprocessing import letterbox

    mask = np.zeros((208, 176), dtype=np.uint8)
    mask[40:100, 30:90] = 1
    mask[120:160, 100:150] = 6  # cortex and medial temporal flags together
    Image.fromarray(mask).save(tmp_path / "mask.png")
    loaded = explain.load_masks([str(tmp_path / "mask.png")], 64)
    assert loaded.shape == (1, 64, 64) and set(np.unique(loaded)) == {0, 1, 6}
    image = np.where(mask > 0, 200, 0).astype(np.uint8)
    boxed_image = letterbox(image, 64, interpolation="nearest")
    assert np.array_equal(loaded[0] > 0, boxed_image > 0)
    assert (loaded[0][:, :5] == 0).all()  # the letterbox padding columns
    with pytest.raises(FileNotFoundError, match="missing.png"):
        explain.load_masks([str(tmp_path / "missing.png")], 64)


def test_explain_model_writes_results_and_summary(square_model, tmp_path):
    images, labels, masks = _squares(12, seed=5)
    predictions = pd.DataFrame({"path": [f"/data/{index}.jpg" for index in range(12)],
                                "subject_id": [f"SYN{index:04d}" for index in range(12)], "split": "test",
                                "label_index": labels, "pred_index": labels})
    predictions.loc[0, "pred_index"] = 1  # one wrong prediction to show
    examples = explain.select_examples(predictions, per_class=3, seed=0)
    assert len(examples) == 7 and (examples["outcome"] == "wrong").sum() == 1
    assert examples.equals(explain.select_examples(predictions, per_class=3, seed=0))
    chosen = examples["path"].map({path: index for index, path in enumerate(predictions["path"])}).to_numpy()
    # Localisation: 12 test images (their masks from files) and 24 training images for the class priors.
    train_images, train_labels, train_masks = _squares(24, seed=6)
    (tmp_path / "masks").mkdir()
    mask_paths = []
    for index, mask in enumerate(np.concatenate([masks, train_masks])):
        mask_paths.append(str(tmp_path / "masks" / f"SYN{index:04d}_slice00.png"))
        Image.fromarray(mask).save(mask_paths[-1])
    manifest = pd.DataFrame({"path": [f"/data/{index}.jpg" for index in range(36)],
                             "subject_id": [f"SYN{index:04d}" for index in range(36)],
                             "label_index": np.concatenate([labels, train_labels]), "mask_path": mask_paths,
                             "split": ["test"] * 12 + ["train"] * 24})
    sample = explain.localisation_sample(manifest, np.concatenate([images, train_images]), 2, seed=0)
    record = explain.explain_model(square_model, images[chosen], examples, ["empty", "square"], None,
                                   tmp_path / "gradcam" / "square", "square", "synthetic cohort", seed=0,
                                   localisation=sample, cascade=True)
    folder = tmp_path / "gradcam" / "square"
    assert json.loads((folder / "gradcam.json").read_text()) == record
    assert record["target_layer"] == ["backbone", "conv_b"] and (record["map_height"], record["map_width"]) == (16, 16)
    for name in ("overlays.png", "randomisation.png", "cascading_randomisation.png"):
        assert name in record["figures"] and (folder / name).stat().st_size > 1000
    # Localisation: the square class's true-class maps point at the square; images without atrophy are undefined.
    per_class = {entry["class"]: entry for entry in record["localisation"]["per_class"]}
    assert per_class["square"]["images"] == 6 and per_class["square"]["auroc_trained"] > 0.9
    assert per_class["empty"]["images"] == 0 and per_class["square"]["verdict_vs_prior"] == "beats"
    assert record["localisation"]["explained_class"] == "true"
    energy = {entry["component"]: entry for entry in record["localisation"]["energy_ratio"] if entry["class"] == "all"}
    assert energy["ventricles"]["mean"] > 2 and energy["ventricles"]["images"] == 6
    assert len(pd.read_csv(folder / "localisation_per_image.csv")) == 12
    per_image = pd.read_csv(folder / "per_image.csv")
    assert len(per_image) == 7
    # An all-zero map (no evidence for 'empty' anywhere) has no ranks: undefined, and counted as such.
    defined = per_image["randomisation_spearman"].dropna()
    assert defined.between(-1, 1).all() and len(defined) >= 1
    assert record["randomisation"]["undefined"] == 7 - len(defined)
    assert record["randomisation"]["signed_undefined"] <= record["randomisation"]["undefined"]
    cascade = record["cascading_randomisation"]
    assert cascade["required_layer"] == "backbone/conv_b" and cascade["verdict"] in ("pass", "fail")
    steps = pd.read_csv(folder / "cascading_randomisation.csv")
    assert list(steps["layer"]) == ["none", "predictions", "backbone/conv_b", "backbone/conv_a"]

    summary = explain.summarise_explanations(tmp_path / "gradcam", ["square", "resnet50"])
    assert summary.loc[0, "model"] == "square" and summary.loc[0, "map_height"] == 16
    assert summary.loc[0, "localisation_auroc_trained"] > 0.9
    assert summary.loc[0, "cascade_verdict"] == cascade["verdict"]
    assert "randomisation_mean_signed_spearman" in summary.columns
    written = json.loads((tmp_path / "gradcam" / "summary.json").read_text())
    assert written["missing"][0]["model"] == "resnet50" and set(written["rules"]) == {
        "target_layer", "cascading_randomisation", "localisation"}
    combined = pd.read_csv(tmp_path / "gradcam" / "localisation.csv")
    assert set(combined["class"]) == {"all", "empty", "square"} and (combined["model"] == "square").all()
    cascades = pd.read_csv(tmp_path / "gradcam" / "cascading_randomisation.csv")
    assert list(cascades.columns[:4]) == ["model", "step", "layer", "layers_randomised"] and len(cascades) == 4
    with pytest.raises(ValueError, match="align"):
        explain.explain_model(square_model, images[:2], examples, ["empty", "square"], None, folder, "square", "")

