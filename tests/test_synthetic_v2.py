"""Synthetic cohort version 2 and site B: independent components, label noise, acquisition, masks, determinism."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from alzlib import config, synthetic

# Two subjects of each stage, two slices each: enough for every file and record, and for a 2-fold calibration.
SMALL = config.Profile(name="v2_small", image_size=32, batch_size=4, epochs=1, warmup_epochs=1,
                       cohort_subjects={name: 2 for name in config.CLASS_NAMES}, slices_per_subject=2)
# Drawn, never rendered: drawing a subject costs microseconds.
DRAWS = config.Profile(name="v2_draws", image_size=32, batch_size=4, epochs=1, warmup_epochs=1,
                       cohort_subjects={name: 600 for name in config.CLASS_NAMES}, slices_per_subject=1)
COMPONENTS = tuple(synthetic.MASK_BITS)


def file_hashes(root: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file under `root`."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def subject_table(subjects: list[synthetic.Subject]) -> pd.DataFrame:
    """Return one row per subject: labels, latent severity, stage parts and applied severities."""
    return pd.DataFrame([{"subject_id": subject.subject_id, "label": subject.label, "stage": subject.stage,
                          "latent": subject.latent, "age": subject.age_atrophy, "asymmetry": subject.asymmetry,
                          **{name: subject.severity[name] for name in COMPONENTS},
                          **{f"applied_{name}": subject.applied(name) for name in COMPONENTS}}
                         for subject in subjects])


@pytest.fixture(scope="module")
def draws() -> dict[str, pd.DataFrame]:
    return {site: subject_table(synthetic.draw_subjects(DRAWS, seed=7, version="2", site=site)) for site in "AB"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return synthetic.generate_cohort(tmp_path_factory.mktemp("v2") / "small", SMALL, seed=5, version="2")


def test_components_vary_independently_within_a_class_and_stay_below_0_9_overall(draws):
    frame = draws["A"]
    for _, members in frame.groupby("stage"):
        within = members[list(COMPONENTS)].corr().to_numpy()[np.triu_indices(3, 1)]
        assert np.abs(within).max() < 0.4  # measured: at most 0.25
    overall = frame[[f"applied_{name}" for name in COMPONENTS]].corr().to_numpy()[np.triu_indices(3, 1)]
    assert overall.max() < 0.9  # measured: at most about 0.6
    assert frame[list(COMPONENTS)].corr().to_numpy()[np.triu_indices(3, 1)].max() < 0.9


def test_medial_temporal_severity_follows_the_stage_far_more_than_ventricles_and_cortex(draws):
    frame = draws["A"]
    stage = frame.stage.map(config.CLASS_NAMES.index)
    focal = stats.spearmanr(stage, frame.applied_medial_temporal).statistic
    for name in ("ventricles", "cortex"):
        assert stats.spearmanr(stage, frame[f"applied_{name}"]).statistic < focal - 0.3
    assert focal > 0.85
    # Age is common to all classes: its distribution does not depend on the stage.
    assert stats.kruskal(*[group.age for _, group in frame.groupby("stage")]).pvalue > 0.001


def test_label_noise_flips_only_near_boundaries_to_a_neighbour_at_the_stated_rate(draws):
    frame = draws["A"]
    stage_index = frame.stage.map(config.CLASS_NAMES.index)
    near = np.array([synthetic.boundary_neighbour(stage, latent) is not None
                     for stage, latent in zip(stage_index, frame.latent)])
    flipped = (frame.label != frame.stage).to_numpy()
    assert not flipped[~near].any()
    assert (np.abs(frame.label.map(config.CLASS_NAMES.index) - stage_index)[flipped] == 1).all()
    rate, count = flipped[near].mean(), near.sum()
    standard_error = np.sqrt(synthetic.LABEL_NOISE_PROBABILITY * (1 - synthetic.LABEL_NOISE_PROBABILITY) / count)
    assert abs(rate - synthetic.LABEL_NOISE_PROBABILITY) < 4 * standard_error
    assert 0.06 < flipped.mean() < 0.14  # about 10% of all subjects


def test_site_b_draws_other_subjects_from_the_same_class_distributions(draws):
    site_a, site_b = draws["A"], draws["B"]
    assert set(site_a.subject_id).isdisjoint(site_b.subject_id)
    assert site_b.subject_id.min() == "SYN5001"
    assert not np.allclose(site_a.sort_values("subject_id").latent, site_b.sort_values("subject_id").latent)
    for stage in config.CLASS_NAMES:
        a, b = site_a[site_a.stage == stage], site_b[site_b.stage == stage]
        assert len(a) == len(b) == 600
        for column in ("latent", "age", "asymmetry", *COMPONENTS):
            assert stats.ks_2samp(a[column], b[column]).pvalue > 0.001, (stage, column)
    assert abs((site_a.label != site_a.stage).mean() - (site_b.label != site_b.stage).mean()) < 0.04


def test_same_subject_at_site_b_differs_in_acquisition_not_in_its_atrophy():
    measured = {"A": [], "B": []}
    for number in (3, 4, 5):
        images, masks = {}, {}
        for site in "AB":
            subject = synthetic.Subject(number, "MildDemented", {"ventricles": 0.3, "cortex": 0.3,
                                                                 "medial_temporal": 0.7}, 0.4, version="2", site=site)
            images[site], masks[site] = synthetic.render_subject(subject, slices=2, seed=9)
            measured[site] += [synthetic.acquisition_statistics(image) for image in images[site]]
        focal_a, focal_b = (masks["A"] & 4) > 0, (masks["B"] & 4) > 0
        # Same anatomy, pose and atrophy; B's 3 mm slab blurs the change's edge a little.
        assert 2 * (focal_a & focal_b).sum() / (focal_a.sum() + focal_b.sum()) > 0.6
        assert not np.array_equal(images["A"], images["B"])
    site_a, site_b = pd.DataFrame(measured["A"]), pd.DataFrame(measured["B"])
    assert (site_b.noise > site_a.noise).all()
    assert (site_b.contrast < site_a.contrast).all()
    assert (site_b.sharpness < 0.8 * site_a.sharpness).all()
    assert (site_b.brightness < site_a.brightness).all()


def test_version_2_masks_mark_the_change_the_stage_adds_to_ageing():
    severe = synthetic.Subject(5, "ModerateDemented", {name: 1.0 for name in COMPONENTS}, 0.5, version="2")
    aged = synthetic.Subject(5, "NonDemented", {name: 0.0 for name in COMPONENTS}, 0.5, version="2")
    young = synthetic.Subject(5, "NonDemented", {name: 0.0 for name in COMPONENTS}, 0.0, version="2")
    images, masks = synthetic.render_subject(severe, slices=3, seed=11)
    untouched, no_masks = synthetic.render_subject(aged, slices=3, seed=11)  # same anatomy, pose and noise
    younger, _ = synthetic.render_subject(young, slices=3, seed=11)
    assert images.shape == masks.shape == (3, 208, 176)
    assert not no_masks.any()  # age is common to all classes: not class-relevant
    assert np.abs(untouched.astype(int) - younger.astype(int)).sum() > 0
    for bit in synthetic.MASK_BITS.values():
        assert ((masks & bit) > 0).sum() > 50
    change = np.abs(images.astype(int) - untouched.astype(int))
    assert change[masks > 0].mean() > 8 * change[masks == 0].mean()
    assert images[masks > 0].mean() < untouched[masks > 0].mean() - 20


def test_version_2_cohort_records_labels_true_stages_and_site(cohort):
    record = json.loads((cohort / "cohort.json").read_text())
    assert (record["cohort_version"], record["site"], record["acquisition"]["site"]) == ("2", "A", "A")
    assert "class-relevant" in record["mask_meaning"]
    assert record["true_stage_subjects"] == SMALL.cohort_subjects
    frame = pd.read_csv(cohort / "metadata.csv")
    assert list(frame.columns) == list(synthetic.METADATA_COLUMNS_V2)
    assert (frame.site == "A").all() and (frame.cohort_version == 2).all()
    assert frame.groupby("true_label").subject_id.nunique().to_dict() == SMALL.cohort_subjects
    assert (frame.label_noise == (frame.label != frame.true_label)).all()
    assert record["label_noise"]["subjects"] == frame.drop_duplicates("subject_id").label_noise.sum()
    for row in frame.itertuples():
        assert Path(row.file).parent.name == Path(row.mask_file).parent.name == row.label


def test_version_2_and_site_b_are_byte_identical_per_seed(cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("ALZ_SYNTHETIC_WORKERS", "2")
    assert file_hashes(synthetic.generate_cohort(tmp_path / "again", SMALL, 5, "2")) == file_hashes(cohort)
    monkeypatch.setenv("ALZ_SYNTHETIC_WORKERS", "1")
    site_b = synthetic.generate_cohort(tmp_path / "b", SMALL, 5, "2", "B")
    assert file_hashes(synthetic.generate_cohort(tmp_path / "b_again", SMALL, 5, "2", "B")) == file_hashes(site_b)
    record = json.loads((site_b / "cohort.json").read_text())
    assert record["site"] == "B" and record["acquisition"]["slice_thickness_mm"] == 3.0
    assert set(pd.read_csv(site_b / "metadata.csv").site) == {"B"}
    images = {digest for name, digest in file_hashes(cohort).items() if name.endswith(".jpg")}
    assert images.isdisjoint(digest for name, digest in file_hashes(site_b).items() if name.endswith(".jpg"))


def test_ensure_cohort_regenerates_when_the_version_or_site_changes(tmp_path):
    one = config.Profile(name="one", image_size=32, batch_size=4, epochs=1, warmup_epochs=1,
                         cohort_subjects={name: 1 for name in config.CLASS_NAMES}, slices_per_subject=1,
                         cohort_version="1")
    folder = synthetic.ensure_cohort(one, 1, tmp_path / "cohort")  # no version: the profile's
    assert json.loads((folder / "cohort.json").read_text())["cohort_version"] == "1"
    assert not synthetic.cohort_matches(folder, one, 1, version="2")
    synthetic.ensure_cohort(one, 1, folder, version="2")
    assert synthetic.cohort_matches(folder, one, 1, version="2") and not synthetic.cohort_matches(folder, one, 1)
    synthetic.ensure_cohort(one, 1, folder, version="2", site="B")
    assert json.loads((folder / "cohort.json").read_text())["site"] == "B"
    synthetic.ensure_cohort(one, 1, folder)
    assert synthetic.cohort_matches(folder, one, 1)
    assert [path.name for path in tmp_path.iterdir()] == ["cohort"]


def test_a_marker_without_version_or_site_is_a_version_1_site_a_cohort(tmp_path):
    one = config.Profile(name="one", image_size=32, batch_size=4, epochs=1, warmup_epochs=1,
                         cohort_subjects={name: 1 for name in config.CLASS_NAMES}, slices_per_subject=1)
    folder = synthetic.generate_cohort(tmp_path / "old", one, 2)
    marker = folder / "cohort.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({key: value for key, value in record.items() if key not in ("cohort_version",
                                                                                            "site")}))
    assert synthetic.cohort_matches(folder, one, 2)
    assert not synthetic.cohort_matches(folder, one, 2, version="2")


def test_unknown_version_or_site_is_rejected():
    for version, site, expected in (("3", "A", "cohort version"), ("2", "C", "site"), ("1", "B", "needs version")):
        with pytest.raises(ValueError, match=expected):
            synthetic.draw_subjects(SMALL, 0, version, site)
    with pytest.raises(ValueError, match="cohort version"):
        synthetic.template_anatomy("v2")


def test_acquisition_plane_offsets_span_the_slice_thickness():
    assert synthetic.ACQUISITIONS["A"].plane_offsets() == (0.0,)
    assert synthetic.ACQUISITIONS["B"].plane_offsets() == (-0.75, 0.75)


def test_feature_calibration_scores_global_and_focal_statistics(cohort):
    result = synthetic.feature_calibration(cohort, seed=0, repeats=2, label_column="true_label")
    for kind in ("global", "focal"):
        assert 0.0 <= result[kind]["balanced_accuracy"] <= 1.0 and len(result[kind]["per_repeat"]) == 2
    assert result["n_subjects"] == 8 and result["folds"] == 2 and result["synthetic"] is True
    window = synthetic.medial_temporal_window(SMALL.slices_per_subject)
    assert window.shape == (2, 208, 176) and 0 < window.mean() < 0.1
    with pytest.raises(ValueError, match="no 'stage' column"):
        synthetic.feature_calibration(cohort, label_column="stage")


def test_image_statistics_count_dark_pixels_of_the_brain():
    image = np.zeros((40, 40), dtype=np.uint8)
    image[5:35, 5:35] = 200
    image[15:25, 15:25] = 40  # CSF: under 0.45 of the median
    values = dict(zip(synthetic.STATISTIC_NAMES, synthetic.image_statistics(image)))
    assert values["area"] == pytest.approx(900 / 1600)
    assert values["csf_fraction"] == pytest.approx(100 / 900)
    region = np.zeros_like(image, dtype=bool)
    region[15:25, 15:30] = True
    focal = dict(zip(synthetic.STATISTIC_NAMES, synthetic.image_statistics(image, region)))
    assert focal["csf_fraction"] == pytest.approx(100 / 150) and focal["area"] == 1.0
    assert not synthetic.image_statistics(np.zeros_like(image)).any()
