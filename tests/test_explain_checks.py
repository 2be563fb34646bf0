"""Grad-CAM's checks, each tripped by a planted positive and quiet on a clean negative: the map-size rule of the
target layer, the localisation score against its two nulls, and the cascading randomisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from alzlib import config, explain
from fixtures import train_tiny_cnn

SIZE, SIDE = 32, 6


def _planted(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return uint8 noise images with a bright distractor square in every one, and their labels.

    The class is a 6 x 6 patch elsewhere: a checkerboard in class 1, flat grey in class 0. An untrained network
    responds most to the bright distractor; a trained one has to find the checkerboard.
    """
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 60, (count, SIZE, SIZE)).astype(np.uint8)
    labels = np.arange(count) % 2
    checker = (np.indices((SIDE, SIDE)).sum(axis=0) % 2 * 200).astype(np.uint8)
    for index in range(count):
        while True:
            (row, column), (distractor_row, distractor_column) = generator.integers(0, SIZE - 8, (2, 2))
            if abs(row - distractor_row) > 9 or abs(column - distractor_column) > 9:
                break
        images[index, distractor_row:distractor_row + 8, distractor_column:distractor_column + 8] = 255
        images[index, row:row + SIDE, column:column + SIDE] = checker if labels[index] else 100
    return images, labels


@pytest.fixture(scope="module")
def planted_model():
    """A tiny CNN (convolutions nested as a sub-model) trained in seconds to tell the checkerboard from flat grey."""
    images, labels = _planted(600, seed=1)
    model, accuracy = train_tiny_cnn(images, labels, "planted")
    assert accuracy > 0.95
    return model


# ----------------------------------------------------------------------------------------------- target layer


@pytest.mark.parametrize("name", config.MODEL_NAMES)
@pytest.mark.parametrize("image_size", [64, 224])
def test_target_layer_map_is_at_least_7_by_7_for_every_architecture(name, image_size):
    from alzlib.models import build_model

    model, _ = build_model(name, 4, image_size, weights="none")
    path = explain.find_target_layer(model, min_map_size=explain.MIN_MAP_SIZE)
    height, width = explain.map_size(explain.layer_at(model, path))
    assert min(height, width) >= explain.MIN_MAP_SIZE
    if image_size == 224:
        # At full size the last feature layer is already 7 x 7: the usual Grad-CAM layer, unchanged.
        assert path == explain.find_target_layer(model)
    else:
        # At 64 px the last block is 2 x 2 for the backbones: an earlier block is chosen, by shape.
        assert (height, width) == (8, 8)
        images = np.random.default_rng(0).uniform(0, 255, (2, image_size, image_size, 3)).astype(np.float32)
        explainer = explain.GradCam.build(model, min_map_size=explain.MIN_MAP_SIZE)
        assert explainer.map_size == (8, 8) and explainer.target_path == path
        assert explainer.compute(images)["heatmaps"].shape == (2, image_size, image_size)


def test_target_layer_rule_falls_back_to_a_convolution_and_refuses_maps_too_small():
    import keras

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", name="early")(inputs)
    features = keras.layers.MaxPooling2D(8, name="pool")(features)
    features = keras.layers.Conv2D(4, 3, padding="same", name="late")(features)  # 4 x 4
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    plain = keras.Model(inputs, outputs)
    assert explain.find_target_layer(plain) == ["late"]
    assert explain.find_target_layer(plain, min_map_size=7) == ["early"]
    with pytest.raises(ValueError, match="at least 40 x 40"):
        explain.find_target_layer(plain, min_map_size=40)


