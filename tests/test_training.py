"""Tests of alzlib.training: the schedule, class weights, validation scores, and short real training runs."""

import dataclasses
import hashlib
import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alzlib import backend, config, controls, models, preprocessing, training
from alzlib.storage import write_json

IMAGE_SIZE = 32
# 24 train (12 / 8 / 4 per class), 6 val, 3 test images: imbalanced like the real data.
SPLIT_LABELS = {"train": [0] * 12 + [1] * 8 + [2] * 4, "val": [0, 0, 1, 1, 2, 2], "test": [0, 1, 2]}


def write_manifest(folder) -> pd.DataFrame:
    """Write small greyscale PNGs whose bright bar moves with the class; return their manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for split, labels in SPLIT_LABELS.items():
        for index, label in enumerate(labels):
            image = rng.integers(0, 40, (44, 36), dtype=np.uint8)
            image[8:36, 4 + 10 * label:10 + 10 * label] = 230
            path = folder / f"{split}_{index:02d}.png"
            Image.fromarray(image).save(path)
            rows.append({"path": str(path), "label": f"class{label}", "label_index": label,
                         "subject_id": f"{split}{index // 2}", "split": split,
                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "width": 36, "height": 44})
    return pd.DataFrame(rows)


def tiny_settings(outputs, monkeypatch, epochs: int, warmup: int) -> config.Settings:
    """Return smoke settings with outputs under `outputs`, 32 px images, batch 8 and the given budget."""
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(outputs))
    settings = config.load_settings("smoke", seed=7, epochs=epochs, weights="imagenet")
    profile = dataclasses.replace(settings.profile, image_size=IMAGE_SIZE, batch_size=8, warmup_epochs=warmup)
    return dataclasses.replace(settings, profile=profile)


# ----------------------------------------------------------------------------------------------- recipe pieces


def test_learning_rate_schedule_warms_up_then_follows_a_cosine_to_almost_zero():
    rates = [training.learning_rate_at(epoch, 1e-3, 5, 50) for epoch in range(50)]
    assert rates[:6] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3])  # epochs 1-5 rise, epoch 6 = peak
    assert all(later < earlier for earlier, later in zip(rates[5:], rates[6:]))
    assert rates[27] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 22 / 45)))
    assert rates[49] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 44 / 45))) and rates[49] < 2e-6
    assert training.learning_rate_at(0, 1e-3, 0, 4) == 1e-3  # no warm-up: the cosine starts at the peak
    with pytest.raises(ValueError, match="0-based index"):
        training.learning_rate_at(50, 1e-3, 5, 50)
    with pytest.raises(ValueError, match="warmup_epochs"):
        training.learning_rate_at(0, 1e-3, 6, 5)


def test_class_weights_are_the_balanced_ones():
    weights = training.balanced_class_weights(np.array([0] * 6 + [1] * 3 + [2]), 3)
    assert weights == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})  # n / (classes * count)
    assert training.balanced_class_weights(np.array([0, 0, 2]), 3) == pytest.approx({0: 0.75, 2: 1.5})
    with pytest.raises(ValueError, match="0..2"):
        training.balanced_class_weights(np.array([0, 3]), 3)


def test_validation_scores_match_hand_computed_values_and_the_keras_loss():
    labels = np.array([0, 0, 1, 2])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    scores = training.validation_scores(labels, probabilities, label_smoothing=0.1)
    assert scores["val_accuracy"] == 0.75
    assert scores["val_balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert scores["val_macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    keras_loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(np.eye(3)[labels], probabilities)
    assert scores["val_loss"] == pytest.approx(float(keras_loss), rel=1e-5)


def test_budget_changes_epochs_rate_and_augmentation_and_rejects_unknown_keys():
    recipe = training.training_recipe("baseline_cnn", config.PROFILES["cpu"])
    spec = preprocessing.preprocessing_spec("baseline_cnn", 64)
    changed, changed_spec = training.apply_budget(recipe, spec, {"epochs": 9, "learning_rate": 1e-3,
                                                                 "augmentation": False})
    assert changed["epochs"] == 9 and changed["optimizer"]["learning_rate"] == 1e-3
    assert changed["learning_rate_schedule"] == {"name": "constant", "learning_rate": 1e-3}
    assert changed_spec["augmentation"] == [] and spec["augmentation"] and recipe["epochs"] == 24  # copies
    assert training.apply_budget(recipe, spec, None) == (recipe, spec)
    with pytest.raises(ValueError, match="Unknown budget key"):
        training.apply_budget(recipe, spec, {"epoch": 3})


def test_transfer_models_train_on_every_kth_slice_beyond_the_profile_limit_and_the_baseline_on_all():
    rows = [{"path": f"/d/s{subject}_{index:02d}.png", "subject_id": f"S{subject}", "slice_index": index,
             "split": "train" if subject < 8 else "val", "label_index": subject % 2} for subject in range(10)
            for index in range(30)]
    manifest = pd.DataFrame(rows)
    images = np.arange(len(manifest), dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    profile = dataclasses.replace(config.PROFILES["cpu"], transfer_train_images=100)
    trained, kept, subset = training._thinned_training("resnet50", profile, manifest, images)
    train = trained[trained["split"] == "train"]
    assert subset["train_images"] == len(train) == 8 * 10 and subset["of_train_images"] == 240  # every 3rd slice
    assert (train.groupby("subject_id")["slice_index"].agg(list).map(lambda kept: kept == list(range(0, 30, 3)))).all()
    assert (trained["split"] == "val").sum() == 60  # validation untouched
    assert np.array_equal(kept[:, 0, 0], trained["path"].map(dict(zip(manifest["path"], images[:, 0, 0]))))
    for name, limit in (("baseline_cnn", 100), ("resnet50", None), ("resnet50", 500)):
        same = training._thinned_training(name, dataclasses.replace(profile, transfer_train_images=limit), manifest,
                                          images)
        assert same[0] is manifest and same[2] is None
    # An explicit limit (cross-validation folds) thins any model, the baseline CNN included.
    thinned, _, subset = training._thinned_training("baseline_cnn", profile, manifest, images, limit=120)
    assert (thinned["split"] == "train").sum() == subset["train_images"] == 120 and subset["limit"] == 120


def test_batch_norm_recalibration_averages_clean_batches_and_restores_the_layers():
    inner_inputs = keras.Input((4,))
    inner = keras.Model(inner_inputs, keras.layers.BatchNormalization(name="nested_bn")(inner_inputs), name="inner")
    inputs = keras.Input((4,))
    hidden = keras.layers.Dropout(0.5, name="drop")(inner(inputs))
    hidden = keras.layers.BatchNormalization(name="after_dropout")(hidden)
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    model = keras.Model(inputs, frozen(hidden))
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (64, 4)).astype("float32"), rng.normal(5.0, 1.0, (64, 4)).astype("float32")]

    assert training.recalibrate_batch_norm(model, [(batch, None) for batch in batches]) == 2

    nested = inner.get_layer("nested_bn")
    np.testing.assert_allclose(nested.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(nested.moving_variance.numpy(), np.mean([b.var(0) for b in batches], axis=0),
                               rtol=1e-4)
    # Dropout off: the normalised activations reach the next layer with variance ~1 (about 2 with rate 0.5).
    np.testing.assert_allclose(model.get_layer("after_dropout").moving_variance.numpy(), 1.0, atol=0.01)
    np.testing.assert_array_equal(model.get_layer("frozen").moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("frozen").moving_variance.numpy(), 1.0)
    assert nested.momentum == 0.99 and model.get_layer("drop").rate == 0.5


def test_recipes_record_every_hyperparameter():
    profile = config.PROFILES["full"]
    baseline = training.training_recipe("baseline_cnn", profile, backend_name="tensorflow")
    assert baseline["optimizer"] == {"name": "Adam", "learning_rate": 1e-4}
    assert baseline["learning_rate_schedule"]["factor"] == 0.5 and baseline["learning_rate_schedule"]["patience"] == 3
    old_gpus = (backend.Gpu("Tesla T4", None, (7, 5)),) * 2  # memory unknown: the recipe's batch
    transfer = training.training_recipe("efficientnetb0", profile, old_gpus, replicas=2, backend_name="tensorflow")
    assert transfer["optimizer"] == {"name": "AdamW", "learning_rate": 1e-3, "weight_decay": 1e-4, "clipnorm": 1.0}
    assert transfer["loss"]["label_smoothing"] == 0.1 and transfer["learning_rate_schedule"]["warmup_epochs"] == 5
    assert transfer["global_batch_size"] == 64 and transfer["early_stopping"] is None
    assert transfer["mixed_precision"] and not transfer["jit_compile"]  # XLA off under MirroredStrategy
    assert transfer["dtype_policy"] == "mixed_float16" and transfer["loss_scaling"]  # no bfloat16 before Ampere
    assert transfer["backend"] == "tensorflow" and transfer["execution"]["replicas"] == 2
    assert not baseline["mixed_precision"] and not baseline["jit_compile"]  # CPU: float32, no XLA


def test_recipes_scale_the_batch_and_rate_to_a_large_gpu_only_where_the_recipe_allows():
    profile = config.PROFILES["full"]
    h100 = (backend.Gpu("NVIDIA H100", 79.6, (9, 0)),)
    transfer = training.training_recipe("resnet50", profile, h100, backend_name="jax")
    assert transfer["dtype_policy"] == "mixed_bfloat16" and not transfer["loss_scaling"]
    assert transfer["jit_compile"] and transfer["steps_per_execution"] == 1
    assert transfer["batch_size_per_replica"] == 4 * profile.batch_size and "x4" in transfer["batch_scaling"]
    assert transfer["optimizer"]["learning_rate"] == pytest.approx(4e-3)
    assert transfer["learning_rate_schedule"]["base_learning_rate"] == pytest.approx(4e-3)
    baseline = training.training_recipe("baseline_cnn", profile, h100, backend_name="torch")
    assert baseline["global_batch_size"] == profile.batch_size and baseline["optimizer"]["learning_rate"] == 1e-4
    assert not baseline["jit_compile"] and baseline["steps_per_execution"] == 1  # PyTorch: eager, one step per call
    cpu = training.training_recipe("baseline_cnn", config.PROFILES["cpu"], backend_name="jax")
    assert cpu["jit_compile"] and cpu["steps_per_execution"] == training.CPU_STEPS_PER_EXECUTION
    with pytest.raises(ValueError, match="expected one of baseline_cnn"):
        training.training_recipe("alexnet", profile)


# ----------------------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    """The random-label control trained under its budget, with the labels fed to the pipeline recorded."""
    folder = tmp_path_factory.mktemp("control")
    manifest = write_manifest(folder)
    fed = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        settings = tiny_settings(folder / "outputs", monkeypatch, epochs=1, warmup=1)
        images = preprocessing.load_image_cache(manifest, IMAGE_SIZE, settings.paths.cache)
        original = preprocessing.make_dataset

        def recording(images, labels, spec, training_flag, *args, **kwargs):
            fed.append((training_flag, np.asarray(labels)))
            return original(images, labels, spec, training_flag, *args, **kwargs)

        monkeypatch.setattr(preprocessing, "make_dataset", recording)
        record = controls.train_control(settings, manifest, images)
    return settings, manifest, record, fed


def test_control_run_writes_the_model_its_record_and_training_files(control_run):
    settings, manifest, record, _ = control_run
    assert record["model"] == config.CONTROL_MODEL_NAME and record["control"]["labels"] == "random"
    assert record["control"]["split_policy"] == "subject" and not record["control"]["leaky_split"]
    folder = settings.paths.training / config.CONTROL_MODEL_NAME
    for path in (settings.paths.models / f"{config.CONTROL_MODEL_NAME}.keras", folder / "history.json",
                 folder / "log.csv", folder / "curves.png"):
        assert path.is_file(), path
    assert not (folder / "backup").exists() and not (folder / "best.keras").exists()
    saved = json.loads((settings.paths.models / f"{config.CONTROL_MODEL_NAME}.json").read_text())
    assert saved["best_epoch"] == record["best_epoch"] and saved["epochs_run"] == settings.profile.control_epochs
    assert saved["class_names"] == ["class0", "class1", "class2"]
    # The control budget: constant 1e-3, no augmentation, dropout off, the profile's control epochs.
    assert saved["recipe"]["optimizer"] == {"name": "Adam", "learning_rate": 1e-3}
    assert saved["learning_rates"] == pytest.approx([1e-3] * settings.profile.control_epochs)
    built, _ = models.build_model("baseline_cnn", 3, IMAGE_SIZE, "none")
    dropouts = sum(isinstance(layer, keras.layers.Dropout) for layer in built.layers)
    assert saved["preprocessing"]["augmentation"] == []
    assert saved["model_info"]["dropout_layers_switched_off"] == dropouts > 0
    assert saved["train_images"] == 24 and saved["val_images"] == 6
    assert saved["preprocessing"]["family"] == "baseline" and saved["seed"] == 7
    assert saved["best_validation"]["val_balanced_accuracy"] is not None
    assert "keras" in saved["run"]["libraries"] and saved["global_batch_size"] == 8


def test_control_run_trains_and_validates_on_random_subject_labels(control_run):
    settings, manifest, _, fed = control_run
    (train_flag, train_labels), (val_flag, val_labels), (norm_flag, norm_labels) = fed
    random = controls.with_random_labels(manifest, settings.seed)
    assert train_flag and np.array_equal(train_labels, random.loc[random.split == "train", "label_index"])
    assert not np.array_equal(train_labels, manifest.loc[manifest.split == "train", "label_index"])
    assert not val_flag and np.array_equal(val_labels, random.loc[random.split == "val", "label_index"])
    # Batch-norm statistics come from un-augmented training images only.
    assert not norm_flag and len(norm_labels) == min(len(train_labels), training.BATCH_NORM_IMAGES)


def test_saved_model_reloads_in_safe_mode(control_run):
    settings, _, _, _ = control_run
    model = training.load_trained_model(settings.paths.models / f"{config.CONTROL_MODEL_NAME}.keras")
    assert model.output_shape == (None, 3)
    with pytest.raises(FileNotFoundError, match="train the model first"):
        training.load_trained_model(settings.paths.models / "missing.keras")


def tiny_backbone(name, image_size, weights):
    """Stand in for keras.applications: a two-convolution backbone that is offline for ImageNet weights."""
    if weights == "imagenet":
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: simulated offline")
    inputs = keras.Input((image_size, image_size, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    features = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(features)
    return keras.Model(inputs, features, name="resnet50")


def test_transfer_recipe_falls_back_to_random_weights_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_application", tiny_backbone)
    settings = tiny_settings(tmp_path / "outputs", monkeypatch, epochs=2, warmup=1)
    with pytest.warns(RuntimeWarning, match="ImageNet weights for resnet50_attention could not be loaded"):
        record = training.train_model("resnet50_attention", settings, write_manifest(tmp_path), verbose=0)
    assert record["weights"].startswith("random (ImageNet weights unavailable")
    assert record["frozen_layers"] == 0 and record["trainable_layers"] == record["model_info"]["backbone_layers"]
    assert record["learning_rates"] == pytest.approx([1e-3, training.learning_rate_at(1, 1e-3, 1, 2)])
    assert record["recipe"]["loss"] == {"name": "categorical_crossentropy", "label_smoothing": 0.1,
                                        "labels": "one-hot"}
    assert record["preprocessing"]["family"] == "resnet50" and record["epochs_run"] == 2
    model = training.load_trained_model(settings.paths.models / "resnet50_attention.keras")
    assert isinstance(model.get_layer("spatial_attention"), models.SpatialAttention)


def test_train_model_rejects_bad_input(tmp_path, monkeypatch):
    settings = tiny_settings(tmp_path / "outputs", monkeypatch, epochs=1, warmup=1)
    manifest = write_manifest(tmp_path)
    with pytest.raises(ValueError, match="expected one of baseline_cnn"):
        training.train_model("lenet", settings, manifest)
    with pytest.raises(ValueError, match="align row by row"):
        training.train_model("baseline_cnn", settings, manifest, images=np.zeros((2, 32, 32), np.uint8))
    no_val = manifest.assign(split=manifest.split.replace("val", "train"))
    with pytest.raises(ValueError, match="val split of the manifest is empty"):
        training.train_model("baseline_cnn", settings, no_val, images=np.zeros((len(manifest), 32, 32), np.uint8))


def test_an_interrupted_run_resumes_with_its_epochs_and_best_score(tmp_path, monkeypatch):
    settings = tiny_settings(tmp_path / "outputs", monkeypatch, epochs=3, warmup=1)
    paths = training._output_paths(settings, "baseline_cnn")
    records = [{"epoch": 1, "val_balanced_accuracy": 0.4, "val_loss": 1.0},
               {"epoch": 2, "val_balanced_accuracy": 0.6, "val_loss": 0.9}]
    write_json(paths["epochs"], records)
    write_json(paths["backup"] / "training_metadata.json", {"epoch": 2, "batch": 0})
    paths["checkpoint"].write_bytes(b"checkpoint")
    assert training._start_or_resume(paths) == (records, {"score": 0.6, "loss": 0.9, "epoch": 2})
    (paths["backup"] / "training_metadata.json").unlink()  # a finished run: start afresh
    assert training._start_or_resume(paths)[0] == [] and not paths["checkpoint"].exists()


def test_training_curves_plot_the_history():
    history = {"epoch": [1, 2], "loss": [1.2, 0.9], "accuracy": [0.4, 0.6], "val_loss": [1.1, 1.0],
               "val_accuracy": [0.5, 0.5], "val_balanced_accuracy": [0.4, 0.5], "learning_rate": [1e-3, 5e-4]}
    figure = training.plot_training_curves(history, title="baseline_cnn")
    assert len(figure.axes) == 3 and len(figure.axes[1].lines) == 3
    with pytest.raises(ValueError, match="no 'loss'"):
        training.plot_training_curves({})


def test_per_model_budgets_change_only_their_model_and_epochs_overrides_them():
    import dataclasses

    profile = dataclasses.replace(config.PROFILES["smoke"], epochs=3, model_epochs={"baseline_cnn": 7},
                                  model_learning_rates={"baseline_cnn": 2e-3, "resnet50": 5e-4})
    baseline = training.training_recipe("baseline_cnn", profile)
    assert baseline["epochs"] == 7 and baseline["optimizer"]["learning_rate"] == 2e-3
    transfer = training.training_recipe("resnet50", profile)
    assert transfer["epochs"] == 3 and transfer["learning_rate_schedule"]["total_epochs"] == 3
    assert transfer["optimizer"]["learning_rate"] == transfer["learning_rate_schedule"]["base_learning_rate"] == 5e-4
    assert training.training_recipe("efficientnetb0", profile)["optimizer"]["learning_rate"] == 1e-3
    overridden = config.load_settings("cpu", epochs=2).profile
    assert overridden.epochs_for("baseline_cnn") == overridden.epochs_for("resnet50") == 2
