"""Tests of the `python -m alzlib` command: predict (an untrained baseline CNN with its record) and install-kernel."""

import dataclasses
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from alzlib import config, kernels, models, predict, preprocessing
from alzlib.__main__ import main
from alzlib.storage import write_json
from fixtures import save_image, simple_image, write_accepted_variants, write_bad_files

IMAGE_SIZE = 32
CLASS_NAMES = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]


def write_record(model_path, **changes) -> dict:
    """Write a recipe record beside `model_path` with the keys training writes (plus `changes`); return it."""
    record = {"model": "baseline_cnn", "architecture": "baseline_cnn", "synthetic": True, "class_names": CLASS_NAMES,
              "num_classes": len(CLASS_NAMES), "preprocessing": preprocessing.preprocessing_spec("baseline_cnn",
                                                                                               IMAGE_SIZE)}
    record.update(changes)
    write_json(predict.record_path(model_path), record)
    return record


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An untrained baseline CNN at 32 px saved as .keras, with its recipe record beside it."""
    folder = tmp_path_factory.mktemp("model")
    model, _ = models.build_model("baseline_cnn", len(CLASS_NAMES), IMAGE_SIZE)
    path = folder / "baseline_cnn.keras"
    model.save(path)
    write_record(path)
    return path


@pytest.fixture(scope="module")
def predictor(model_path):
    """The saved model loaded the way the command loads it."""
    return predict.load_predictor(model_path)


@pytest.fixture(scope="module")
def good_images(tmp_path_factory):
    """A greyscale JPEG (Kaggle-like, 176 x 208) and the RGB, RGBA and palette variants ingestion accepts."""
    folder = tmp_path_factory.mktemp("images")
    variants = write_accepted_variants(folder)
    paths = [save_image(folder / "grey.jpg", simple_image(3, (208, 176)))]
    return paths + [folder / name for name in variants if name != "sixteen.png"]


def direct_probabilities(predictor, paths, spec=None) -> np.ndarray:
    """Return model.predict on the images read and prepared by hand with `spec` (default: the recorded one)."""
    images = [preprocessing.read_image(str(path)) for path in paths]
    inputs = preprocessing.prepare_images(images, spec or predictor.spec)
    return predictor.model.predict(inputs, verbose=0)


# ----------------------------------------------------------------------------------------------- predictions


def test_probabilities_sum_to_one_and_equal_model_predict_on_the_recorded_preprocessing(predictor, good_images):
    entries = predict.predict_images(predictor, good_images)
    expected = direct_probabilities(predictor, good_images)
    assert [entry["image"] for entry in entries] == [str(path) for path in good_images]
    for entry, row in zip(entries, expected):
        probabilities = np.array([entry["probabilities"][name] for name in CLASS_NAMES])
        assert list(entry["probabilities"]) == CLASS_NAMES
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(probabilities, row, rtol=1e-5, atol=1e-6)
        assert entry["predicted_class"] == CLASS_NAMES[int(np.argmax(row))]
        assert entry["model"] == "baseline_cnn" and entry["synthetic_training_data"] is True
        assert entry["note"] == "research use only, not for clinical use" and "error" not in entry
    # Different pixels give different answers: the image reaches the model.
    assert len({entry["probabilities"]["NonDemented"] for entry in entries}) > 1


def test_the_recorded_spec_decides_the_preprocessing(predictor, good_images):
    resnet_spec = preprocessing.preprocessing_spec("resnet50", IMAGE_SIZE)
    recorded = dataclasses.replace(predictor, record={**predictor.record, "preprocessing": resnet_spec,
                                                      "synthetic": False})
    entries = predict.predict_images(recorded, good_images[:2])
    probabilities = np.array([[entry["probabilities"][name] for name in CLASS_NAMES] for entry in entries])
    np.testing.assert_allclose(probabilities, direct_probabilities(predictor, good_images[:2], resnet_spec),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(probabilities, direct_probabilities(predictor, good_images[:2]), atol=1e-4)
    assert all(entry["synthetic_training_data"] is False for entry in entries)


def test_unusable_images_get_error_entries_while_good_ones_are_answered(predictor, good_images, tmp_path):
    reasons = write_bad_files(tmp_path)  # empty, truncated JPEG, text with a .jpg name, 8 x 8 PNG
    bad = {tmp_path / "empty.jpg": "empty (0 bytes)", tmp_path / "truncated.jpg": "truncated",
           tmp_path / "notes.jpg": "could not be read as an image", tmp_path / "tiny.png": "too small",
           tmp_path / "missing.png": "does not exist", tmp_path: "not a file"}
    assert set(reasons) <= {path.name for path in bad}
    order = [good_images[0], *bad, good_images[1]]
    entries = predict.predict_images(predictor, order)
    assert [entry["image"] for entry in entries] == [str(path) for path in order]
    for entry, (path, words) in zip(entries[1:-1], bad.items()):
        assert set(entry) == {"image", "error"} and words in entry["error"] and str(path) in entry["error"]
    answered = [entries[0], entries[-1]]
    expected = direct_probabilities(predictor, [good_images[0], good_images[1]])
    for entry, row in zip(answered, expected):
        np.testing.assert_allclose([entry["probabilities"][name] for name in CLASS_NAMES], row, rtol=1e-5, atol=1e-6)


def test_sixteen_bit_images_are_never_silently_clipped(predictor, tmp_path, monkeypatch):
    grey = simple_image(5, (64, 64))
    Image.fromarray(grey.astype(np.uint16) * 16).save(tmp_path / "wide.png")  # values up to ~4000
    Image.fromarray(grey.astype(np.uint16)).save(tmp_path / "narrow.png")  # 16-bit file holding 0-255
    # The PIL reader (preprocessing's fallback) clips 16-bit values to 255: that image must be refused.
    monkeypatch.setattr(preprocessing, "read_image", preprocessing._load_with_pil)
    wide, narrow = predict.predict_images(predictor, [tmp_path / "wide.png", tmp_path / "narrow.png"])
    assert "more than 8 bits" in wide["error"] and "values up to" in wide["error"]
    assert "error" not in narrow
    # A reader that scales 16 bits to 8 (as alzlib.ingestion may) is trusted: the image is answered.
    monkeypatch.setattr(preprocessing, "read_image",
                        lambda path: (np.asarray(Image.open(path), dtype=np.float64) / 16).astype(np.uint8))
    (scaled,) = predict.predict_images(predictor, [tmp_path / "wide.png"])
    assert scaled["predicted_class"] in CLASS_NAMES


def test_top_lists_the_most_probable_classes_in_order(predictor, good_images):
    (entry,) = predict.predict_images(predictor, good_images[:1], top=3)
    ranked = sorted(entry["probabilities"].items(), key=lambda item: -item[1])[:3]
    assert [(item["class"], item["probability"]) for item in entry["top"]] == ranked
    assert entry["top"][0]["class"] == entry["predicted_class"]
    with pytest.raises(ValueError, match="between 1 and 4"):
        predict.predict_images(predictor, good_images[:1], top=5)


def test_gradcam_writes_an_overlay_png_per_answered_image(model_path, good_images, tmp_path, capsys):
    twin = save_image(tmp_path / "other" / "grey.jpg", simple_image(4, (208, 176)))  # same stem as good_images[0]
    out_dir = tmp_path / "cams"
    code = main(["predict", str(good_images[0]), str(twin), str(tmp_path / "missing.png"), "--model",
                 str(model_path), "--gradcam", str(out_dir)])
    entries = json.loads(capsys.readouterr().out)
    assert code == 1 and "error" in entries[2] and "gradcam" not in entries[2]
    written = [entry["gradcam"] for entry in entries[:2]]
    assert len(set(written)) == 2 and sorted(os.listdir(out_dir)) == sorted(os.path.basename(p) for p in written)
    for path in written:
        with Image.open(path) as overlay:
            assert overlay.format == "PNG" and min(overlay.size) > 100
    assert entries[0]["gradcam_layer"] == "conv4"  # the baseline's last convolution, found automatically


# ----------------------------------------------------------------------------------------------- the command


def test_main_prints_json_and_exits_0_when_every_image_is_answered(model_path, good_images, capsys):
    assert main(["predict", *map(str, good_images[:2]), "--model", str(model_path), "--top", "2"]) == 0
    output = capsys.readouterr()
    entries = json.loads(output.out)
    assert len(entries) == 2 and all(len(entry["top"]) == 2 for entry in entries) and output.err == ""


def usage_error(argv, capsys) -> str:
    """Run main() expecting exit code 2 and return its one-line stderr message."""
    assert main(argv) == 2
    output = capsys.readouterr()
    assert output.out == "" and output.err.count("\n") == 1 and output.err.startswith("alzlib: error: ")
    assert "Traceback" not in output.err
    return output.err


def test_usage_errors_exit_2_with_one_line_that_names_the_problem(model_path, good_images, tmp_path, capsys):
    image = str(good_images[0])
    assert "nowhere.keras does not exist" in usage_error(["predict", image, "--model", str(tmp_path / "nowhere.keras")],
                                                         capsys)
    lonely = tmp_path / "lonely.keras"
    lonely.write_bytes(model_path.read_bytes())
    message = usage_error(["predict", image, "--model", str(lonely)], capsys)
    assert "No recipe record" in message and "lonely.json" in message and "preprocessing" in message
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    write_record(junk)
    assert "not a Keras model archive" in usage_error(["predict", image, "--model", str(junk)], capsys)
    partial = tmp_path / "partial.keras"
    partial.write_bytes(model_path.read_bytes())
    write_json(predict.record_path(partial), {"model": "baseline_cnn", "class_names": CLASS_NAMES})
    assert "lacks preprocessing, synthetic" in usage_error(["predict", image, "--model", str(partial)], capsys)
    mismatched = tmp_path / "mismatched.keras"
    mismatched.write_bytes(model_path.read_bytes())
    write_record(mismatched, class_names=["NC", "AD"], num_classes=2)
    assert "outputs 4 classes but its record names 2" in usage_error(
        ["predict", image, "--model", str(mismatched)], capsys)
    assert "--top must be between 1 and 4" in usage_error(["predict", image, "--model", str(model_path), "--top",
                                                           "0"], capsys)
    assert "is a file" in usage_error(["predict", image, "--model", str(model_path), "--gradcam", image], capsys)
    assert "required: --model" in usage_error(["predict", image], capsys)
    assert "invalid choice" in usage_error(["classify", image], capsys)


def test_a_zip_that_is_not_a_keras_model_is_refused_in_one_line(model_path, good_images, tmp_path, capsys):
    image = str(good_images[0])
    archive = tmp_path / "some.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("notes.txt", "not a model")
    assert "some.zip is not a .keras file" in usage_error(["predict", image, "--model", str(archive)], capsys)
    renamed = tmp_path / "renamed.keras"
    renamed.write_bytes(archive.read_bytes())
    write_record(renamed)
    message = usage_error(["predict", image, "--model", str(renamed)], capsys)
    assert "renamed.keras is not a Keras model archive" in message and "config.json" in message
    with zipfile.ZipFile(model_path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    for name, changes in {"garbled": {"config.json": b"not json"}, "weightless": {"model.weights.h5": None}}.items():
        damaged = tmp_path / f"{name}.keras"
        with zipfile.ZipFile(damaged, "w") as handle:
            for member, content in {**members, **changes}.items():
                if content is not None:
                    handle.writestr(member, content)
        write_record(damaged)
        message = usage_error(["predict", image, "--model", str(damaged)], capsys)
        assert f"{name}.keras could not be loaded as a Keras model" in message


def test_a_record_of_another_model_is_refused(model_path, good_images, tmp_path, capsys):
    image = str(good_images[0])
    copies = {}
    for name in ("resnet", "family", "count"):
        copies[name] = tmp_path / f"{name}.keras"
        copies[name].write_bytes(model_path.read_bytes())
    # A ResNet50 record at the same size and class count: labels and preprocessing would fit, the weights would not.
    write_record(copies["resnet"], model="resnet50", architecture="resnet50",
                 preprocessing=preprocessing.preprocessing_spec("resnet50", IMAGE_SIZE))
    message = usage_error(["predict", image, "--model", str(copies["resnet"])], capsys)
    assert "holds a baseline_cnn model but its record describes resnet50" in message and "resnet.json" in message
    write_record(copies["family"], preprocessing=preprocessing.preprocessing_spec("efficientnetb0", IMAGE_SIZE))
    assert "prepares images for the 'efficientnet' family" in usage_error(
        ["predict", image, "--model", str(copies["family"])], capsys)
    write_record(copies["count"], num_classes=3)
    assert "num_classes is 3 but class_names lists 4" in usage_error(
        ["predict", image, "--model", str(copies["count"])], capsys)
    # A control run's record names its own model and the architecture it was built as: accepted.
    control = tmp_path / "baseline_cnn_random_labels.keras"
    control.write_bytes(model_path.read_bytes())
    write_record(control, model="baseline_cnn_random_labels")
    assert predict.load_predictor(control).name == "baseline_cnn_random_labels"


def test_python_dash_m_alzlib_predict_runs_the_entry_point(model_path, good_images, tmp_path):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(config.PROJECT_ROOT),
                                                                             os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "alzlib", "predict", str(good_images[0]),
                             str(tmp_path / "absent.jpg"), "--model", str(model_path)],
                            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    answered, failed = json.loads(result.stdout)
    assert answered["predicted_class"] in CLASS_NAMES and "does not exist" in failed["error"]
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------- Jupyter kernel


def test_install_kernel_registers_this_interpreter_with_alzlib_importable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    assert main(["install-kernel", "--name", "alzlib-test"]) == 0
    assert "Installed Jupyter kernel 'alzlib-test'" in capsys.readouterr().out
    spec = json.loads((tmp_path / "jupyter" / "kernels" / "alzlib-test" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == "Python (alzlib-test)"
    # The kernel starts in the notebook's folder: alzlib must import there with the kernel's environment.
    kernel_environment = {**os.environ, **spec.get("env", {})}
    check = subprocess.run([spec["argv"][0], "-c", "import alzlib"], cwd=tmp_path, env=kernel_environment,
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    assert "not valid" in usage_error(["install-kernel", "--name", "Bad Name"], capsys)


def test_install_kernel_points_pythonpath_at_the_project_when_alzlib_imports_only_there(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.setattr(kernels, "_alzlib_importable_elsewhere", lambda: False)
    installed = kernels.install_kernel("alzlib-path")
    spec = json.loads((tmp_path / "jupyter" / "kernels" / "alzlib-path" / "kernel.json").read_text())
    assert spec["env"] == installed["env"] == {"PYTHONPATH": str(config.PROJECT_ROOT)}
    check = subprocess.run([spec["argv"][0], "-c", "import alzlib; print(alzlib.__file__)"], cwd=tmp_path,
                           env={**os.environ, **spec["env"]}, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0 and check.stdout.startswith(str(config.PROJECT_ROOT)), check.stderr