def test_residual_block_output_is_preferred_to_a_convolution_inside_the_block():
    import keras

    inputs = keras.Input((16, 16, 4))
    branch = keras.layers.Conv2D(4, 3, padding="same", name="branch_conv")(inputs)
    merged = keras.layers.Add(name="block_add")([inputs, branch])
    block = keras.layers.Activation("relu", name="block_out")(merged)
    expanded = keras.layers.Conv2D(8, 1, name="next_expand")(block)  # the next block starts at the same size
    shrunk = keras.layers.Conv2D(8, 3, strides=4, name="next_stride")(expanded)  # 4 x 4
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(shrunk))
    model = keras.Model(inputs, outputs)
    assert explain.find_target_layer(model, min_map_size=7) == ["block_out"]


# ----------------------------------------------------------------------------------------------- localisation


def test_localisation_auroc_is_one_for_the_mask_half_for_a_constant_map_and_zero_inverted():
    brain = np.zeros((10, 10), dtype=bool)
    brain[1:9, 1:9] = True
    region = np.zeros((10, 10), dtype=bool)
    region[2:5, 2:5] = True
    assert explain.localisation_auroc(region.astype(float), region, brain) == pytest.approx(1.0)
    assert explain.localisation_auroc(np.ones((10, 10)), region, brain) == pytest.approx(0.5)
    assert explain.localisation_auroc(1.0 - region, region, brain) == pytest.approx(0.0)
    # Outside the brain nothing counts: a map bright only on the background scores like a constant one.
    assert explain.localisation_auroc((~brain).astype(float), region, brain) == pytest.approx(0.5)
    assert np.isnan(explain.localisation_auroc(np.ones((10, 10)), np.zeros((10, 10), bool), brain))


