"""Reproducible training: deterministic runs give identical weights; an interrupted run resumes where it stopped."""

import dataclasses
import hashlib
import math

import keras
import numpy as np
import pandas as pd
import pytest

from alzlib import config, environment, models, predict, training
from alzlib.storage import read_json
from fixtures import save_image, simple_image

IMAGE_SIZE = 32
SPLIT_LABELS = {"train": [0] * 8 + [1] * 6 + [2] * 4, "val": [0, 0, 1, 1, 2, 2]}


class Interrupted(Exception):
    """Stands in for a killed run (Ctrl-C, a lost machine) at the start of an epoch."""


@pytest.fixture(scope="module", autouse=True)
def restore_op_determinism():
    """Switch TensorFlow's op determinism back off after these tests, so later tests run as they would alone."""
    # tf.config.experimental has no public switch-off; this is the function it wraps.
    from tensorflow.python.framework import config as tensorflow_config

    enabled_before = tensorflow_config.is_op_determinism_enabled()
    yield
    if not enabled_before:
        tensorflow_config.disable_op_determinism()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pd.DataFrame:
    """A tiny three-class manifest: greyscale PNGs whose bright bar moves with the class."""
    folder = tmp_path_factory.mktemp("images")
    rows = []
    for split, labels in SPLIT_LABELS.items():
        for index, label in enumerate(labels):
            pixels = simple_image(100 * label + index, (44, 36))
            pixels[8:36, 4 + 10 * label:10 + 10 * label] = 240
            path = save_image(folder / f"{split}_{index:02d}.png", pixels)
            rows.append({"path": str(path), "label": f"class{label}", "label_index": label, "split": split,
                         "subject_id": f"{split}{index}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return pd.DataFrame(rows)


def tiny_settings(root, epochs: int, deterministic: bool) -> config.Settings:
    """Return smoke settings at 32 px and batch 8 writing under `root`."""
    settings = config.load_settings("smoke", seed=11, epochs=epochs, weights="none", deterministic=deterministic)
    profile = dataclasses.replace(settings.profile, image_size=IMAGE_SIZE, batch_size=8, warmup_epochs=1)
    return dataclasses.replace(settings, profile=profile, paths=config.OutputPaths(root))


def saved_weights(settings: config.Settings, name: str = "baseline_cnn") -> list[np.ndarray]:
    """Return every weight array of the model a run saved."""
    return training.load_trained_model(settings.paths.models / f"{name}.keras").get_weights()


def test_deterministic_runs_give_identical_weights(manifest, tmp_path):
    first, second = (tiny_settings(tmp_path / run, epochs=1, deterministic=True) for run in ("first", "second"))
    records = [training.train_model("baseline_cnn", settings, manifest, verbose=0) for settings in (first, second)]
    assert all(record["run"]["settings"]["deterministic"] for record in records)
    first_weights, second_weights = saved_weights(first), saved_weights(second)
    assert len(first_weights) == len(second_weights) > 0
    for index, (one, other) in enumerate(zip(first_weights, second_weights)):
        assert np.array_equal(one, other), f"weight array {index} differs between identical deterministic runs"
    assert records[0]["best_validation"] == {**records[1]["best_validation"],
                                             "seconds": records[0]["best_validation"]["seconds"]}
    # The weights moved away from the seeded start, so the equality above is about training, not initialisation.
    environment.set_seeds(11)
    start = models.build_model("baseline_cnn", 3, IMAGE_SIZE)[0].get_weights()
    assert any(not np.array_equal(trained, initial) for trained, initial in zip(first_weights, start))


class EpochWatcher(keras.callbacks.Callback):
    """Records the epochs a fit begins and the weights at their start; raises Interrupted at `stop_at`."""

    def __init__(self, stop_at: int | None = None):
        super().__init__()
        self.stop_at, self.begun, self.weights = stop_at, [], {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)
        self.weights[epoch] = self.model.get_weights()
        if epoch == self.stop_at:
            raise Interrupted(f"stopped at the start of epoch {epoch + 1}")


def test_an_interrupted_run_resumes_from_its_last_finished_epoch(manifest, tmp_path):
    settings = tiny_settings(tmp_path / "outputs", epochs=2, deterministic=False)
    paths = training._output_paths(settings, "baseline_cnn")
    interrupted = EpochWatcher(stop_at=1)
    with pytest.raises(Interrupted):
        training.train_model("baseline_cnn", settings, manifest, verbose=0, extra_callbacks=(interrupted,))
    assert interrupted.begun == [0, 1]
    assert read_json(paths["backup"] / "training_metadata.json")["epoch"] == 1
    assert [record["epoch"] for record in read_json(paths["epochs"])] == [1]
    assert not paths["model"].exists() and paths["checkpoint"].is_file()

    resumed = EpochWatcher()
    record = training.train_model("baseline_cnn", settings, manifest, verbose=0, extra_callbacks=(resumed,))
    assert resumed.begun == [1]  # epoch 1 is not trained again
    for index, (restored, saved) in enumerate(zip(resumed.weights[1], interrupted.weights[1])):
        assert np.array_equal(restored, saved), f"weight array {index} was not restored from the backup"
    assert record["resumed"] is True and record["epochs_run"] == 2 and not record["stopped_by_nan"]
    assert [entry["epoch"] for entry in read_json(paths["epochs"])] == [1, 2]
    assert len(record["learning_rates"]) == 2 and record["best_epoch"] in (1, 2)
    assert math.isfinite(record["best_validation"]["val_loss"])
    log_epochs = pd.read_csv(paths["csv"])["epoch"].tolist()
    assert log_epochs == [0, 1]  # the CSV log was appended to, not restarted
    assert not paths["backup"].exists() and paths["model"].is_file()
    # The record the resumed run wrote is one the predict command accepts.
    assert predict.read_record(paths["model"])["class_names"] == ["class0", "class1", "class2"]
