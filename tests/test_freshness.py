"""Stale inputs: the data fingerprint a manifest records, the check every notebook after 01 makes, and headlines."""

import os

import pandas as pd
import pytest

from alzlib import config, freshness, pipeline, storage


def make_data(folder, names=("NonDemented/a.jpg", "NonDemented/b.jpg", "MildDemented/c.jpg")):
    """Write a tiny data folder of placeholder files (their bytes do not matter to a fingerprint)."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"image " + name.encode())
    return folder


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def write_manifest(settings):
    """Write what notebook 01 writes, as far as the check reads it: a manifest and a report with the fingerprint."""
    storage.write_parquet(settings.paths.manifest, pd.DataFrame({"path": ["a.jpg"], "label": ["NonDemented"]}))
    storage.write_json(settings.paths.ingestion_report, {"fingerprint": freshness.manifest_fingerprint(settings)})


def test_fingerprint_is_stable_and_sees_added_removed_and_changed_files(tmp_path):
    data = make_data(tmp_path / "data")
    first = freshness.data_fingerprint(data)
    assert first == freshness.data_fingerprint(data) and first["files"] == 3
    (data / ".DS_Store").write_text("tool file")  # hidden entries are not data, as in ingestion
    assert freshness.data_fingerprint(data)["digest"] == first["digest"]
    (data / "MildDemented" / "d.jpg").write_bytes(b"new")
    added = freshness.data_fingerprint(data)
    assert added["files"] == 4 and added["digest"] != first["digest"]
    (data / "MildDemented" / "d.jpg").unlink()
    assert freshness.data_fingerprint(data)["digest"] == first["digest"]
    (data / "NonDemented" / "a.jpg").write_bytes(b"rewritten, longer than before")
    assert freshness.data_fingerprint(data)["digest"] != first["digest"]


def test_fingerprint_sees_a_file_touched_with_the_same_size(tmp_path):
    data = make_data(tmp_path / "data")
    first = freshness.data_fingerprint(data)
    path = data / "NonDemented" / "a.jpg"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert freshness.data_fingerprint(data)["digest"] != first["digest"]


def test_fingerprint_follows_links_and_stops_loops(tmp_path):
    data = make_data(tmp_path / "data")
    outside = make_data(tmp_path / "outside", ["ModerateDemented/e.jpg"])
    (data / "ModerateDemented").symlink_to(outside / "ModerateDemented")
    (data / "NonDemented" / "loop").symlink_to(data)
    assert freshness.data_fingerprint(data)["files"] == 4


def test_fingerprint_of_a_missing_folder_is_empty(tmp_path):
    assert freshness.data_fingerprint(tmp_path / "absent")["files"] == 0


def test_manifest_fingerprint_records_the_parameters_that_shape_the_manifest(tmp_path, outputs):
    data = make_data(tmp_path / "data")
    settings = config.load_settings("smoke", 7, data, "shipped")
    fingerprint = freshness.manifest_fingerprint(settings)
    assert {key: fingerprint[key] for key in freshness.MANIFEST_PARAMETERS} == {
        "data_dir": str(data.resolve()), "profile": "smoke", "split": "shipped", "seed": 7}
    assert fingerprint["digest"] != freshness.manifest_fingerprint(config.load_settings("smoke", 8, data,
                                                                                        "shipped"))["digest"]


def test_unchanged_data_passes(tmp_path, outputs):
    settings = config.load_settings("smoke", 42, make_data(tmp_path / "data"))
    write_manifest(settings)
    manifest, report = pipeline.load_manifest(settings)
    assert len(manifest) == 1 and report["fingerprint"]["data"]["files"] == 3


def test_load_manifest_with_another_data_dir_names_both(tmp_path, outputs):
    # Two folders with one name share a run folder (<name>-<split>): the fingerprint tells them apart.
    first = make_data(tmp_path / "one" / "data")
    write_manifest(config.load_settings("smoke", 42, first))
    second = make_data(tmp_path / "two" / "data")
    with pytest.raises(freshness.StaleManifest) as error:
        pipeline.load_manifest(config.load_settings("smoke", 42, second))
    message = str(error.value)
    assert f"was made from {first.resolve()} (split subject, seed 42), not {second.resolve()}" in message
    assert f"rerun from 01 (python run_all.py --from 01 --profile smoke --data {second})" in message
    assert str(outputs / "smoke" / "data-subject" / "manifest.parquet") in message


def test_load_manifest_with_another_seed_names_both_and_another_split_has_its_own_folder(tmp_path, outputs):
    data = make_data(tmp_path / "data")
    write_manifest(config.load_settings("smoke", 42, data))
    with pytest.raises(freshness.StaleManifest, match=r"\(split subject, seed 42\), not .*\(split subject, seed 3\)"
                                                      r".*--seed 3"):
        pipeline.load_manifest(config.load_settings("smoke", 3, data))
    with pytest.raises(FileNotFoundError, match=r"data-slice/manifest.parquet does not exist.*--split slice"):
        pipeline.load_manifest(config.load_settings("smoke", 42, data, "slice"))


def test_load_manifest_after_files_were_added_names_the_folder_and_the_counts(tmp_path, outputs):
    data = make_data(tmp_path / "data")
    settings = config.load_settings("smoke", 42, data)
    write_manifest(settings)
    make_data(data, ["VeryMildDemented/f.jpg"])
    with pytest.raises(freshness.StaleManifest, match=rf"made from {data.resolve()} when it held 3 files.*now holds "
                                                      r"4 files.*added, removed or changed.*rerun from 01"):
        pipeline.load_manifest(settings)


def test_a_manifest_without_a_fingerprint_is_stale(tmp_path, outputs):
    settings = config.load_settings("smoke", 42, make_data(tmp_path / "data"))
    write_manifest(settings)
    storage.write_json(settings.paths.ingestion_report, {"counts": {}})
    with pytest.raises(freshness.StaleManifest, match="before data fingerprints were recorded"):
        pipeline.load_manifest(settings)


def test_a_missing_manifest_says_how_to_make_it(tmp_path, outputs):
    with pytest.raises(FileNotFoundError, match="does not exist: run 01_dataset_ingestion"):
        pipeline.load_manifest(config.load_settings("smoke", 42, make_data(tmp_path / "data")))


def test_headline_round_trip(tmp_path, outputs):
    settings = config.load_settings("smoke", 42, make_data(tmp_path / "data"))
    path = pipeline.write_headline(settings, "01_dataset_ingestion", "3 images", ["a warning"])
    assert path == pipeline.headline_path(settings.paths, "01_dataset_ingestion")
    assert storage.read_json(path) == {"notebook": "01_dataset_ingestion", "headline": "3 images",
                                       "warnings": ["a warning"]}


def test_ingestion_headline_counts_and_warns(tmp_path, outputs):
    settings = config.load_settings("smoke", 42, make_data(tmp_path / "data"))
    storage.write_json(settings.paths.ingestion_report, {
        "counts": {"images": 720, "subjects": 180, "skipped": 2}, "split_policy": "subject",
        "split_warnings": ["the test split has no ModerateDemented subject"], "data_source": {"synthetic": True},
        "subject_grouping": {"confidence": {"level": "low", "reason": "few slices per scan"}},
        "leakage_audit": {"subject": {"leaks": True, "tripped_by": ["pixel neighbours"]}}})
    text, warnings = pipeline.ingestion_headline(settings)
    assert text == "720 images, 180 subjects, 2 skipped (synthetic cohort)"
    assert warnings[0] == "the test split has no ModerateDemented subject"
    assert "2 files skipped" in warnings[1] and "few slices per scan" in warnings[2]
    assert "pixel neighbours" in warnings[3]


def test_training_headline_reads_the_recipe_record(tmp_path, outputs):
    settings = config.load_settings("smoke", 42, make_data(tmp_path / "data"))
    storage.write_json(settings.paths.models / "resnet50.json", {
        "best_validation": {"val_balanced_accuracy": 0.5712}, "best_epoch": 3, "epochs_run": 4,
        "training_seconds": 301.2, "stopped_by_nan": False, "weights": "random (ImageNet weights unavailable)"})
    text, warnings = pipeline.training_headline(settings, "resnet50")
    assert text == "val balanced accuracy 0.57 (best epoch 3 of 4, 301 s training)"
    assert warnings == [f"resnet50 trained from random weights, not pretrained ones (why: 'weights' in "
                        f"{settings.paths.models / 'resnet50'}.json)"]
    assert pipeline.training_headline(settings, "efficientnetb0")[0] == "efficientnetb0 not trained"


def test_control_headline_reports_the_run_split_and_warns_only_where_a_control_misbehaves(tmp_path, outputs):
    settings = config.load_settings("smoke", 42, make_data(tmp_path / "data"))
    cell = {"labels": "random", "balanced_accuracy": 0.32, "low": 0.18, "high": 0.46, "chance": 0.25,
            "above_chance": False, "leaky_split": False}
    leaky = {**cell, "split_policy": "slice", "run_split": False, "leaky_split": True}
    path = settings.paths.evaluation / "leakage_demonstration.json"
    storage.write_json(path, {"cells": [{**cell, "split_policy": "subject", "run_split": True},
                                        {**leaky, "balanced_accuracy": 0.7, "low": 0.6, "high": 0.8,
                                         "above_chance": True}]})
    text, warnings = pipeline.control_headline(settings)
    assert text == "random-label control 0.32 [0.18, 0.46] (chance 0.25), leaky slice split 0.70 [0.60, 0.80]"
    assert warnings == []  # the leaky split's control tripping is the demonstration working
    storage.write_json(path, {"cells": [{**cell, "split_policy": "shipped", "run_split": True, "low": 0.3,
                                         "balanced_accuracy": 0.4, "above_chance": True}, leaky]})
    _, warnings = pipeline.control_headline(settings)
    assert warnings[0].startswith("random-label control above chance under this run's shipped split")
    assert warnings[1].startswith("random-label control did not detect the leak of the slice split")
