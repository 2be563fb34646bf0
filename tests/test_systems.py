"""Tests of alzlib.systems: the extra published systems build, train a step, save, reload and predict identically."""

import keras
import numpy as np
import pytest

from alzlib import augmentation, averaging, systems

IMAGE_SIZE = 32


def tiny_data(count: int = 4, num_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return `count` random float RGB 0-255 images and one-hot labels cycling through the classes."""
    images = np.random.default_rng(seed).uniform(0, 255, (count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    return images, np.eye(num_classes, dtype=np.float32)[np.arange(count) % num_classes]


def outputs(model, images: np.ndarray) -> np.ndarray:
    """Return a model's inference outputs from an eager call."""
    return keras.ops.convert_to_numpy(model(images, training=False))


@pytest.mark.parametrize("name", systems.EXTRA_MODEL_NAMES)
def test_every_system_trains_a_step_saves_reloads_in_safe_mode_and_predicts_identically(name, tmp_path):
    model, info = systems.build_system(name, 2, IMAGE_SIZE, "none")
    recipe = systems.system_recipe(name, epochs=1, batch_size=4)
    systems.compile_system(model, recipe)
    images, labels = tiny_data()
    before = [weight.copy() for weight in model.get_weights()]
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(old, new) for old, new in zip(before, model.get_weights())), name
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    predicted = outputs(model, images)
    assert predicted.shape == (4, 2) and np.allclose(predicted.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(outputs(reloaded, images), predicted), name
    assert info["trainable_parameters"] + info["non_trainable_parameters"] == model.count_params()


def test_architectures_follow_the_issue():
    alexnet, info = systems.build_system("alexnet", 4, 64)
    kernels = [layer.kernel_size[0] for layer in alexnet.layers if isinstance(layer, keras.layers.Conv2D)]
    assert kernels == [11, 5, 3, 3, 3] and info["dense_width"] == 1024
    assert systems.alexnet_dense_width(224) == 4096
    assert [layer.rate for layer in alexnet.layers if isinstance(layer, keras.layers.Dropout)] == [0.5, 0.5]
    convnext, _ = systems.build_system("convnext_scratch", 4, 64)
    blocks = [layer for layer in convnext.layers if isinstance(layer, systems.DropPath)]
    assert len(blocks) == sum(systems.CONVNEXT_DEPTHS) and blocks[-1].rate == pytest.approx(0.1)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in convnext.layers)
    vit, vit_info = systems.build_system("vit", 4, 64)
    assert vit_info["patch_size"] == 8 and vit.get_layer("class_token_position").output.shape == (None, 65, 128)


def test_frozen_resnet50_trains_only_its_head_with_imagenet_weights(monkeypatch):
    # No ImageNet file offline: a random backbone stands in, marked as pretrained, so only the freezing is tested.
    real = systems.models.load_backbone

    def pretend_pretrained(name, image_size, weights):
        return real(name, image_size, None)[0], "imagenet (test stand-in)", True

    monkeypatch.setattr(systems.models, "load_backbone", pretend_pretrained)
    _, info = systems.build_system("resnet50_frozen", 4, IMAGE_SIZE, "imagenet")
    assert info["trainable_parameters"] == 2048 * 512 + 512 + 512 * 4 + 4  # ~1.05 M: the head only
    assert info["backbone_frozen"]


def test_recipes_cite_their_system_and_say_how_this_project_differs():
    for name in systems.EXTRA_MODEL_NAMES:
        recipe = systems.system_recipe(name, epochs=10, batch_size=32)
        assert recipe["citation"] and any("subject-level" in line for line in recipe["differences"]), name
    alexnet = systems.system_recipe("alexnet", epochs=10, batch_size=256)
    assert alexnet["batch_size"] == 128 and alexnet["optimizer"]["momentum"] == 0.9
    convnext = systems.system_recipe("convnext_scratch", epochs=3)
    assert convnext["learning_rate_schedule"]["warmup_epochs"] == 2 and convnext["weight_averaging"]["start_epoch"] == 2
    assert systems.system_recipe("convnext_scratch", epochs=10)["weight_averaging"]["start_epoch"] == 8
    found = {"best": {"learning_rate": 5e-5, "gradient_accumulation_steps": 4, "weight_decay": 0.1}, "score": 0.6}
    vit = systems.system_recipe("vit", epochs=2, search=found)
    assert vit["optimizer"]["gradient_accumulation_steps"] == 4 and vit["hyperparameter_search"] == found
    assert systems.make_optimizer(vit["optimizer"]).gradient_accumulation_steps == 4


def test_bad_system_arguments_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="'lenet'.*alexnet"):
        systems.build_system("lenet", 2, 32)
    with pytest.raises(ValueError, match="got 1"):
        systems.build_system("alexnet", 1, 32)
    with pytest.raises(ValueError, match="divisible by 8, got 36"):
        systems.build_system("vit", 2, 36)
    with pytest.raises(ValueError, match="got 0"):
        systems.system_recipe("vit", epochs=0)
    with pytest.raises(ValueError, match="got 1.0"):
        systems.DropPath(1.0)


def test_drop_path_drops_whole_samples_in_training_only():
    layer = systems.DropPath(0.5, seed=1)
    ones = np.ones((64, 2, 2, 3), dtype=np.float32)
    assert np.array_equal(keras.ops.convert_to_numpy(layer(ones, training=False)), ones)
    dropped = keras.ops.convert_to_numpy(layer(ones, training=True))
    per_sample = dropped.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0} and (per_sample.min(axis=1) == per_sample.max(axis=1)).all()
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


