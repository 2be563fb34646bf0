"""The synthetic cohort: layout, counts, names, determinism, masks aligned with the atrophy, safe reuse."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from alzlib import config, synthetic

TINY = config.Profile(name="tiny", image_size=32, batch_size=4, epochs=1, warmup_epochs=1,
                      cohort_subjects={"NonDemented": 3, "VeryMildDemented": 2, "MildDemented": 2,
                                       "ModerateDemented": 2},
                      slices_per_subject=3, cohort_version="1")  # this file tests version 1


def file_hashes(root: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file under `root`."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return synthetic.generate_cohort(tmp_path_factory.mktemp("cohort") / "tiny", TINY, seed=3)


# Version 1 as generated before cohort versions existed (commit b840b33), TINY at seed 3: the metadata file, the
# first three subjects' rendered arrays, and those arrays' per-slice sums and masked-pixel counts.
V1_METADATA_SHA256 = "9e211a3b18a3acb508177cf90343713010a6c0401de6bfb61f2eeb769bd0005f"
V1_ARRAYS_SHA256 = "5dfe6e2521437b887ceaec9d0a93e11a36a22a5ed0e12bb50d228cfe1e42b50b"
V1_SLICE_SUMS = [[2695467, 2722756, 2765527], [3399749, 3496527, 3477420], [3366459, 3441830, 3515635]]
V1_MASKED_PIXELS = [21489, 4856, 1654]


def test_version_1_is_unchanged(cohort):
    assert hashlib.sha256((cohort / "metadata.csv").read_bytes()).hexdigest() == V1_METADATA_SHA256
    record = json.loads((cohort / "cohort.json").read_text())
    assert (record["cohort_version"], record["site"]) == ("1", "A") and "acquisition" not in record
    digest, sums, masked = hashlib.sha256(), [], []
    for subject in synthetic.draw_subjects(TINY, seed=3)[:3]:
        images, masks = synthetic.render_subject(subject, 3, 3)
        digest.update(images.tobytes())
        digest.update(masks.tobytes())
        sums.append(images.reshape(3, -1).sum(axis=1).tolist())
        masked.append(int((masks > 0).sum()))
    if digest.hexdigest() != V1_ARRAYS_SHA256:
        # Byte-identical here; another CPU or BLAS may round a float differently and move a grey level or two.
        np.testing.assert_allclose(sums, V1_SLICE_SUMS, rtol=2e-4)
        np.testing.assert_allclose(masked, V1_MASKED_PIXELS, rtol=2e-3)


def test_parse_synthetic_name_reads_subject_and_slice():
    assert synthetic.parse_synthetic_name("SYN0001_slice07.jpg") == ("SYN0001", 7)
    assert synthetic.parse_synthetic_name("/data/masks/MildDemented/SYN0140_slice31.png") == ("SYN0140", 31)
    for name in ("nonDem12.jpg", "SYN01_slice07.jpg", "SYN0001_slice7.jpg", "SYN0001_slice07.txt",
                 "OAS1_0308_MR1_mpr-1_101.jpg"):
        assert synthetic.parse_synthetic_name(name) is None


def test_cohort_has_the_profile_counts_layout_and_formats(cohort):
    record = json.loads((cohort / "cohort.json").read_text())
    assert record["synthetic"] is True and record["seed"] == 3
    assert record["generator_version"] == synthetic.GENERATOR_VERSION
    frame = pd.read_csv(cohort / "metadata.csv")
    assert list(frame.columns) == list(synthetic.METADATA_COLUMNS)
    subjects = frame.groupby("label")["subject_id"].nunique().to_dict()
    assert subjects == TINY.cohort_subjects
    assert frame.groupby("subject_id").label.nunique().max() == 1  # a subject has one class
    assert (frame.groupby("subject_id").size() == TINY.slices_per_subject).all()
    assert record["n_images"] == len(frame) == sum(TINY.cohort_subjects.values()) * TINY.slices_per_subject
    assert {name: counts["subjects"] for name, counts in record["counts"].items()} == TINY.cohort_subjects
    images = sorted((cohort / "images").rglob("*.jpg"))
    assert sorted(str(path.relative_to(cohort)) for path in images) == sorted(frame.file)
    with Image.open(images[0]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "L", (176, 208))


def test_file_names_parse_back_to_the_metadata(cohort):
    frame = pd.read_csv(cohort / "metadata.csv")
    for row in frame.itertuples():
        assert synthetic.parse_synthetic_name(row.file) == (row.subject_id, row.slice_index)
        assert synthetic.parse_synthetic_name(row.mask_file) == (row.subject_id, row.slice_index)
        assert Path(row.file).parent.name == Path(row.mask_file).parent.name == row.label


def test_subject_ids_carry_no_class_order():
    subjects = synthetic.draw_subjects(config.PROFILES["cpu"], seed=42)
    first_labels = [subject.label for subject in subjects[:20]]
    assert len(set(first_labels)) > 1


def test_stage_severity_grows_but_neighbouring_stages_overlap():
    subjects = synthetic.draw_subjects(config.PROFILES["full"], seed=42)
    frame = pd.DataFrame([{"label": subject.label, **subject.severity} for subject in subjects])
    means = frame.groupby("label")["medial_temporal"].mean().reindex(config.CLASS_NAMES)
    assert means.is_monotonic_increasing
    for lower, higher in zip(config.CLASS_NAMES[:-1], config.CLASS_NAMES[1:]):
        assert frame.loc[frame.label == lower, "ventricles"].max() > frame.loc[frame.label == higher,
                                                                                "ventricles"].min()


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tmp_path, monkeypatch, cohort):
    monkeypatch.setenv("ALZ_SYNTHETIC_WORKERS", "2")
    again = synthetic.generate_cohort(tmp_path / "again", TINY, seed=3)
    assert file_hashes(again) == file_hashes(cohort)
    monkeypatch.setenv("ALZ_SYNTHETIC_WORKERS", "1")
    other = synthetic.generate_cohort(tmp_path / "other", TINY, seed=4)
    images = {digest for name, digest in file_hashes(cohort).items() if name.endswith(".jpg")}
    assert images.isdisjoint(digest for name, digest in file_hashes(other).items() if name.endswith(".jpg"))


def test_masks_mark_exactly_where_atrophy_changed_the_image():
    severe = synthetic.Subject(5, "ModerateDemented", {"ventricles": 1.0, "cortex": 1.0, "medial_temporal": 1.0},
                               age_atrophy=0.3)
    healthy = synthetic.Subject(5, "NonDemented", {"ventricles": 0.0, "cortex": 0.0, "medial_temporal": 0.0},
                                age_atrophy=0.0)
    images, masks = synthetic.render_subject(severe, slices=4, seed=11)
    untouched, no_masks = synthetic.render_subject(healthy, slices=4, seed=11)  # same anatomy, pose and noise
    assert images.shape == masks.shape == (4, 208, 176) and masks.dtype == np.uint8
    assert not no_masks.any()
    assert set(np.unique(masks)) <= set(range(8))
    for bit in synthetic.MASK_BITS.values():
        assert ((masks & bit) > 0).sum() > 50
    change = np.abs(images.astype(int) - untouched.astype(int))
    assert change[masks > 0].mean() > 8 * change[masks == 0].mean()
    assert (untouched[masks > 0] > 0).all()  # masks lie inside the brain
    # Atrophy replaces tissue by CSF: the masked pixels get darker.
    assert images[masks > 0].mean() < untouched[masks > 0].mean() - 20


def test_mask_files_align_with_their_images(cohort):
    frame = pd.read_csv(cohort / "metadata.csv")
    for row in frame.itertuples():
        with Image.open(cohort / row.file) as image, Image.open(cohort / row.mask_file) as mask:
            pixels, bits = np.asarray(image), np.asarray(mask)
        assert bits.shape == pixels.shape == (208, 176)
        brain = ndimage.binary_dilation(pixels > 3, iterations=2)
        assert not (bits[~brain]).any()


def test_failed_generation_leaves_no_cohort_and_no_partial_folder(tmp_path, monkeypatch):
    calls = []

    def fail_on_second(task):
        calls.append(task)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return []

    monkeypatch.setattr(synthetic, "_write_subject", fail_on_second)
    monkeypatch.setenv("ALZ_SYNTHETIC_WORKERS", "1")
    with pytest.raises(RuntimeError, match="killed"):
        synthetic.generate_cohort(tmp_path / "cohort", TINY, seed=1)
    assert list(tmp_path.iterdir()) == []
    assert not synthetic.is_synthetic_cohort(tmp_path / "cohort")


def test_ensure_cohort_reuses_a_matching_cohort(cohort, monkeypatch):
    def must_not_run(*arguments, **keywords):
        raise AssertionError("generate_cohort called for a matching cohort")

    monkeypatch.setattr(synthetic, "generate_cohort", must_not_run)
    assert synthetic.ensure_cohort(TINY, 3, cohort) == cohort


def test_ensure_cohort_regenerates_a_cohort_of_another_seed(tmp_path):
    small = config.Profile(name="small", image_size=32, batch_size=4, epochs=1, warmup_epochs=1,
                           cohort_subjects={name: 1 for name in config.CLASS_NAMES}, slices_per_subject=1,
                           cohort_version="1")
    folder = synthetic.ensure_cohort(small, 1, tmp_path / "cohort")
    assert json.loads((folder / "cohort.json").read_text())["seed"] == 1
    synthetic.ensure_cohort(small, 2, folder)
    assert json.loads((folder / "cohort.json").read_text())["seed"] == 2
    assert [path.name for path in tmp_path.iterdir()] == ["cohort"]


def test_ensure_cohort_refuses_to_touch_a_folder_that_is_not_a_cohort(tmp_path):
    folder = tmp_path / "my_scans"
    (folder / "NonDemented").mkdir(parents=True)
    precious = folder / "NonDemented" / "scan.jpg"
    precious.write_bytes(b"not generated here")
    with pytest.raises(FileExistsError, match="my_scans"):
        synthetic.ensure_cohort(TINY, 3, folder)
    (folder / "cohort.json").write_text(json.dumps({"synthetic": False}))
    with pytest.raises(FileExistsError, match="no synthetic cohort"):
        synthetic.generate_cohort(folder, TINY, 3)
    assert precious.read_bytes() == b"not generated here"
    assert not synthetic.is_synthetic_cohort(folder)


def test_unknown_class_in_profile_is_rejected():
    bad = config.Profile(name="bad", image_size=32, batch_size=4, epochs=1, warmup_epochs=1,
                         cohort_subjects={"Demented": 3}, slices_per_subject=2)
    with pytest.raises(ValueError, match="Demented"):
        synthetic.draw_subjects(bad, seed=0)
    with pytest.raises(ValueError, match="slices_per_subject"):
        synthetic.slice_positions(0)


def test_slices_cover_the_medial_temporal_lobe():
    for profile in config.PROFILES.values():
        positions = synthetic.slice_positions(profile.slices_per_subject)
        assert positions.min() <= -10 and positions.max() >= -2
        assert np.all(np.diff(positions) > 0)


def test_plot_class_examples_shows_every_class_labelled_synthetic(cohort):
    figure = synthetic.plot_class_examples(cohort, slices_per_class=1)
    assert "synthetic cohort" in figure._suptitle.get_text().lower()
    titles = [axis.get_title() for axis in figure.axes]
    for name in config.CLASS_NAMES:
        assert any(title.startswith(name) for title in titles)
    with pytest.raises(FileNotFoundError):
        synthetic.plot_class_examples(cohort / "images")


def test_calibration_baseline_reports_a_subject_split_score(cohort):
    result = synthetic.calibration_baseline(cohort, seed=0, size=16)
    assert 0.0 <= result["balanced_accuracy"] <= 1.0
    assert result["n_images"] == 27 and result["n_subjects"] == 9 and result["n_classes"] == 4
    assert result["chance_balanced_accuracy"] == 0.25 and result["folds"] == 2
