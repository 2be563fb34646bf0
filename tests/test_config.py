"""Profiles, paths and notebook parameter checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alzlib import config


def test_profiles_have_increasing_budgets():
    smoke, cpu, full = (config.PROFILES[name] for name in ("smoke", "cpu", "full"))
    assert smoke.image_size <= cpu.image_size < full.image_size
    assert smoke.epochs < cpu.epochs < full.epochs
    assert (full.image_size, full.batch_size, full.epochs, full.warmup_epochs) == (224, 32, 50, 5)


@pytest.mark.parametrize("profile", list(config.PROFILES.values()), ids=list(config.PROFILES))
def test_every_class_can_be_split_three_ways_by_subject(profile):
    assert set(profile.cohort_subjects) == set(config.CLASS_NAMES)
    assert min(profile.cohort_subjects.values()) >= 4
    counts = [profile.cohort_subjects[name] for name in config.CLASS_NAMES]
    assert counts == sorted(counts, reverse=True), "most NonDemented, fewest ModerateDemented"


def test_profile_comes_from_environment(monkeypatch):
    monkeypatch.setenv("ALZ_PROFILE", "smoke")
    assert config.get_profile().name == "smoke"
    assert config.get_profile("cpu").name == "cpu"


def test_unknown_profile_is_named(monkeypatch):
    with pytest.raises(ValueError, match="'huge'.*smoke, cpu, full"):
        config.get_profile("huge")
    monkeypatch.setenv("ALZ_PROFILE", "tiny")
    with pytest.raises(ValueError, match="'tiny'"):
        config.get_profile()


def test_outputs_go_under_profile_in_one_folder_per_data_set_and_split(monkeypatch, tmp_path):
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))
    monkeypatch.delenv("ALZ_DATA_DIR", raising=False)
    paths = config.output_paths("cpu")
    assert paths.root == tmp_path / "cpu" / "synthetic-subject"
    assert paths.manifest == paths.root / "manifest.parquet"
    assert paths.report.parent == paths.root
    assert config.output_paths("cpu", config.default_data_dir(config.get_profile("cpu"))) == paths
    assert config.output_paths("cpu", tmp_path / "Alzheimer's Dataset", "shipped").root == (
        tmp_path / "cpu" / "Alzheimer_s_Dataset-shipped")
    assert config.output_paths("smoke", None, "slice").root == tmp_path / "smoke" / "synthetic-slice"


def test_settings_and_output_paths_choose_the_same_run_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))
    data = tmp_path / "kaggle"
    data.mkdir()
    settings = config.load_settings("smoke", 42, str(data), "shipped")
    assert settings.paths == config.output_paths("smoke", data, "shipped")
    assert settings.paths.root == tmp_path / "smoke" / "kaggle-shipped"
    assert config.load_settings("smoke").paths.root == tmp_path / "smoke" / "synthetic-subject"


def test_settings_defaults_to_synthetic_cohort(monkeypatch):
    monkeypatch.delenv("ALZ_DATA_DIR", raising=False)
    settings = config.load_settings("smoke")
    assert settings.data_dir == config.DATA_DIR / "synthetic" / "smoke"
    assert settings.synthetic
    assert settings.to_dict()["split"] == "subject"


def test_epochs_parameter_overrides_profile():
    settings = config.load_settings("full", epochs=3)
    assert settings.epochs == settings.profile.epochs == 3
    assert settings.profile.warmup_epochs == 3


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"seed": "7"}, "SEED"),
        ({"seed": -1}, "SEED"),
        ({"split": "random"}, "SPLIT"),
        ({"epochs": 0}, "EPOCHS"),
        ({"epochs": 2.5}, "EPOCHS"),
        ({"deterministic": "yes"}, "DETERMINISTIC"),
        ({"weights": "/no/such/file.h5"}, "WEIGHTS"),
        ({"models": "alexnet,lenet"}, "MODELS: unknown model 'lenet'"),
    ],
)
def test_bad_notebook_parameters_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        config.load_settings("smoke", **arguments)


def test_paths_are_built_from_project_root():
    assert (config.PROJECT_ROOT / "alzlib" / "config.py").is_file()
    assert config.NOTEBOOKS_DIR == config.PROJECT_ROOT / "notebooks"
    assert isinstance(config.DATA_DIR, Path)


def test_the_gpu_check_prints_no_tensorflow_start_up_lines():
    result = subprocess.run([sys.executable, "-c", "from alzlib import config; print(config.gpu_available())"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.returncode == 0 and result.stdout.strip() in ("True", "False")
    assert "oneDNN" not in result.stderr and "absl" not in result.stderr, result.stderr


def test_cohort_version_comes_from_the_profile_or_environment(monkeypatch):
    monkeypatch.delenv("ALZ_DATA_DIR", raising=False)
    monkeypatch.delenv("ALZ_COHORT_VERSION", raising=False)
    assert {profile.cohort_version for profile in config.PROFILES.values()} == {"2"}
    assert config.default_data_dir(config.get_profile("smoke")) == config.DATA_DIR / "synthetic" / "smoke"
    assert config.site_b_data_dir(config.get_profile("smoke")).name == "smoke-site-B"
    assert config.load_settings("smoke").paths.root.name == "synthetic-subject"
    monkeypatch.setenv("ALZ_COHORT_VERSION", "1")
    settings = config.load_settings("smoke")
    assert settings.profile.cohort_version == "1" and settings.synthetic
    assert settings.data_dir == config.DATA_DIR / "synthetic" / "smoke-v1"
    assert settings.to_dict()["cohort_version"] == "1"
    assert settings.paths.root.name == "synthetic-v1-subject"  # its own run folder beside version 2's
    monkeypatch.setenv("ALZ_COHORT_VERSION", "3")
    with pytest.raises(ValueError, match="ALZ_COHORT_VERSION must be one of 1, 2, got '3'"):
        config.get_profile("smoke")


def test_models_default_to_the_design_all_adds_the_systems_and_the_reference_is_always_trained():
    assert config.parse_models(None) == config.parse_models("default") == config.MODEL_NAMES
    assert config.parse_models("all") == (*config.MODEL_NAMES, *config.EXTRA_MODEL_NAMES)
    assert config.parse_models("vit, alexnet") == ("baseline_cnn", "alexnet", "vit")  # registry order
    assert config.parse_models(["resnet50"]) == ("baseline_cnn", "resnet50")
    settings = config.load_settings("smoke", models="convnext_scratch")
    assert settings.models == ("baseline_cnn", "convnext_scratch")
    assert settings.to_dict()["models"] == ["baseline_cnn", "convnext_scratch"]