# ----------------------------------------------------------------------------------------------- augmentation


def test_mix_strength_is_full_until_half_fades_to_three_quarters_and_is_off_after():
    assert [augmentation.mix_strength(epoch, 100) for epoch in (0, 50, 75, 100)] == [1.0, 1.0, 0.0, 0.0]
    assert augmentation.mix_strength(62.5, 100) == pytest.approx(0.5)
    assert augmentation.mix_strength(3, 4) == 0.0 and augmentation.mix_strength(2, 4) == 1.0
    with pytest.raises(ValueError, match="got 5"):
        augmentation.mix_strength(5, 4)


def test_mixed_batches_mix_labels_while_the_schedule_is_on_and_stop_after():
    images, labels = tiny_data(count=8, num_classes=2)
    mixing = systems.RECIPES["convnext_scratch"]["mixing"]
    batches = augmentation.MixedBatches(images, labels, batch_size=8, epochs=4, mixing=mixing, seed=3)
    early = [batches[0][1] for _ in range(4)]
    assert all(np.allclose(batch.sum(axis=1), 1, atol=1e-5) for batch in early)
    assert any(not np.isin(batch, (0.0, 1.0)).all() for batch in early)  # soft labels: some batch was mixed
    for _ in range(3):
        batches.on_epoch_end()
    assert batches.strength() == 0.0
    late_images, late_labels = batches[0]
    assert np.isin(late_labels, (0.0, 1.0)).all()
    assert sorted(map(tuple, late_images.reshape(8, -1)[:, :4])) == sorted(map(tuple, images.reshape(8, -1)[:, :4]))


def test_random_apply_keeps_or_augments_each_image_by_its_probability():
    images, _ = tiny_data()
    flip = [keras.layers.RandomFlip("horizontal_and_vertical", seed=1)]
    never = augmentation.RandomApply(flip, 0.0, seed=2)
    assert np.array_equal(keras.ops.convert_to_numpy(never(images)), images)
    always = augmentation.RandomApply([keras.layers.RandomRotation((0.25, 0.25), seed=1)], 1.0, seed=2)
    assert not np.array_equal(keras.ops.convert_to_numpy(always(images)), images)
    with pytest.raises(ValueError, match="got 1.5"):
        augmentation.RandomApply(flip, 1.5)


@pytest.mark.parametrize("name", systems.EXTRA_MODEL_NAMES)
def test_every_system_augmentation_builds_and_keeps_the_batch_shape(name):
    images, _ = tiny_data()
    layers = augmentation.build_system_augmentation(systems.RECIPES[name]["augmentation"], seed=0)
    augmented = keras.ops.convert_to_numpy(augmentation.augment_batch(images, layers))
    assert augmented.shape == images.shape and np.isfinite(augmented).all()


# ----------------------------------------------------------------------------------------------- weight averaging


def dense_model():
    """Return a one-Dense-layer model (2 inputs, 1 output)."""
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(1)(inputs))


def test_weight_averaging_averages_the_epochs_from_its_start():
    model = dense_model()
    averaging_callback = averaging.WeightAveraging(start_epoch=2)
    averaging_callback.set_model(model)
    for epoch in range(5):
        model.set_weights([np.full((2, 1), float(epoch), np.float32), np.array([10.0 * epoch], np.float32)])
        averaging_callback.on_epoch_end(epoch)
    averaging_callback.on_train_end()
    kernel, bias = model.get_weights()
    assert np.allclose(kernel, 3.0) and np.allclose(bias, 30.0)  # mean of epochs 2, 3, 4
    assert averaging_callback.epochs_averaged == [3, 4, 5]


def test_weight_averaging_in_fit_and_batch_norm_reestimated_only_where_there_is_one():
    images, labels = tiny_data()
    model, _ = systems.build_system("alexnet", 2, IMAGE_SIZE)
    systems.compile_system(model, systems.system_recipe("alexnet", epochs=2, batch_size=4))
    averaging_callback = averaging.WeightAveraging(start_epoch=1, assign_at_end=False)
    model.fit(images, labels, batch_size=4, epochs=2, verbose=0, callbacks=[averaging_callback])
    summary = averaging.finish_weight_averaging(model, averaging_callback, [images])
    assert summary["assigned"] and summary["batch_norm_layers_reestimated"] == 5
    empty = averaging.finish_weight_averaging(dense_model(), averaging.WeightAveraging(start_epoch=0), [])
    assert not empty["assigned"] and "none to re-estimate" in empty["batch_norm"]
    with pytest.raises(ValueError, match="got -1"):
        averaging.WeightAveraging(start_epoch=-1)


def test_pixel_noise_adds_noise_of_its_stddev_in_training_only():
    images = np.full((8, 16, 16, 3), 100.0, dtype=np.float32)
    layer = augmentation.GaussianPixelNoise(5.0, seed=0)
    noisy = keras.ops.convert_to_numpy(layer(images))
    assert abs(noisy.std() - 5.0) < 0.5 and abs(noisy.mean() - 100.0) < 0.5
    assert np.array_equal(keras.ops.convert_to_numpy(layer(images, training=False)), images)
    with pytest.raises(ValueError, match="Unknown augmentation layer 'RandomWobble'"):
        augmentation.build_system_augmentation([{"layer": "RandomWobble"}], seed=0)


def test_the_registry_holds_exactly_the_configured_extra_systems_and_none_of_the_design_four():
    assert tuple(systems.SYSTEMS) == systems.config.EXTRA_MODEL_NAMES
    assert not set(systems.SYSTEMS) & set(systems.config.MODEL_NAMES)
