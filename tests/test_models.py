"""Tests of alzlib.models: the four architectures, freezing, the ImageNet fallback, saving and the attention layer."""

import keras
import numpy as np
import pytest

from alzlib import models, training

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def built():
    """Each model built once at 32 px with random weights (no download attempted)."""
    return {name: models.build_model(name, 3, IMAGE_SIZE, weights="none") for name in models.config.MODEL_NAMES}


def outputs(model, images: np.ndarray) -> np.ndarray:
    """Return a model's inference outputs from an eager call (no predict-function tracing: fast on CPU)."""
    return keras.ops.convert_to_numpy(model(images, training=False))


def test_every_model_saves_reloads_in_safe_mode_and_predicts_identically(built, tmp_path):
    images = np.random.default_rng(0).uniform(0, 255, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    for name, (model, info) in built.items():
        before = outputs(model, images)
        assert before.shape == (3, 3) and np.allclose(before.sum(axis=1), 1, atol=1e-5)
        assert model.layers[-1].dtype_policy.compute_dtype == "float32"
        path = tmp_path / f"{name}.keras"
        model.save(path)
        reloaded = training.load_trained_model(path)
        assert np.array_equal(outputs(reloaded, images), before), name
        assert info["trainable_parameters"] + info["non_trainable_parameters"] == model.count_params()
    attention = training.load_trained_model(tmp_path / "resnet50_attention.keras").get_layer("spatial_attention")
    assert isinstance(attention, models.SpatialAttention) and attention.kernel_size == 7


def test_architectures_follow_the_recipes(built):
    baseline, _ = built["baseline_cnn"]
    filters = [layer.filters for layer in baseline.layers if isinstance(layer, keras.layers.Conv2D)]
    assert filters == [32, 64, 128, 256]
    assert [layer.rate for layer in baseline.layers if isinstance(layer, keras.layers.Dropout)] == [0.25] * 3 + [0.5]
    for name in ("resnet50", "resnet50_attention", "efficientnetb0"):
        model, info = built[name]
        assert isinstance(model.get_layer(info["backbone"]), keras.Model)  # nested sub-model
        head = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        assert head == [256, 128, 3]
        assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.3, 0.4, 0.5]
        # Random weights: nothing frozen, and the info says why.
        assert info["frozen_layers"] == 0 and info["trainable_layers"] == info["backbone_layers"]
        assert info["weights"].startswith("random")
    assert built["resnet50_attention"][1]["gradcam_layer"] == "spatial_attention"


def test_freezing_counts_match_the_recipe_on_random_backbones(built):
    for name, frozen in (("resnet50", 120), ("efficientnetb0", 207)):
        model, info = built[name]
        backbone = model.get_layer(info["backbone"])
        counts = models.freeze_layers(backbone, models.FROZEN_LAYERS[name])
        assert counts["frozen_layers"] == frozen
        assert sum(not layer.trainable for layer in backbone.layers) == frozen
        assert all(not layer.trainable for layer in backbone.layers[:frozen])
        assert all(layer.trainable for layer in backbone.layers[frozen:])
        assert models.parameter_counts(model)["trainable_parameters"] < info["trainable_parameters"]
        models.freeze_layers(backbone, 0)  # leave the shared fixture as built
    with pytest.raises(ValueError, match="Cannot freeze 999"):
        models.freeze_layers(built["resnet50"][0].get_layer("resnet50"), 999)


def test_random_backbones_start_every_residual_branch_at_zero(built):
    for name, branches in (("resnet50", 16), ("resnet50_attention", 16), ("efficientnetb0", 9)):
        model, info = built[name]
        backbone = model.get_layer(info["backbone"])
        norms = models.residual_batch_norms(backbone)
        # One zeroed branch per residual addition, never a BN whose output has no identity path beside it.
        assert info["zero_initialised_residual_bn"] == len(norms) == branches
        assert len(norms) == sum(isinstance(layer, keras.layers.Add) for layer in backbone.layers)
        assert all(not np.any(layer.gamma.numpy()) for layer in norms)
        assert all(np.all(layer.gamma.numpy() == 1) for layer in backbone.layers
                   if isinstance(layer, keras.layers.BatchNormalization) and layer not in norms)
    assert built["baseline_cnn"][1].get("zero_initialised_residual_bn") is None


def test_unavailable_imagenet_weights_fall_back_to_random_with_all_layers_trainable(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- simulated offline")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.warns(RuntimeWarning, match="could not be loaded.*WEIGHTS.*ALL layers trainable"):
        model, info = models.build_model("efficientnetb0", 2, IMAGE_SIZE, weights="imagenet")
    assert info["weights"].startswith("random (ImageNet weights unavailable: Exception: URL fetch failure")
    assert info["pretrained"] is False and info["frozen_layers"] == 0
    assert all(layer.trainable for layer in model.get_layer("efficientnetb0").layers)
    assert info["non_trainable_parameters"] == models.parameter_counts(model)["non_trainable_parameters"]


def test_a_weights_file_that_is_not_keras_imagenet_file_is_refused(tmp_path):
    wrong = tmp_path / "resnet50_notop.h5"
    wrong.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="is not Keras' ImageNet file"):
        models.build_model("resnet50", 4, IMAGE_SIZE, weights=str(wrong))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.build_model("resnet50", 4, IMAGE_SIZE, weights=str(tmp_path / "missing.h5"))


def test_attention_map_is_a_sigmoid_map_that_weights_the_features(built):
    model, _ = built["resnet50_attention"]
    images = np.random.default_rng(1).uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    attention = outputs(models.attention_map_model(model), images)
    backbone_output = model.get_layer("resnet50").output.shape
    assert attention.shape == (2, backbone_output[1], backbone_output[2], 1)
    assert ((attention > 0) & (attention < 1)).all()
    layer = model.get_layer("spatial_attention")
    features = np.random.default_rng(2).normal(size=(1, 4, 4, 8)).astype(np.float32)
    weighted = keras.ops.convert_to_numpy(layer(features))
    assert np.allclose(weighted, features * keras.ops.convert_to_numpy(layer.attention_map(features)), atol=1e-6)
    with pytest.raises(ValueError, match="no SpatialAttention"):
        models.attention_map_model(built["baseline_cnn"][0])


def test_bad_arguments_raise_value_errors_naming_the_valid_choices():
    with pytest.raises(ValueError, match="baseline_cnn, resnet50, resnet50_attention, efficientnetb0"):
        models.build_model("vgg16", 4, 64)
    with pytest.raises(ValueError, match="num_classes"):
        models.build_model("baseline_cnn", 1, 64)
    with pytest.raises(ValueError, match="at least 32"):
        models.build_model("baseline_cnn", 4, 16)


def test_output_stays_float32_under_mixed_precision():
    images = np.random.default_rng(3).uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    try:
        training.configure_precision("mixed_float16")
        model, info = models.build_model("baseline_cnn", 4, IMAGE_SIZE)
        attention = models.SpatialAttention()
        weighted = attention(keras.ops.cast(np.ones((1, 4, 4, 8)), "float16"))
    finally:
        training.configure_precision("float32")
    assert info["dtype_policy"] == "mixed_float16"
    assert model.get_layer("conv1").compute_dtype == "float16"
    assert keras.ops.convert_to_numpy(model(images, training=False)).dtype == np.float32
    assert keras.backend.standardize_dtype(weighted.dtype) == "float16" and tuple(weighted.shape) == (1, 4, 4, 8)
