"""Tests of the EDA tables, figures and the shortcut audit on tiny manifests made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from alzlib import eda
from fixtures import save_image

CLASSES = ("NonDemented", "MildDemented")


def brain_slice(seed: int, size: tuple[int, int], background: int = 0, ventricles: float = 0.15) -> np.ndarray:
    """Return a uint8 head-like slice: a textured ellipse with dark ventricles on a flat background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size[0], 0:size[1]]
    y, x = rows / size[0] * 2 - 1, cols / size[1] * 2 - 1
    brain = (x / 0.75) ** 2 + (y / 0.8) ** 2 < 1
    holes = (x / ventricles) ** 2 + (y / 0.3) ** 2 < 1
    image = np.full(size, float(background))
    image[brain] = 110 + 30 * np.sin(9 * x[brain] + rng.uniform(0, 6)) + rng.normal(0, 6, brain.sum())
    image[brain & holes] = 30
    return np.clip(image + rng.normal(0, 1.5, size), 0, 255).astype(np.uint8)


def subject_split(number: int) -> str:
    """Return the split of the `number`-th subject of a class: 6 train, 2 val, 4 test of every 12."""
    return (["train"] * 6 + ["val"] * 2 + ["test"] * 4)[number % 12]


SOURCES = {
    # Class name -> how its source stores images: (height, width), suffix, format, name pattern, background.
    "kaggle": ((208, 176), ".jpg", "JPEG", "{prefix}{index}", 0),
    "oasis": ((240, 256), ".png", "PNG", "OAS1_{subject:04d}_MR1_mpr-1_{slice}", 40),
    "synthetic": ((104, 88), ".jpg", "JPEG", "SYN{subject:04d}_slice{slice:02d}", 0),
}
PREFIXES = {"NonDemented": "nonDem", "MildDemented": "mildDem"}


