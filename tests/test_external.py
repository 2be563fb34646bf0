"""External validation (alzlib.external): copies of the training data are left out, classes must map, drops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alzlib import config, external, ingestion
from fixtures import OASIS_FOLDERS, make_oasis_tree, save_image, simple_image

CLASSES = list(config.CLASS_NAMES)


def _training_manifest(root: Path) -> pd.DataFrame:
    make_oasis_tree(root, {"NonDemented": [1, 2], "VeryMildDemented": [3], "MildDemented": [4]})
    frame, _, _ = ingestion.manifest_frame(ingestion.scan_dataset(root))
    return frame


def _external_tree(root: Path) -> Path:
    make_oasis_tree(root, {"NonDemented": [11, 12], "VeryMildDemented": [13], "MildDemented": [14]})
    return root


def test_clean_external_set_keeps_every_image(tmp_path):
    manifest = _training_manifest(tmp_path / "train")
    frame, record = external.external_manifest(_external_tree(tmp_path / "external"), CLASSES, manifest)
    assert len(frame) == 12 and record["copies_left_out"] == [] and record["warnings"] == []
    assert set(frame["split"]) == {"test"}
    assert frame["label_index"].tolist() == [CLASSES.index(label) for label in frame["label"]]


def test_planted_copies_are_left_out_with_their_reason(tmp_path):
    manifest = _training_manifest(tmp_path / "train")
    root = _external_tree(tmp_path / "external")
    folder = root / "Data" / OASIS_FOLDERS["NonDemented"]
    source = tmp_path / "train" / "Data" / OASIS_FOLDERS["NonDemented"] / "OAS1_0001_MR1_mpr-1_100.jpg"
    shutil.copy(source, folder / "OAS1_0021_MR1_mpr-1_100.jpg")  # the same bytes under another name
    resaved = np.asarray(Image.open(source.with_name("OAS1_0002_MR1_mpr-1_100.jpg"))).astype(np.int16) + 2
    save_image(folder / "OAS1_0022_MR1_mpr-1_100.png", np.clip(resaved, 0, 255).astype(np.uint8))  # PNG, brighter
    save_image(folder / "OAS1_0001_MR1_mpr-1_150.jpg", simple_image(999))  # a new image of training subject 1
    frame, record = external.external_manifest(root, CLASSES, manifest)
    reasons = {Path(item["path"]).name: item["reason"] for item in record["copies_left_out"]}
    assert set(reasons) == {"OAS1_0021_MR1_mpr-1_100.jpg", "OAS1_0022_MR1_mpr-1_100.png",
                            "OAS1_0001_MR1_mpr-1_150.jpg"}
    assert reasons["OAS1_0021_MR1_mpr-1_100.jpg"].startswith("exact copy")
    assert reasons["OAS1_0022_MR1_mpr-1_100.png"].startswith("near copy")
    assert "OAS1_0002_MR1_mpr-1_100.jpg" in reasons["OAS1_0022_MR1_mpr-1_100.png"]
    assert reasons["OAS1_0001_MR1_mpr-1_150.jpg"] == "subject id also in the training data: OAS1_0001"
    assert len(frame) == 12 and not frame["path"].str.contains("OAS1_002|OAS1_0001").any()


def test_the_training_set_itself_is_refused(tmp_path):
    manifest = _training_manifest(tmp_path / "train")
    with pytest.raises(external.ExternalDataError, match="copies the training data"):
        external.external_manifest(tmp_path / "train", CLASSES, manifest)


def test_mostly_copied_set_is_scored_with_a_warning(tmp_path):
    manifest = _training_manifest(tmp_path / "train")
    root = tmp_path / "mostly"
    shutil.copytree(tmp_path / "train", root)
    save_image(root / "Data" / OASIS_FOLDERS["NonDemented"] / "OAS1_0031_MR1_mpr-1_100.jpg", simple_image(31_000))
    frame, record = external.external_manifest(root, CLASSES, manifest)
    assert len(frame) == 1 and "most likely the same data set" in record["warnings"][0]


def test_unknown_external_class_is_named(tmp_path):
    manifest = _training_manifest(tmp_path / "train")
    root = _external_tree(tmp_path / "external")
    with pytest.raises(external.ExternalDataError, match=r"\['MildDemented'\].*expected a subset"):
        external.external_manifest(root, CLASSES[:2], manifest[manifest["label"] != "MildDemented"])
    make_oasis_tree(root, {"ModerateDemented": [15]})
    with pytest.raises(external.ExternalDataError, match="ModerateDemented"):
        external.external_manifest(root, CLASSES[:3], manifest)


def _predictions(subjects: int, correct: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), subjects // 4)
    predicted = labels if correct else rng.integers(0, 4, len(labels))
    probabilities = np.full((len(labels), 4), 0.1)
    probabilities[np.arange(len(labels)), predicted] = 0.7
    frame = pd.DataFrame({"subject_id": [f"s{index}" for index in range(len(labels))], "label_index": labels})
    return frame.assign(**{f"prob_{name}": probabilities[:, index] for index, name in enumerate(CLASSES)})


def test_drop_interval_excludes_zero_for_a_planted_drop():
    row = external.drop_row(_predictions(40, True, 0), _predictions(80, False, 1), CLASSES, "subject", 0)
    assert row["site_a"] == 1.0 and row["external"] < 0.5
    assert row["drop_low"] > 0 and row["verdict"] == "drop shown"
    few = external.drop_row(_predictions(8, True, 0), _predictions(80, False, 1), CLASSES, "subject", 0)
    assert few["drop_low"] > 0 and few["verdict"] == "too few subjects"  # 8 subjects: the interval means little


def test_drop_interval_covers_zero_when_sites_agree():
    site_a, site_b = _predictions(40, False, 2), _predictions(40, False, 2)
    row = external.drop_row(site_a, site_b.assign(subject_id="b" + site_b["subject_id"]), CLASSES, "slice", 0)
    assert row["drop"] == pytest.approx(0.0) and row["drop_low"] < 0 < row["drop_high"]
    assert row["verdict"] == "no drop shown"


def test_external_source_follows_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("ALZ_DATA_DIR", raising=False)
    monkeypatch.delenv("ALZ_COHORT_VERSION", raising=False)
    default = config.load_settings("smoke")
    assert external.external_source(default)["kind"] == "site_b"
    assert external.external_source(default)["path"].endswith("smoke-site-B")
    monkeypatch.setenv("ALZ_COHORT_VERSION", "1")
    assert "no second site" in external.external_source(config.load_settings("smoke"))["reason"]
    named = config.load_settings("smoke", data_dir=tmp_path, external_data=tmp_path)
    assert external.external_source(named) == {"kind": "user", "path": str(tmp_path),
                                               "label": f"external data set {tmp_path.name}"}
    assert "--external-data" in external.external_source(config.load_settings("smoke", data_dir=tmp_path))["reason"]
    with pytest.raises(ValueError, match="EXTERNAL_DATA.*not a folder"):
        config.load_settings("smoke", external_data=tmp_path / "missing")


def test_site_b_profile_keeps_every_class():
    profile = external.site_b_profile(config.get_profile("cpu"))
    assert profile.cohort_subjects == {"NonDemented": 28, "VeryMildDemented": 20, "MildDemented": 14,
                                       "ModerateDemented": 10}
    assert min(external.site_b_profile(config.get_profile("smoke")).cohort_subjects.values()) >= 2
