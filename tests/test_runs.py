"""Run records: one run folder per data set and split policy, and the index of every run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from alzlib import config, report, runs


def load_tree_builder():
    """Return make_outputs_tree from test_report.py, loaded by path so the fake run folder stays defined once."""
    specification = importlib.util.spec_from_file_location("report_tree_fixture",
                                                           Path(__file__).with_name("test_report.py"))
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module.make_outputs_tree


def two_runs(tmp_path, monkeypatch) -> tuple[config.OutputPaths, config.OutputPaths]:
    """Write two complete runs of the smoke profile, on data sets A and B, each with its report."""
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path / "outputs"))
    make_outputs_tree = load_tree_builder()
    found = []
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        paths = config.load_settings("smoke", 42, str(tmp_path / name)).paths
        make_outputs_tree(paths.root, synthetic=False)
        report.build_report(paths)
        found.append(paths)
    return found[0], found[1]


def test_two_data_sets_get_two_run_folders_and_both_stay_intact(tmp_path, monkeypatch):
    first, second = two_runs(tmp_path, monkeypatch)
    assert first.root == tmp_path / "outputs" / "smoke" / "A-subject"
    assert second.root == tmp_path / "outputs" / "smoke" / "B-subject"
    for paths in (first, second):
        assert paths.report.is_file() and paths.manifest.is_file() and (paths.evaluation / "summary.csv").is_file()


def test_the_index_lists_every_run_with_its_headline_numbers(tmp_path, monkeypatch):
    two_runs(tmp_path, monkeypatch)
    index = runs.update_index()
    assert index == tmp_path / "outputs" / "runs.csv"
    table = pd.read_csv(index)
    assert list(table["run"]) == ["A-subject", "B-subject"] and set(table["data"]) == {"A", "B"}
    assert set(table["split"]) == {"subject"} and set(table["profile"]) == {"smoke"}
    assert table.loc[0, "best_model"] == "baseline_cnn" and table.loc[0, "best_balanced_accuracy"] == 0.61
    assert table.loc[0, "baseline_cnn_random_labels_balanced_accuracy"] == 0.5
    assert table.loc[0, "report"] == "smoke/A-subject/report.html"
    page = (tmp_path / "outputs" / "index.html").read_text()
    assert '<a href="smoke/A-subject/report.html">' in page and '<a href="smoke/B-subject/report.html">' in page


def test_the_index_of_an_empty_outputs_folder_has_only_its_header(tmp_path):
    index = runs.update_index(tmp_path)
    assert pd.read_csv(index).empty and list(pd.read_csv(index).columns)[:3] == ["profile", "run", "data"]
