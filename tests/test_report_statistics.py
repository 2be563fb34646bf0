"""The report's statistics: which models were cross-validated, paired differences, the verdicts on the first screen."""

import json

import pandas as pd

from alzlib import config, report, report_headline


def write_statistics_outputs(root):
    (root / "crossval").mkdir(parents=True)
    (root / "comparison").mkdir(parents=True)
    row = {"model": "baseline_cnn", "level": "subject", "folds": 5, "subjects": 180, "images": 720,
           "balanced_accuracy_mean": 0.61, "balanced_accuracy_sd": 0.05, "balanced_accuracy_pooled": 0.6,
           "balanced_accuracy_pooled_low": 0.52, "balanced_accuracy_pooled_high": 0.68}
    models = ["linear_pixels", "baseline_cnn"]
    summary = {"folds": 5, "fold_models": models, "models": models,
               "skipped": [], "notes": {"baseline_cnn": ["class ModerateDemented has 2 subjects for 5 folds: 3 test "
                                                         "folds lack it"]},
               "rows": [row, {**row, "model": "linear_pixels", "balanced_accuracy_pooled": 0.5}]}
    (root / "crossval" / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame([
        {"model_a": "baseline_cnn", "model_b": "linear_pixels", "level": "subject", "subjects": 180,
         "difference": 0.10, "low": 0.04, "high": 0.16, "p_value_holm": 0.01, "supported": True,
         "sentence": "baseline_cnn vs linear_pixels: +0.10 [0.04, 0.16], supported"},
        {"model_a": "linear_pixels", "model_b": "resnet50", "level": "subject", "subjects": 180,
         "difference": 0.02, "low": -0.08, "high": 0.12, "p_value_holm": 1.0, "supported": False,
         "sentence": "linear_pixels vs resnet50: +0.02 [-0.08, 0.12], not supported"},
        {"model_a": "efficientnetb0", "model_b": "linear_pixels", "level": "subject", "subjects": 180,
         "difference": -0.2, "low": -0.3, "high": -0.1, "p_value_holm": 0.01, "supported": True,
         "sentence": "efficientnetb0 vs linear_pixels: -0.20 [-0.30, -0.10], supported"},
    ]).to_csv(root / "comparison" / "paired_differences_crossval.csv", index=False)


def test_statistics_section_says_what_was_cross_validated_and_which_cnn_beats_the_linear_baseline(tmp_path):
    paths = config.OutputPaths(tmp_path / "cpu" / "synthetic-subject")
    write_statistics_outputs(paths.root)
    document = report.render_report_html(paths)
    section = document[document.index('<section id="statistics">'):document.index('<section id="leakage">')]
    assert "5-fold subject-level cross-validation" in section and "linear_pixels, baseline_cnn" in section
    assert "0.610 ± 0.050" in section and "3 test folds lack it" in section
    assert "baseline_cnn beats linear_pixels at subject level: difference +0.100 [+0.040, +0.160]" in section
    # Model B against the baseline: the sign is turned so the sentence reads from the deep model's side.
    assert "resnet50 does NOT beat linear_pixels at subject level: difference -0.020 [-0.120, +0.080]" in section
    assert "efficientnetb0 is WORSE than linear_pixels at subject level: difference -0.200 [-0.300, -0.100]" in section
    assert "cross-validated over every subject" in section


def test_verdict_names_only_supported_differences_with_the_better_model_first(tmp_path):
    write_statistics_outputs(tmp_path)
    verdict = report_headline.verdict(tmp_path)
    assert "baseline_cnn beats linear_pixels by +0.10 [+0.04, +0.16]" in verdict
    assert "linear_pixels beats efficientnetb0 by +0.20 [+0.10, +0.30]" in verdict
    assert "resnet50" not in verdict and "2 of 3 pairs supported" in verdict


def test_verdict_says_nothing_can_be_told_apart_with_too_few_subjects_or_no_support(tmp_path):
    (tmp_path / "comparison").mkdir()
    frame = pd.DataFrame([{"model_a": "baseline_cnn", "model_b": "resnet50", "level": "subject", "subjects": 4,
                           "difference": -0.25, "low": -0.25, "high": -0.25, "supported": False}])
    frame.to_csv(tmp_path / "comparison" / "paired_differences.csv", index=False)
    assert "4 paired subjects are too few" in report_headline.verdict(tmp_path)
    frame.assign(subjects=40, low=-0.4, high=0.1).to_csv(tmp_path / "comparison" / "paired_differences.csv",
                                                          index=False)
    assert "no model is distinguishable from another at this sample size (40 subjects)" in \
        report_headline.verdict(tmp_path)
    assert report_headline.verdict(tmp_path / "absent").startswith("No verdict")


def test_a_single_split_run_says_so_in_the_statistics_section(tmp_path):
    paths = config.OutputPaths(tmp_path / "cpu" / "synthetic-subject")
    (paths.root / "crossval").mkdir(parents=True)
    (paths.root / "crossval" / "summary.json").write_text(json.dumps(
        {"folds": 1, "models": [], "note": "single split only (FOLDS=1): no cross-validation"}))
    document = report.render_report_html(paths)
    assert "single split only (FOLDS=1): no cross-validation" in document
