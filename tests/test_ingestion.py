"""Ingestion on fixture trees in every real layout, every kind of bad input, grouping quality and determinism."""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

import fixtures
from alzlib import config, grouping, ingestion
from alzlib.ingestion import IngestionError

KAGGLE_SCANS = {"NonDemented": 3, "VeryMildDemented": 3, "MildDemented": 3, "ModerateDemented": 3}


def settings_for(data_dir: Path, outputs: Path, monkeypatch, split: str = "subject", seed: int = 7):
    """Return smoke settings reading `data_dir` and writing under `outputs`."""
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(outputs))
    return config.load_settings("smoke", seed, data_dir, split)


def ingest(data_dir: Path, tmp_path: Path, monkeypatch, split: str = "subject", seed: int = 7):
    """Run build_manifest on `data_dir`; return (manifest, report, settings)."""
    settings = settings_for(data_dir, tmp_path / "outputs", monkeypatch, split, seed)
    manifest, report = ingestion.build_manifest(settings)
    return manifest, report, settings


def png_header(width: int, height: int) -> bytes:
    """Return a PNG whose header claims width x height but whose data is tiny (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    """A Kaggle 4-class tree: 3 scans of 10 slices per class, every 5th slice in the shipped test folder."""
    root = tmp_path_factory.mktemp("kaggle") / "Alzheimer_s Dataset"
    return root, fixtures.make_kaggle_tree(root, KAGGLE_SCANS, slices=10)


@pytest.fixture(scope="module")
def kaggle_run(kaggle, tmp_path_factory):
    """The Kaggle tree ingested once with the subject split (module-scoped: rendering scans takes seconds)."""
    root, truth = kaggle
    monkeypatch = pytest.MonkeyPatch()
    try:
        manifest, report, settings = ingest(root, tmp_path_factory.mktemp("run"), monkeypatch)
    finally:
        monkeypatch.undo()
    return manifest, report, settings, truth


# ------------------------------------------------------------------------------------------ layouts


def test_kaggle_tree_groups_scans_by_similarity_and_writes_both_files(kaggle_run):
    manifest, report, settings, truth = kaggle_run
    assert settings.paths.manifest.is_file() and settings.paths.ingestion_report.is_file()
    assert list(manifest.columns) == list(ingestion.MANIFEST_COLUMNS)
    assert len(manifest) == len(truth) and set(manifest["subject_source"]) == {"similarity"}
    assert report["classes"] == list(config.CLASS_NAMES) and report["task"] == "4-class"
    assert report["data_source"] == {"kind": "class_folders", "synthetic": False,
                                     "layout": "4-class class folders with shipped test/train folders"}
    true_scans = manifest["path"].map(truth)
    assert adjusted_rand_score(true_scans, manifest["subject_id"]) >= 0.9
    # What matters most: no true scan straddles two splits of the subject split.
    assert (manifest.groupby(true_scans)["split"].nunique() == 1).all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("label")["split"].nunique().eq(3).all()
    assert report["subject_grouping"]["seconds"] >= 0 and report["subject_grouping"]["groups"] >= 12


def test_kaggle_shipped_split_is_audited_as_leaking_and_subject_split_is_not(kaggle_run):
    manifest, report, _, _ = kaggle_run
    subject, shipped = report["leakage_audit"]["subject"], report["leakage_audit"]["shipped"]
    assert report["split_policy"] == "subject"
    assert subject["subjects_shared"] == 0 and not subject["leaks"]
    assert shipped["subjects_shared"] == shipped["subjects_total"] and shipped["leaks"]
    # Raw-pixel 1-NN: every shipped test slice has its neighbouring slice in train; subject-split test scans don't.
    assert shipped["pixel_neighbours"]["test"]["near_identical_share"] >= 0.9
    assert shipped["pixel_neighbours"]["test"]["nearest_neighbour_accuracy"] == 1.0
    assert subject["pixel_neighbours"]["test"]["near_identical_share"] <= 0.2
    assert set(manifest["shipped_split"]) == {"train", "test"}
    table = ingestion.audit_frame(report)
    assert list(table.columns) == ["split_policy", "check", "value", "in_use"]
    assert set(table["split_policy"]) == {"subject", "shipped"}
    assert table.loc[table["split_policy"] == "subject", "in_use"].all()
    shared = table[(table["split_policy"] == "shipped") & (table["check"] == "subjects shared between splits")]
    assert shared["value"].iloc[0] == "12 of 12"


def test_kaggle_shipped_policy_keeps_the_shipped_test_and_carves_val_from_train(kaggle, tmp_path, monkeypatch):
    root, _ = kaggle
    manifest, report, _ = ingest(root, tmp_path, monkeypatch, split="shipped")
    assert report["split_policy"] == "shipped"
    assert (manifest.loc[manifest["shipped_split"] == "test", "split"] == "test").all()
    assert set(manifest.loc[manifest["shipped_split"] == "train", "split"]) == {"train", "val"}
    assert report["leakage_audit"]["shipped"]["leaks"]


def test_oasis_tree_parses_subjects_and_slices(tmp_path, monkeypatch):
    subjects = {"NonDemented": [1, 2, 3, 4], "VeryMildDemented": [5, 6, 7], "MildDemented": [8, 9, 10],
                "ModerateDemented": [11, 12]}
    truth = fixtures.make_oasis_tree(tmp_path / "oasis", subjects)
    manifest, report, _ = ingest(tmp_path / "oasis", tmp_path, monkeypatch)
    assert set(manifest["subject_source"]) == {"filename:oasis"}
    assert (manifest["subject_id"] == manifest["path"].map(truth)).all()
    assert sorted(manifest["slice_index"].unique()) == [100, 101, 102]
    assert set(manifest["original_folder"]) == set(fixtures.OASIS_FOLDERS.values())
    # Moderate has 2 subjects: it cannot be split three ways; it stays in train and the report says so.
    assert set(manifest.loc[manifest["label"] == "ModerateDemented", "split"]) == {"train"}
    assert any("ModerateDemented" in warning and "2 subject" in warning for warning in report["split_warnings"])
    assert report["leakage_audit"]["shipped"] is None


def test_adni_tree_is_a_two_class_task_with_patient_ids(tmp_path, monkeypatch):
    patients = {"train": {"AD": [101, 102, 103], "NC": [201, 202, 203]}, "test": {"AD": [104], "NC": [204]}}
    truth = fixtures.make_adni_tree(tmp_path / "adni", patients, size=(120, 128))
    manifest, report, _ = ingest(tmp_path / "adni", tmp_path, monkeypatch)
    assert report["task"] == "2-class" and report["classes"] == ["NC", "AD"]
    assert set(manifest["subject_source"]) == {"filename:adni"}
    assert (manifest["subject_id"] == manifest["path"].map(truth)).all()
    assert manifest.loc[manifest["label"] == "AD", "label_index"].eq(1).all()
    assert report["leakage_audit"]["shipped"]["subjects_shared"] == 0


def test_hugging_face_parquet_rows_are_ingested_and_loadable(tmp_path, monkeypatch):
    truth = fixtures.make_hf_parquet(tmp_path / "hf", {name: 2 for name in config.CLASS_NAMES}, slices=5)
    manifest, report, _ = ingest(tmp_path / "hf", tmp_path, monkeypatch)
    assert report["data_source"]["kind"] == "parquet" and len(manifest) == len(truth)
    assert manifest["path"].str.contains(r"\.parquet#row=\d+$").all()
    assert set(manifest["shipped_split"]) == {"train", "test"}
    assert set(manifest["subject_source"]) == {"similarity"}
    assert adjusted_rand_score(manifest["path"].map(truth), manifest["subject_id"]) >= 0.9
    image = ingestion.load_image(manifest["path"].iloc[0])
    assert image.dtype == np.uint8 and image.shape == (128, 128)


def test_synthetic_cohort_is_detected_by_its_marker(tmp_path, monkeypatch):
    truth = fixtures.make_synthetic_cohort(tmp_path / "cohort", {name: 3 for name in config.CLASS_NAMES})
    manifest, report, _ = ingest(tmp_path / "cohort", tmp_path, monkeypatch)
    assert report["data_source"] == {"kind": "synthetic", "layout": "synthetic cohort", "synthetic": True}
    assert set(manifest["subject_source"]) == {"filename:synthetic"}
    assert (manifest["subject_id"] == manifest["path"].map(truth)).all()
    assert manifest["mask_path"].map(lambda path: Path(path).is_file()).all()
    assert sorted(manifest["slice_index"].unique()) == [0, 1, 2]
    assert manifest.groupby("subject_id")["split"].nunique().eq(1).all()


def test_reupload_folder_names_map_and_shipped_policy_needs_a_shipped_split(tmp_path, monkeypatch):
    fixtures.make_reupload_tree(tmp_path / "reupload", {name: 1 for name in config.CLASS_NAMES}, slices=3)
    manifest, _, _ = ingest(tmp_path / "reupload", tmp_path, monkeypatch)
    assert dict(zip(manifest["original_folder"], manifest["label"])) == {
        folder: name for name, folder in fixtures.REUPLOAD_FOLDERS.items()}
    with pytest.raises(IngestionError, match="ships no train/test split"):
        ingest(tmp_path / "reupload", tmp_path, monkeypatch, split="shipped")


@pytest.mark.parametrize("folder, expected", [
    ("Non Demented", "NonDemented"), ("Non_Demented", "NonDemented"), ("nondemented", "NonDemented"),
    ("Very mild Dementia", "VeryMildDemented"), ("1 Very Mild", "VeryMildDemented"), ("2 Mild", "MildDemented"),
    ("Mild Dementia", "MildDemented"), ("3 Moderate", "ModerateDemented"), ("Moderate_Demented", "ModerateDemented"),
    ("Normal", "NonDemented"), ("CN", "NonDemented"), ("AD", "AD"), ("MCI", None), ("Demented", None)])
def test_folder_name_variants_map_to_canonical_classes(folder, expected):
    result = ingestion.canonical_class(folder)
    assert (result[1] if result else None) == expected


def test_normal_folders_become_nc_in_a_two_class_set(tmp_path):
    assert ingestion.resolve_classes(["CN", "AD"], tmp_path) == ("2-class", {"AD": "AD", "CN": "NC"})
    assert ingestion.resolve_classes(["Normal", "Mild"], tmp_path)[1] == {"Mild": "MildDemented",
                                                                         "Normal": "NonDemented"}


# ------------------------------------------------------------------------------------------ bad layouts


def test_missing_data_folder_names_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        ingest(tmp_path / "nowhere", tmp_path, monkeypatch)


def test_empty_data_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "empty" / "NonDemented").mkdir(parents=True)
    with pytest.raises(IngestionError, match="empty.*expected class folders"):
        ingest(tmp_path / "empty", tmp_path, monkeypatch)


def test_images_without_class_folders_are_refused(tmp_path, monkeypatch):
    for index in range(3):
        fixtures.save_image(tmp_path / "flat" / f"img{index}.png", fixtures.simple_image(index))
    with pytest.raises(IngestionError, match="No class folders"):
        ingest(tmp_path / "flat", tmp_path, monkeypatch)


def test_unknown_class_folders_are_all_listed(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented", "MildDemented", "MCI", "misc"])
    with pytest.raises(IngestionError, match=r"\['MCI', 'misc'\]"):
        ingest(root, tmp_path, monkeypatch)


def test_mixed_two_and_four_class_folders_are_refused(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented", "MildDemented", "AD"])
    with pytest.raises(IngestionError, match=r"mixes 4-class folders \['MildDemented'\] with 2-class folders \['AD'\]"):
        ingest(root, tmp_path, monkeypatch)


def test_parquet_with_missing_columns_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "hf").mkdir()
    pd.DataFrame({"pixels": [b"x"], "label": [0]}).to_parquet(tmp_path / "hf" / "train.parquet")
    with pytest.raises(IngestionError, match=r"train\.parquet lacks column\(s\) \['image'\]"):
        ingest(tmp_path / "hf", tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------ bad files


def test_bad_files_are_skipped_with_their_reason_and_the_run_goes_on(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented", "MildDemented"], images_per_folder=4)
    expected = fixtures.write_bad_files(root / "MildDemented")
    (root / "MildDemented" / "bomb.png").write_bytes(png_header(30000, 30000))
    (root / "MildDemented" / "huge.png").write_bytes(png_header(7000, 7000))
    (root / "NonDemented" / "readme.txt").write_text("notes")
    manifest, report, _ = ingest(root, tmp_path, monkeypatch)
    reasons = {Path(item["path"]).name: item["reason"] for item in report["skipped"]}
    for name, word in {**expected, "bomb.png": "too large", "huge.png": "too large",
                       "readme.txt": "not an image file"}.items():
        assert word in reasons[name], (name, reasons[name])
    assert "decompression-bomb" in reasons["huge.png"] and "7000x7000" in reasons["huge.png"]
    assert len(manifest) == 8 and report["counts"]["skipped"] == 7


def test_accepted_variants_are_converted_to_8_bit_greyscale_and_recorded(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented", "MildDemented"], images_per_folder=3)
    modes = fixtures.write_accepted_variants(root / "MildDemented")
    manifest, report, _ = ingest(root, tmp_path, monkeypatch)
    rows = manifest.set_index(manifest["path"].map(lambda path: Path(path).name))
    for name, mode in modes.items():
        assert rows.loc[name, "mode"] == mode
    converted = {Path(item["path"]).name: item["conversion"] for item in report["conversions"]}
    assert set(converted) == set(modes) and "rescaled" in converted["sixteen.png"]
    sixteen = ingestion.load_image(rows.loc["sixteen.png", "path"])
    assert sixteen.dtype == np.uint8 and sixteen.min() == 0 and sixteen.max() == 255
    assert ingestion.load_image(rows.loc["rgba.png", "path"]).shape == (64, 64)


def test_load_image_names_a_bad_file(tmp_path):
    fixtures.write_bad_files(tmp_path)
    with pytest.raises(ingestion.UnusableImage, match="truncated.jpg: truncated"):
        ingestion.load_image(tmp_path / "truncated.jpg")
    with pytest.raises(FileNotFoundError, match="gone.png does not exist"):
        ingestion.load_image(tmp_path / "gone.png")


def test_undecodable_parquet_bytes_are_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "hf" / "data"
    folder.mkdir(parents=True)
    images = [{"bytes": fixtures.encode_image(fixtures.simple_image(index)), "path": None} for index in range(4)]
    images.append({"bytes": b"\x00garbage", "path": None})
    pd.DataFrame({"image": images, "label": [0, 2, 0, 2, 0]}).to_parquet(folder / "train-00000.parquet")
    manifest, report, _ = ingest(tmp_path / "hf", tmp_path, monkeypatch)
    assert len(manifest) == 4
    assert report["skipped"][0]["path"].endswith("#row=4") and "not an image" in report["skipped"][0]["reason"]


def test_duplicates_are_reported_and_grouped_into_one_subject(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented", "MildDemented"], images_per_folder=6,
                                    size=(128, 128))
    shutil.copy(root / "NonDemented" / "img0.png", root / "NonDemented" / "copy.png")
    # A near duplicate: the same picture downscaled and re-encoded (like the 128 px re-upload of Kaggle).
    Image.open(root / "NonDemented" / "img1.png").resize((100, 100)).save(root / "NonDemented" / "recoded.jpg")
    manifest, report, _ = ingest(root, tmp_path, monkeypatch)
    assert report["duplicates"]["exact_groups"] == 1 and report["duplicates"]["exact_images"] == 2
    assert report["duplicates"]["near_groups"] == 2 and report["duplicates"]["near_images"] == 4
    subjects = manifest.set_index(manifest["path"].map(lambda path: Path(path).name))["subject_id"]
    subjects = subjects[manifest["label"].to_numpy() == "NonDemented"]
    assert subjects["copy.png"] == subjects["img0.png"] and subjects["recoded.jpg"] == subjects["img1.png"]
    audit = report["leakage_audit"]["subject"]
    assert audit["exact_duplicates_across_splits"]["groups"] == 0
    assert audit["near_duplicates_across_splits"]["groups"] == 0


def test_identical_images_under_two_classes_are_dropped_with_their_reason(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented", "MildDemented"], images_per_folder=6)
    shutil.copy(root / "NonDemented" / "img0.png", root / "MildDemented" / "copy.png")
    shutil.copy(root / "NonDemented" / "img1.png", root / "NonDemented" / "same_class.png")
    manifest, report, _ = ingest(root, tmp_path, monkeypatch)
    names = set(manifest["path"].map(lambda path: Path(path).name + "@" + Path(path).parent.name))
    assert "img0.png@NonDemented" not in names and "copy.png@MildDemented" not in names
    assert "same_class.png@NonDemented" in names and len(manifest) == 12
    reasons = {item["path"]: item["reason"] for item in report["skipped"]}
    original, copy = str(root.resolve() / "NonDemented" / "img0.png"), str(root.resolve() / "MildDemented" / "copy.png")
    assert reasons[original] == (f"same bytes as {copy} filed under class MildDemented and NonDemented: "
                                 f"label contradicts itself")
    assert reasons[copy].startswith(f"same bytes as {original} ")
    duplicates = report["duplicates"]
    assert duplicates["contradictory_groups"] == 1 and duplicates["contradictory_images_dropped"] == 2
    # The same-class copy stays, as one exact group; the count the notebook prints includes the dropped copies.
    assert duplicates["exact_groups"] == 1 and report["counts"]["skipped"] == len(report["skipped"]) == 2
    assert report["counts"]["files_seen"] == 14


def test_every_image_contradicted_is_one_line_error(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented"], images_per_folder=2)
    shutil.copytree(root / "NonDemented", root / "MildDemented")
    with pytest.raises(IngestionError, match="identical copy filed under another class") as error:
        ingest(root, tmp_path, monkeypatch)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ links and volumes


def test_symbolic_links_are_followed_and_dead_ends_recorded(tmp_path, monkeypatch):
    elsewhere = fixtures.make_class_tree(tmp_path / "elsewhere", ["MildDemented", "spare"], images_per_folder=3,
                                      seed=1)
    root = tmp_path / "data"
    fixtures.make_class_tree(root, ["NonDemented"], images_per_folder=3)
    (root / "MildDemented").symlink_to(elsewhere / "MildDemented", target_is_directory=True)
    (root / "NonDemented" / "linked.png").symlink_to(elsewhere / "spare" / "img2.png")
    (root / "NonDemented" / "gone.png").symlink_to(tmp_path / "deleted.png")
    (root / "NonDemented" / "up").symlink_to(root, target_is_directory=True)  # a loop back to an ancestor
    manifest, report, _ = ingest(root, tmp_path, monkeypatch)
    rows = manifest.set_index(manifest["path"].map(lambda path: str(Path(path).relative_to(root.resolve()))))
    assert (rows.loc[[f"MildDemented/img{index}.png" for index in range(3)], "label"] == "MildDemented").all()
    assert rows.loc["NonDemented/linked.png", "label"] == "NonDemented" and len(manifest) == 7
    reasons = {Path(item["path"]).name: item["reason"] for item in report["skipped"]}
    assert reasons["gone.png"] == f"broken symbolic link to {tmp_path / 'deleted.png'}"
    assert "loops back to a folder above it" in reasons["up"] and len(reasons) == 2


def test_a_folder_of_broken_links_is_refused_naming_one(tmp_path, monkeypatch):
    (tmp_path / "data" / "NonDemented").mkdir(parents=True)
    (tmp_path / "data" / "NonDemented" / "a.jpg").symlink_to(tmp_path / "unmounted" / "a.jpg")
    with pytest.raises(IngestionError, match=r"empty \(only 1 unreadable entries, e.g. .*a\.jpg: broken symbolic"):
        ingest(tmp_path / "data", tmp_path, monkeypatch)


@pytest.mark.parametrize("name, expected", [("sub-01_T1w.nii.gz", ".nii.gz"), ("x.JPG", ".jpg"), ("README", ""),
                                            ("1.5T scan.nii", ".nii"), ("notes.tar.gz", ".tar.gz")])
def test_file_extension_keeps_both_parts_of_a_compressed_one(name, expected):
    assert ingestion.file_extension(Path(name)) == expected


def test_volumes_only_get_the_export_hint(tmp_path, monkeypatch):
    fixtures.write_volume_files(tmp_path / "data" / "NonDemented")
    fixtures.write_volume_files(tmp_path / "data" / "MildDemented")
    with pytest.raises(IngestionError, match=r"only 14 volume file\(s\) such as .*: this looks like 3D volumes "
                                             r"\(NIfTI/DICOM\): export 2D slices to PNG/JPEG first \(see README "
                                             r"'Your own data'\)") as error:
        ingest(tmp_path / "data", tmp_path, monkeypatch)
    assert "\n" not in str(error.value)


def test_volumes_beside_images_are_skipped_with_the_hint(tmp_path, monkeypatch):
    root = fixtures.make_class_tree(tmp_path / "data", ["NonDemented", "MildDemented"], images_per_folder=3)
    extensions = fixtures.write_volume_files(root / "MildDemented")
    manifest, report, _ = ingest(root, tmp_path, monkeypatch)
    reasons = {Path(item["path"]).name: item["reason"] for item in report["skipped"]}
    assert len(manifest) == 6 and set(reasons) == set(extensions)
    for name, extension in extensions.items():
        assert reasons[name] == f"3D volume file ({extension}), not a 2D image: {ingestion.VOLUME_HINT}"


# ------------------------------------------------------------------------------------------ shipped split


def test_shipped_policy_on_train_only_tree_is_one_line_error_naming_the_folder(tmp_path, monkeypatch):
    root = tmp_path / "kaggle"
    fixtures.make_oasis_tree(root / "train", {"NonDemented": [1, 2, 3], "MildDemented": [4, 5, 6]})
    with pytest.raises(IngestionError) as error:
        ingest(root, tmp_path, monkeypatch, split="shipped")
    assert str(error.value) == (f"SPLIT='shipped' but {root.resolve()} ships only train/ (no test/ folder or test "
                                f"file): use SPLIT='subject'.")


def test_subject_policy_on_train_only_tree_works_and_audits_the_partial_shipped_split(tmp_path, monkeypatch):
    root = tmp_path / "kaggle"
    fixtures.make_oasis_tree(root / "train", {"NonDemented": [1, 2, 3], "MildDemented": [4, 5, 6]})
    manifest, report, _ = ingest(root, tmp_path, monkeypatch)
    assert set(manifest["split"]) == {"train", "val", "test"} and set(manifest["shipped_split"]) == {"train"}
    assert report["leakage_audit"]["shipped"]["images_per_split"] == {"train": 18}
    assert not report["split_warnings"]


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_and_data_give_an_identical_manifest(tmp_path, monkeypatch):
    fixtures.make_synthetic_cohort(tmp_path / "cohort", {name: 4 for name in config.CLASS_NAMES})
    first, _, settings = ingest(tmp_path / "cohort", tmp_path / "a", monkeypatch, seed=3)
    second, _, _ = ingest(tmp_path / "cohort", tmp_path / "b", monkeypatch, seed=3)
    other, _, _ = ingest(tmp_path / "cohort", tmp_path / "c", monkeypatch, seed=4)

    def digest(frame: pd.DataFrame) -> str:
        return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()

    assert digest(first) == digest(second)
    assert digest(first) != digest(other)
    assert first["path"].is_monotonic_increasing
    assert digest(pd.read_parquet(settings.paths.manifest)) == digest(first)


def test_similarity_grouping_keeps_every_fixture_scan_whole():
    scans = fixtures.render_scans(8, 10, seed=11)
    images = [np.asarray(Image.open(io.BytesIO(fixtures.encode_image(slice_)))) for scan in scans for slice_ in scan]
    truth = np.repeat(np.arange(8), 10)
    thumbnails = np.stack([ingestion.thumbnail(image).ravel() for image in images])
    groups, details = grouping.similarity_groups(thumbnails, truth // 4)
    assert adjusted_rand_score(truth, groups) >= 0.9
    assert all(len(set(groups[truth == scan])) == 1 for scan in range(8))
    assert details["group_size_max"] == 10 and details["groups"] == 8


def test_coarse_to_fine_near_duplicate_search_finds_exactly_the_brute_force_pairs():
    scans = fixtures.render_scans(3, 6, seed=5, size=(96, 80))
    images = [slice_ for scan in scans for slice_ in scan]
    copies = [fixtures.encode_image(images[index]) for index in (0, 7, 13)]
    images += [ingestion.decode(content)[0] for content in copies]  # JPEG re-encoded copies
    features = grouping.unit_rows(np.stack([ingestion.thumbnail(image).ravel() for image in images]))
    firsts, seconds = ingestion.near_duplicate_pairs(features, block=5)
    similarity = features @ features.T
    expected = {(i, j) for i, j in zip(*np.nonzero(similarity >= ingestion.NEAR_DUPLICATE_CORRELATION)) if i < j}
    assert set(zip(firsts.tolist(), seconds.tolist())) == expected
    assert {(0, 18), (7, 19), (13, 20)} <= expected
