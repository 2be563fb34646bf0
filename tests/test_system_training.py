"""Tests of alzlib.system_training: a system trains on tiny data and writes what prediction and evaluation read."""

import dataclasses
import importlib.util
from pathlib import Path

import keras
import numpy as np

from alzlib import pipeline, predict, preprocessing, system_training, systems


def load_training_helpers():
    """Return test_training.py, loaded by path so its tiny manifest and settings stay defined once."""
    specification = importlib.util.spec_from_file_location("training_fixture",
                                                           Path(__file__).with_name("test_training.py"))
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module


HELPERS = load_training_helpers()
tiny_settings, write_manifest = HELPERS.tiny_settings, HELPERS.write_manifest


def test_a_system_with_weight_averaging_keeps_the_average_and_a_record_prediction_reads(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path)
    settings = tiny_settings(tmp_path / "outputs", monkeypatch, epochs=2, warmup=0)
    images = preprocessing.load_image_cache(manifest, settings.profile.image_size, settings.paths.cache)
    record = system_training.train_system("convnext_scratch", settings, manifest, images, verbose=0)
    assert record["epochs_run"] == 2 and record["checkpoint"].startswith("stochastic weight average")
    assert record["weight_averaging"]["epochs_averaged"] == [2]  # SWA from 80% of 2 epochs: the last one
    assert record["weight_averaging"]["batch_norm_layers_reestimated"] == 0  # ConvNeXt has LayerNorm only
    headline, _ = pipeline.training_headline(settings, "convnext_scratch")
    assert "(weight average of epoch 2 of 2, " in headline and headline.startswith("val balanced accuracy")
    assert record["recipe"]["citation"] and record["preprocessing"]["family"] == "efficientnet"
    predictor = predict.load_predictor(settings.paths.models / "convnext_scratch.keras")
    inputs = preprocessing.prepare_images(list(images[:3]), predictor.spec)
    probabilities = keras.ops.convert_to_numpy(predictor.model(inputs, training=False))
    assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_system_without_weight_averaging_keeps_its_best_validation_epoch(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path)
    settings = tiny_settings(tmp_path / "outputs", monkeypatch, epochs=1, warmup=0)
    record = system_training.train_system("alexnet", settings, manifest, verbose=0)
    assert record["checkpoint"] == "best validation epoch (1)" and "weight_averaging" not in record
    assert "val_macro_f1" in record["epoch_log"][0] and (settings.paths.models / "alexnet.keras").is_file()


def test_a_system_trains_on_the_thinned_split_and_writes_its_curves_and_best_epoch(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path)
    settings = tiny_settings(tmp_path / "outputs", monkeypatch, epochs=2, warmup=0)
    settings = dataclasses.replace(settings, profile=dataclasses.replace(settings.profile, transfer_train_images=12))
    record = system_training.train_system("alexnet", settings, manifest, verbose=0)
    assert record["train_images"] == 12 and record["train_subset"]["of_train_images"] == 24
    assert record["best_validation"]["epoch"] == record["best_epoch"]
    assert Path(record["files"]["curves"]).is_file() and record["stopped_by_nan"] is False
    headline, warnings = pipeline.training_headline(settings, "alexnet")
    assert headline.startswith("val balanced accuracy") and "of 2" in headline and warnings == []  # from scratch


def test_the_vit_search_scores_val_subjects_only_poisoned_test_rows_change_nothing(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path)
    settings = tiny_settings(tmp_path / "outputs", monkeypatch, epochs=1, warmup=0)
    settings = dataclasses.replace(settings, profile=dataclasses.replace(settings.profile, search_trials=2))
    images = preprocessing.load_image_cache(manifest, settings.profile.image_size, settings.paths.cache)
    clean = system_training.search_vit(settings, manifest, images.copy())
    test = (manifest["split"] == "test").to_numpy()
    poisoned_manifest = manifest.copy()
    poisoned_manifest.loc[test, "label_index"] = (poisoned_manifest.loc[test, "label_index"] + 1) % 3
    poisoned_manifest.loc[test, "label"] = "class" + poisoned_manifest.loc[test, "label_index"].astype(str)
    poisoned_images = images.copy()
    poisoned_images[test] = 255
    poisoned = system_training.search_vit(settings, poisoned_manifest, poisoned_images)
    assert poisoned["best"] == clean["best"] and poisoned["score"] == clean["score"]
    assert len(clean["trials"]) == 2 and (settings.paths.training / "vit" / "search.json").is_file()


def test_a_search_whose_trials_tie_keeps_the_recipes_values_and_one_that_separates_them_is_used():
    tied = system_training.search_verdict([{"score": 0.2524}, {"score": 0.2528}, {"score": 0.2526}])
    assert tied["informative"] is False and "recipe's own values are kept" in tied["decision"]
    separated = system_training.search_verdict([{"score": 0.25}, {"score": 0.41}])
    assert separated["informative"] is True and separated["score_spread"] == 0.16
    best = {"learning_rate": 1e-5, "gradient_accumulation_steps": 2, "weight_decay": 0.005}
    kept = systems.system_recipe("vit", 4, 16, {"best": best, **tied})
    used = systems.system_recipe("vit", 4, 16, {"best": best, **separated})
    assert kept["optimizer"]["learning_rate"] == systems.RECIPES["vit"]["optimizer"]["learning_rate"]
    assert used["optimizer"]["learning_rate"] == 1e-5 and used["optimizer"]["gradient_accumulation_steps"] == 2
    assert kept["hyperparameter_search"]["informative"] is False  # the record keeps what the search found


def test_a_weight_average_headline_names_consecutive_epochs_as_a_span():
    assert pipeline._epoch_span([14, 15, 16]) == "epochs 14-16"
    assert pipeline._epoch_span([2, 5]) == "epochs 2, 5" and pipeline._epoch_span([4]) == "epoch 4"