def make_manifest(root: Path, sources: dict[str, str], subjects: int = 12, slices: int = 3,
                  size: tuple[int, int] | None = None) -> pd.DataFrame:
    """Write images of each class in the style of its source; return their manifest (subject-level split)."""
    rows = []
    for label_index, (label, source) in enumerate(sources.items()):
        shape, suffix, image_format, pattern, background = SOURCES[source]
        shape = size or shape
        for number in range(subjects):
            subject = label_index * 100 + number + 1
            for slice_index in range(slices):
                stem = pattern.format(prefix=PREFIXES[label], index=number * slices + slice_index, subject=subject,
                                      slice=slice_index)
                # Anatomy differs by class (bigger ventricles when demented): the audit must not need it.
                pixels = brain_slice(subject * 10 + slice_index, shape, background, 0.12 + 0.1 * label_index)
                path = save_image(root / label / f"{stem}{suffix}", pixels)
                rows.append({"path": str(path), "label": label, "label_index": label_index,
                             "subject_id": f"S{subject:04d}", "subject_source": "filename:test",
                             "split": subject_split(number), "shipped_split": None, "sha256": "",
                             "width": shape[1], "height": shape[0], "mode": "L", "format": image_format,
                             "slice_index": slice_index, "mask_path": None, "original_folder": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def homogeneous(tmp_path_factory) -> pd.DataFrame:
    return make_manifest(tmp_path_factory.mktemp("homogeneous"), {name: "synthetic" for name in CLASSES})


@pytest.fixture(scope="module")
def stitched(tmp_path_factory) -> pd.DataFrame:
    return make_manifest(tmp_path_factory.mktemp("stitched"), {"NonDemented": "kaggle", "MildDemented": "oasis"})


def audit_of(manifest: pd.DataFrame, seed: int = 0) -> dict:
    """Run the shortcut audit as run_eda does."""
    statistics = eda.image_statistics(manifest)
    return eda.shortcut_audit(manifest.join(statistics[[*eda.STATISTIC_COLUMNS, "error"]]), seed, permutations=300)


# ----------------------------------------------------------------------------------------------- tables


def test_class_and_subject_tables_count_correctly():
    manifest = pd.DataFrame({
        "label": ["A", "A", "A", "B", "B", "A", "B"], "label_index": [0, 0, 0, 1, 1, 0, 1],
        "subject_id": ["s1", "s1", "s2", "s3", "s3", "s4", "s5"],
        "split": ["train", "train", "train", "train", "train", "test", "test"]})
    images = eda.class_distribution(manifest)
    assert list(images.index) == ["train", "test", "all"] and list(images.columns) == ["A", "B", "all"]
    assert images.loc["train"].tolist() == [3, 2, 5] and images.loc["test"].tolist() == [1, 1, 2]
    assert images.loc["all"].tolist() == [4, 3, 7]
    subjects = eda.subject_distribution(manifest)
    assert subjects.loc["train"].tolist() == [2, 1, 3] and subjects.loc["all"].tolist() == [3, 2, 5]
    table = eda.subject_table(manifest).set_index("subject_id")
    assert table.loc["s1", "slices"] == 2 and table.loc["s3", "label"] == "B" and table["labels"].max() == 1
    per_class = eda.slices_per_subject(eda.subject_table(manifest)).set_index("label")
    assert per_class.loc["A", "subjects"] == 3 and per_class.loc["A", "max"] == 2
    assert per_class.loc["all", "subjects"] == 5


def test_tables_reject_a_manifest_without_columns_or_rows():
    with pytest.raises(ValueError, match="subject_id"):
        eda.subject_distribution(pd.DataFrame({"label": ["A"], "split": ["train"]}))
    with pytest.raises(ValueError, match="empty"):
        eda.class_distribution(pd.DataFrame({"label": [], "split": []}))


def test_subjects_with_two_labels_are_flagged():
    manifest = pd.DataFrame({"label": ["A", "B"], "subject_id": ["s1", "s1"], "split": ["train", "test"]})
    table = eda.subject_table(manifest)
    assert table.loc[0, "labels"] == 2 and table.loc[0, "label"] == "A|B" and table.loc[0, "split"] == "test|train"


def test_image_properties_and_name_templates(stitched):
    properties = eda.image_properties(stitched)
    assert set(zip(properties["label"], properties["format"], properties["width"], properties["height"])) == {
        ("NonDemented", "JPEG", 176, 208), ("MildDemented", "PNG", 256, 240)}
    assert properties["images"].sum() == len(stitched)
    assert eda.name_template("/x/nonDem12.jpg") == "nonDem#.jpg"
    assert eda.name_template("/x/12 (3).jpg") == "# (#).jpg"
    assert eda.name_template("/data/train-00000-of-00001.parquet#row=17") == "train-#-of-#.parquet"


def test_measure_image_separates_brain_border_and_corners():
    image = np.zeros((40, 40), np.uint8)
    image[10:30, 10:30] = 200
    image[:2, :] = 50
    measured = eda.measure_image(image)
    assert measured["brain_fraction"] == pytest.approx((400 + 80) / 1600)
    assert measured["corner_max"] == pytest.approx(50 * 8 / 16)  # 4x4 corner squares, top two rows grey
    assert measured["histogram"].sum() == 1600 and measured["histogram"][200] == 400
    with pytest.raises(ValueError, match="uint8"):
        eda.measure_image(image.astype(np.float32))


def test_unreadable_images_are_recorded_not_fatal(homogeneous, tmp_path):
    broken = homogeneous.iloc[:4].copy()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    broken.loc[broken.index[0], "path"] = str(bad)
    statistics = eda.image_statistics(broken)
    assert statistics["error"].notna().sum() == 1 and "broken.jpg" in statistics["path"].iloc[0]
    assert statistics["brain_mean"].iloc[1:].notna().all()


def test_duplicates_summary_reads_lists_and_counts():
    report = {"duplicates": {"exact": [{"paths": ["a", "b"], "splits": ["train", "test"]},
                                       {"paths": ["c", "d", "e"], "splits": ["train"]}],
                             "near": 4}}
    table = eda.duplicates_summary(report).set_index("kind")
    assert table.loc["exact", "groups"] == 2 and table.loc["exact", "images"] == 5
    assert table.loc["exact", "groups_across_splits"] == 1 and table.loc["near", "groups"] == 4
    assert eda.duplicates_summary({}).empty


def test_sample_is_stratified_seeded_and_bounded(homogeneous):
    first = eda.sample_manifest(homogeneous, 20, seed=3)
    assert len(first) <= 24 and set(first["label"]) == set(CLASSES) and set(first["split"]) == {"train", "val", "test"}
    assert first.index.equals(eda.sample_manifest(homogeneous, 20, seed=3).index)
    assert not first.index.equals(eda.sample_manifest(homogeneous, 20, seed=4).index)
    with pytest.raises(ValueError, match="max_images"):
        eda.sample_manifest(homogeneous, 0, seed=3)


# ----------------------------------------------------------------------------------------------- shortcut audit


def test_permutation_p_value_is_small_for_a_real_signal_only():
    groups = np.repeat(np.arange(20), 3)
    truth = np.repeat(np.arange(20) % 2, 3)
    assert eda.permutation_p_value(truth, truth, groups, seed=0, permutations=200) < 0.01
    rng = np.random.default_rng(1)
    random_predictions = rng.integers(0, 2, truth.size)
    assert eda.permutation_p_value(truth, random_predictions, groups, seed=0, permutations=200) > 0.05


def test_audit_warns_on_a_fixture_stitched_from_two_sources(stitched):
    audit = audit_of(stitched)
    assert audit["ran"] and audit["warning"] is True
    assert audit["score"] > audit["chance"] + 0.15 and audit["p_value"] < 0.05 and audit["chance"] == 0.5
    assert {"format", "size", "border"} <= set(audit["revealing_properties"])
    assert audit["file_names"]["encodes_class"] is True
    assert audit["sentence"].startswith("WARNING") and audit["protocol"] == "fit on train, scored on test"
    markdown = eda.shortcut_warning_markdown(audit)
    assert "SHORTCUT WARNING" in markdown and "| format |" in markdown


def test_a_perfect_shortcut_on_two_test_subjects_is_inconclusive_not_a_warning(stitched):
    # With one test subject per class only two label arrangements exist: p cannot fall below 0.5.
    kept_test = stitched.groupby("label")["subject_id"].transform(
        lambda ids: ids == sorted(ids[stitched.loc[ids.index, "split"] == "test"])[0])
    manifest = stitched[(stitched["split"] != "test") | kept_test]
    audit = audit_of(manifest)
    assert audit["subjects_scored"] == 2 and audit["score"] == 1.0 and audit["p_value"] > 0.3
    assert audit["warning"] is False and audit["sentence"].startswith("Inconclusive")


def test_audit_does_not_warn_when_all_classes_share_one_source(homogeneous):
    audit = audit_of(homogeneous)
    assert audit["ran"] and audit["warning"] is False and audit["revealing_properties"] == []
    assert audit["score"] <= audit["chance"] + 0.15
    assert audit["file_names"]["encodes_class"] is False
    assert "SHORTCUT WARNING" not in eda.shortcut_warning_markdown(audit)
    assert json.loads(json.dumps(audit)) == audit  # JSON-ready as written


def test_class_names_in_file_names_are_reported_but_do_not_warn(tmp_path):
    # Same pixels format and size for both classes, Kaggle-style names that spell the class.
    manifest = make_manifest(tmp_path, {"NonDemented": "kaggle", "MildDemented": "kaggle"})
    audit = audit_of(manifest)
    assert audit["warning"] is False
    assert audit["file_names"]["encodes_class"] is True and audit["file_names"]["template_balanced_accuracy"] == 1.0
    assert "File names encode the class" in audit["sentence"]


def test_audit_without_a_scoring_split_is_skipped_with_its_reason(homogeneous):
    train_only = homogeneous[homogeneous["split"] == "train"]
    audit = audit_of(train_only)
    assert audit["ran"] is False and audit["warning"] is False and "no val or test" in audit["skip_reason"]
    assert "not run" in eda.shortcut_warning_markdown(audit)


def test_audit_scores_on_val_and_test_when_test_lacks_a_class(homogeneous):
    manifest = homogeneous[~((homogeneous["split"] == "test") & (homogeneous["label"] == "MildDemented"))]
    fit, score, protocol = eda.audit_sets(manifest)
    assert "val+test" in protocol and set(manifest.loc[score, "split"]) == {"val", "test"}
    assert set(manifest.loc[fit, "split"]) == {"train"}


# ----------------------------------------------------------------------------------------------- run


def test_run_eda_writes_every_output_and_labels_the_data(homogeneous, tmp_path):
    report = {"duplicates": {"exact": [], "near": []}}
    summary = eda.run_eda(homogeneous, report, tmp_path / "eda", "synthetic cohort", seed=1, permutations=100)
    written = {path.name for path in (tmp_path / "eda").iterdir()}
    expected = {"class_distribution_images.csv", "class_distribution_subjects.csv", "class_distribution.png",
                "subjects.csv", "slices_per_subject.csv", "slices_per_subject.png", "image_properties.csv",
                "intensity_by_class.csv", "image_statistics.parquet", "intensity_histograms.png", "sample_grid.png",
                "duplicates.csv", "shortcut_audit.json", "summary.json"}
    assert expected == written and set(summary["files"]) == expected
    on_disk = json.loads((tmp_path / "eda" / "summary.json").read_text())
    assert on_disk["images"] == len(homogeneous) and on_disk["subjects"] == 24
    assert on_disk["shortcut_audit"]["warning"] is False and on_disk["data_label"] == "synthetic cohort"
    audit = json.loads((tmp_path / "eda" / "shortcut_audit.json").read_text())
    assert audit["data_label"] == "synthetic cohort" and audit == summary["shortcut_audit"]
    images = pd.read_csv(tmp_path / "eda" / "class_distribution_images.csv", index_col="split")
    assert images.loc["train", "NonDemented"] == 6 * 3 and images.loc["all", "all"] == len(homogeneous)
    intensity = pd.read_csv(tmp_path / "eda" / "intensity_by_class.csv").set_index("label")
    # The demented fixture class has bigger dark ventricles: fewer bright brain pixels on average.
    assert intensity.loc["MildDemented", "brain_mean"] < intensity.loc["NonDemented", "brain_mean"]


def test_figures_carry_the_data_label(homogeneous):
    images, subjects = eda.class_distribution(homogeneous), eda.subject_distribution(homogeneous)
    figure = eda.class_distribution_figure(images, subjects, "synthetic cohort")
    assert isinstance(figure, Figure) and "synthetic cohort" in figure.get_suptitle()
    grid = eda.sample_grid_figure(homogeneous, "synthetic cohort", seed=0, per_class=3)
    assert "synthetic cohort" in grid.get_suptitle() and len(grid.axes) == 2 * 3