def _mask_cohort(subjects: int, slices: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Return images (a bright disc of brain), masks (a square, left in class 1 and right in class 0) and rows."""
    generator = np.random.default_rng(seed)
    count = subjects * slices
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.repeat((((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 15 ** 2) * 120).astype(np.uint8)[None], count, 0)
    labels = np.repeat(np.arange(subjects) % 2, slices)
    masks = np.zeros((count, SIZE, SIZE), dtype=np.uint8)
    for index, label in enumerate(labels):
        row = generator.integers(6, 20)
        column = generator.integers(4, 12) if label else generator.integers(14, 22)
        masks[index, row:row + 6, column:column + 6] = 1
    rows = pd.DataFrame({"subject_id": np.repeat([f"S{number}" for number in range(subjects)], slices),
                         "label_index": labels})
    return images, masks, rows


def _summary_of(trained: np.ndarray, random: np.ndarray, prior: np.ndarray, masks, images, rows) -> pd.DataFrame:
    table = pd.concat([rows, explain.localisation_table({"trained": trained, "random": random, "prior": prior},
                                                        masks, images)], axis=1)
    return explain.summarise_localisation(table, ["right", "left"], resamples=500, seed=0).set_index("class")


def test_maps_equal_to_the_mask_beat_both_nulls_and_maps_equal_to_the_prior_do_not():
    images, masks, rows = _mask_cohort(subjects=12, slices=2, seed=0)
    _, training_masks, training_rows = _mask_cohort(subjects=40, slices=2, seed=1)
    priors = explain.class_mask_priors(training_masks, training_rows["label_index"], 2)
    assert priors.shape == (2, SIZE, SIZE) and priors[1][:, :12].sum() > priors[1][:, 20:].sum()
    labels = rows["label_index"].to_numpy()
    noise = np.random.default_rng(2).random(masks.shape)

    planted = _summary_of(masks.astype(float), noise, priors[labels], masks, images, rows)
    assert planted.loc["all", "auroc_trained"] == pytest.approx(1.0)
    assert 0.5 < planted.loc["all", "auroc_prior"] < 1.0  # the prior knows the side, not the place
    for group in ("all", "left", "right"):
        assert planted.loc[group, "verdict_vs_prior"] == "beats"
        assert planted.loc[group, "verdict_vs_random"] == "beats"
        assert planted.loc[group, "difference_vs_prior_low"] > 0

    clean = _summary_of(priors[labels], noise, priors[labels], masks, images, rows)
    for group in ("all", "left", "right"):
        assert clean.loc[group, "verdict_vs_prior"] == "no difference shown"
        assert clean.loc[group, "difference_vs_prior"] == pytest.approx(0.0)
    # The prior itself beats a map of noise: the spatial null is the harder one to beat.
    assert clean.loc["all", "verdict_vs_random"] == "beats"


def test_localisation_verdict_needs_enough_subjects():
    images, masks, rows = _mask_cohort(subjects=6, slices=3, seed=3)
    summary = _summary_of(masks.astype(float), np.zeros(masks.shape), np.zeros(masks.shape), masks, images, rows)
    assert summary.loc["all", "subjects"] == 6 and summary.loc["all", "verdict_vs_prior"] == "beats"
    assert (summary.loc[["left", "right"], "subjects"] == 3).all()
    assert (summary.loc[["left", "right"], "verdict_vs_prior"] == "too few subjects").all()
    with pytest.raises(ValueError, match="lacks the columns"):
        explain.summarise_localisation(rows, ["right", "left"])


def test_subject_bootstrap_moves_slices_of_a_subject_together_and_keeps_every_stratum():
    subjects = ["A", "A", "B", "B", "C", "D"]
    weights = explain.subject_resample_weights(subjects, strata=[0, 0, 0, 0, 1, 1], resamples=200, seed=0)
    assert weights.shape == (200, 6)
    assert np.array_equal(weights[:, 0], weights[:, 1]) and np.array_equal(weights[:, 2], weights[:, 3])
    assert (weights[:, :4].sum(axis=1) == 4).all() and (weights[:, 4:].sum(axis=1) == 2).all()
    interval = explain.bootstrap_mean(np.array([1.0, 1.0, 0.0, 0.0, np.nan, 0.5]), weights)
    assert interval["mean"] == pytest.approx(0.5) and 0 <= interval["low"] <= interval["high"] <= 1


def test_localisation_sample_reads_test_masks_and_training_priors(tmp_path):
    images, masks, rows = _mask_cohort(subjects=8, slices=2, seed=4)
    paths = []
    for index, mask in enumerate(masks):
        paths.append(str(tmp_path / f"mask{index}.png"))
        Image.fromarray(mask).save(paths[-1])
    manifest = rows.assign(path=[f"/data/{index}.jpg" for index in range(len(rows))], mask_path=paths,
                           split=np.where(np.arange(len(rows)) < 8, "train", "test"))
    sample = explain.localisation_sample(manifest, images, num_classes=2, seed=0)
    assert len(sample.rows) == 8 and sample.masks.shape == (8, SIZE, SIZE)
    assert np.array_equal(sample.masks > 0, masks[8:] > 0)
    assert np.allclose(sample.class_priors, explain.class_mask_priors(masks[:8], rows["label_index"][:8], 2))
    assert explain.localisation_sample(manifest.drop(columns="mask_path"), images, 2) is None
    assert explain.localisation_sample(manifest.assign(mask_path=None), images, 2) is None


# ------------------------------------------------------------------------------------------ cascading randomisation


def _edge_maps(model):
    """A map 'explanation' that ignores the model: the input's edge strength (Adebayo et al.'s failure case)."""

    def maps(images, class_indices):
        grey = np.asarray(images, dtype=np.float64)[..., 0]
        return np.hypot(ndimage.sobel(grey, axis=1), ndimage.sobel(grey, axis=2))

    return maps


def test_cascade_fails_a_map_that_ignores_the_weights(planted_model):
    images, labels = _planted(24, seed=4)
    result = explain.cascading_randomisation(planted_model, images[..., None], labels, map_factory=_edge_maps,
                                             draws=1, resamples=200)
    assert result["verdict"] == "fail"
    assert np.allclose(result["table"]["mean_spearman"], 1.0)


def test_cascade_passes_the_gradcam_of_a_trained_model(planted_model):
    images, labels = _planted(24, seed=4)
    present = labels == 1
    result = explain.cascading_randomisation(planted_model, images[present][..., None], labels[present], seed=0,
                                             resamples=500)
    table = result["table"]
    assert result["target_layer"] == ["backbone", "conv_b"] and result["required_step"] == 2
    assert list(table["layer"]) == ["none", "predictions", "backbone/conv_b", "backbone/conv_a"]
    assert table.loc[0, "mean_spearman"] == 1.0 and result["example_maps"].shape == (4, SIZE, SIZE)
    assert result["verdict"] == "pass", table
    assert (table.loc[2:, "high"] < explain.SIMILARITY_THRESHOLD).all()


def test_compiled_gradcam_gives_the_eager_maps(planted_model):
    images, labels = _planted(20, seed=5)  # 20: a full batch of 16 and a partial one through one graph
    eager = explain.GradCam.build(planted_model).compute(images[..., None])
    compiled = explain.GradCam.build(planted_model, compiled=True)
    for class_indices in (None, labels):
        result = compiled.compute(images[..., None], class_indices)
        reference = eager if class_indices is None else explain.GradCam.build(planted_model).compute(
            images[..., None], class_indices)
        assert np.allclose(result["signed_heatmaps"], reference["signed_heatmaps"], atol=1e-5)
        assert np.array_equal(result["class_indices"], reference["class_indices"])


def test_cascade_verdict_and_required_step():
    assert explain.cascade_verdict([1.0, 0.9, 0.4, 0.3], required_step=2, subjects=8) == "pass"
    assert explain.cascade_verdict([1.0, 0.2, 0.6, 0.3], required_step=1, subjects=8) == "fail"
    assert explain.cascade_verdict([1.0, 0.9, 0.4, 0.6], required_step=2, subjects=8) == "fail"  # must stay below
    assert explain.cascade_verdict([1.0, 0.9, np.nan], required_step=2, subjects=8) == "pass"  # no map left
    assert explain.cascade_verdict([1.0, 0.1, 0.1], required_step=1, subjects=4) == "too few subjects"
    with pytest.raises(ValueError, match="outside"):
        explain.cascade_verdict([1.0, 0.1], required_step=2, subjects=8)
    from alzlib.models import build_model

    baseline, _ = build_model("baseline_cnn", 4, 64)
    # The output layer, dense_128 and the target conv4 itself.
    assert explain.required_cascade_step(baseline, ["conv4"]) == 3
    assert [path[0] for path in explain.weighted_layer_paths(baseline)][-3:] == ["conv4", "dense_128", "predictions"]


def test_localisation_table_scores_one_mask_component_on_its_own():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 15 ** 2) * 120).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[8:14, 8:14] = explain.MASK_COMPONENTS["ventricles"]
    mask[18:24, 18:24] = explain.MASK_COMPONENTS["medial_temporal"]
    on_ventricles = (mask == explain.MASK_COMPONENTS["ventricles"]).astype(float)[None]
    on_focal = (mask == explain.MASK_COMPONENTS["medial_temporal"]).astype(float)[None]
    maps = {"ventricles": on_ventricles, "focal": on_focal}
    focal = explain.localisation_table(maps, mask[None], image[None], component="medial_temporal")
    anywhere = explain.localisation_table(maps, mask[None], image[None])
    # A map on the ventricles finds "any" atrophy half the time but never the medial temporal lobe, and vice versa.
    assert focal.loc[0, "auroc_focal"] == pytest.approx(1.0) and focal.loc[0, "auroc_ventricles"] < 0.5
    assert 0.5 < anywhere.loc[0, "auroc_ventricles"] < 1.0 and 0.5 < anywhere.loc[0, "auroc_focal"] < 1.0
    with pytest.raises(ValueError, match="component must be"):
        explain.localisation_table(maps, mask[None], image[None], component="hippocampus")
