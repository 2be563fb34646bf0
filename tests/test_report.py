"""Tests of the final HTML report, built from a small fake run folder made here."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from alzlib import config, report, robustness, storage

HOSTILE_TEXT = "<script>alert('x')</script>"
# An absolute path as it would appear on a machine: the report must never show one.
MACHINE_PATH = "/home/someone/secret/data"


def save_small_figure(path: Path, title: str) -> Path:
    """Save a tiny real PNG made by matplotlib."""
    figure = Figure(figsize=(2.4, 1.6))
    axis = figure.subplots()
    axis.plot([0, 1, 2], [0.2, 0.6, 0.4])
    axis.set_title(title, fontsize=8)
    return storage.save_figure(figure, path, dpi=60)


def write_text(path: Path, text: str) -> Path:
    """Write a small text file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def clean_audit() -> dict:
    """Return the leakage audit of a clean subject split."""
    return {"subject": {"subjects_shared": 0, "tripped_by": [], "leaks": False}, "shipped": None}


def write_inputs_metadata(root: Path, synthetic: bool) -> None:
    """Write the manifest, ingestion report, run metadata and run summary."""
    manifest = pd.DataFrame({"path": [f"{MACHINE_PATH}/{index}.jpg" for index in range(12)],
                             "label": ["NonDemented", "MildDemented"] * 6,
                             "subject_id": [f"SYN{index // 2:04d}" for index in range(12)],
                             "split": ["train"] * 6 + ["val"] * 2 + ["test"] * 4})
    storage.write_parquet(root / "manifest.parquet", manifest)
    storage.write_json(root / "ingestion_report.json", {
        "data_dir": f"{MACHINE_PATH}/{HOSTILE_TEXT}", "classes": ["NonDemented", "MildDemented"], "task": "2-class",
        "data_source": {"kind": "synthetic" if synthetic else "class_folders", "layout": "class_folders",
                        "synthetic": synthetic},
        "counts": {"files_seen": 13, "images": 12, "skipped": 1, "subjects": 6,
                   "per_class": {"NonDemented": 6, "MildDemented": 6},
                   "subjects_per_class": {"NonDemented": 3, "MildDemented": 3}},
        "skipped": [{"path": f"{MACHINE_PATH}/broken.jpg", "reason": "truncated JPEG"}],
        "split_policy": "subject", "split_fractions": [0.7, 0.15, 0.15],
        "split_warnings": [f"only 2 subjects of MildDemented {HOSTILE_TEXT}"],
        "leakage_audit": clean_audit(), "extra_key_from_the_future": 1})
    storage.write_json(root / "run_metadata.json", {
        "settings": {"profile": "smoke", "seed": 42, "data_dir": MACHINE_PATH, "split": "subject", "epochs": 1,
                     "weights": "none", "deterministic": True, "synthetic": synthetic,
                     "outputs": str(root)},
        "profile": {"name": "smoke", "image_size": 64}, "git_commit": "0123abc-dirty",
        "libraries": {"python": "3.11.7", "numpy": "2.4.0"}, "hardware": {"cpu_cores": 2, "gpus": []},
        "weights_used": {"baseline_cnn": "random (trained from scratch)", "resnet50": "random (WEIGHTS=none)"}})
    storage.write_json(root / "run_summary.json", {"profile": "smoke", "status": "ok", "notebooks": [
        {"name": "01_dataset_ingestion", "seconds": 3.2, "status": "ok", "output": f"{root}/notebooks/01.ipynb"}]})


def write_evaluation(root: Path) -> None:
    """Write the evaluation summary (two models and the control), its JSON with the control verdict, figures."""
    rows = []
    for model, score in (("baseline_cnn", 0.61), ("resnet50", 0.55), ("linear_pixels", 0.58),
                         (config.CONTROL_MODEL_NAME, 0.5)):
        for level in ("slice", "subject"):
            rows.append({"model": model, "split": "test", "level": level, "subjects": 12,
                         "balanced_accuracy": score, "balanced_accuracy_low": score - 0.1,
                         "balanced_accuracy_high": score + 0.1, "ece": 0.12,
                         "ece_after_temperature": 0.05 if level == "slice" else None})
    storage.write_csv(root / "evaluation" / "summary.csv", pd.DataFrame(rows))
    storage.write_json(root / "evaluation" / "summary.json", {"random_label_control": {
        "estimate": 0.5, "low": 0.4, "high": 0.6, "chance": 0.5, "subjects": 12, "tripped": False,
        "conclusive": True, "verdict": "passes: indistinguishable from chance"}})
    for name in ("baseline_cnn", "resnet50"):
        storage.write_json(root / "evaluation" / name / "metrics.json", {"splits": {}})
    for figure_name in ("confusion_test_subject", "roc_test", "reliability_test"):
        save_small_figure(root / "evaluation" / "baseline_cnn" / f"{figure_name}.png", figure_name)


def write_stage_outputs(root: Path) -> None:
    """Write EDA, features, two trained models, evaluation, Grad-CAM and comparison files."""
    save_small_figure(root / "eda" / "class_distribution.png", "class balance")
    storage.write_json(root / "eda" / "shortcut_audit.json",
                       {"ran": True, "score": 0.71, "chance": 0.5, "warning": "image size alone predicts the class",
                        "sentence": "image size alone predicts the class"})
    write_text(root / "eda" / "image_sizes.csv", f"width,height,note\n176,208,{HOSTILE_TEXT}\n")
    save_small_figure(root / "features" / "map_pixels.png", "umap")
    for name, seconds in (("baseline_cnn", 12.5), ("resnet50", 40.0)):
        storage.write_json(root / "models" / f"{name}.json", {"weights": "random", "training_seconds": seconds,
                                                              "best_epoch": 1, "epochs_run": 1,
                                                              "trainable_parameters": 1000})
    save_small_figure(root / "training" / "baseline_cnn" / "curves.png", "curves")
    write_evaluation(root)
    save_small_figure(root / "gradcam" / "baseline_cnn" / "overlays.png", "grad-cam")
    write_text(root / "gradcam" / "summary.csv", "model,cascade_verdict,randomisation_mean_spearman\n"
                                                 "baseline_cnn,pass,0.12\nresnet50,pass,0.2\n")
    save_small_figure(root / "comparison" / "paired_differences.png", "comparison")
    write_text(root / "comparison" / "paired_differences.csv",
               "model_a,model_b,level,subjects,difference,low,high,p_value_holm,supported\n"
               "baseline_cnn,resnet50,subject,12,0.06,-0.05,0.17,0.4,False\n"
               "baseline_cnn,linear_pixels,subject,12,0.03,-0.08,0.14,0.6,False\n")


def write_robustness_outputs(root: Path) -> None:
    """Write real robustness tables and a heatmap-like figure with a trivial predictor."""
    images = np.stack([np.full((16, 16), value, dtype=np.uint8) for value in (30, 40, 150, 160)])
    labels = np.array([0, 0, 1, 1])

    def predict(batch: np.ndarray) -> np.ndarray:
        bright = (batch.reshape(len(batch), -1).mean(axis=1) > 90).astype(float)
        return np.stack([1 - bright, bright], axis=1)

    table = robustness.evaluate_robustness({"baseline_cnn": predict}, images, labels, corruptions=["brightness"])
    robustness.write_robustness_tables(table, robustness.corruption_errors(table), root / "robustness")
    storage.save_figure(robustness.plot_robustness_curves(table), root / "robustness" / "robustness_heatmap.png",
                        dpi=50)


def make_outputs_tree(root: Path, synthetic: bool = True) -> config.OutputPaths:
    """Write a small run folder like a smoke run's, with a few inputs deliberately missing."""
    write_inputs_metadata(root, synthetic)
    write_stage_outputs(root)
    write_robustness_outputs(root)
    write_text(root / "notebooks" / "01_dataset_ingestion.html", "<html><body>executed notebook</body></html>")
    write_text(root / "notebooks" / "02_eda.ipynb", "{}")
    return config.OutputPaths(root)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[config.OutputPaths, str]:
    paths = make_outputs_tree(tmp_path_factory.mktemp("outputs") / "smoke" / "synthetic-subject")
    return paths, report.build_report(paths).read_text(encoding="utf-8")


def section_of(document: str, anchor: str) -> str:
    """Return the HTML of one section."""
    start = document.index(f'<section id="{anchor}">')
    return document[start:document.index("</section>", start)]


def test_first_screen_has_the_data_line_headline_table_verdict_and_checks(built):
    _, document = built
    top = document[:document.index('<section id="model-card">')]
    assert "SYNTHETIC data" in top and "subject-level split 70/15/15" in top and "not for clinical use" in top
    assert 'id="headline"' in top and 'id="checks"' in top
    assert "0.610 [0.510, 0.710]" in top and "linear_pixels" in top and "random-label control" in top
    assert "no model is distinguishable from another at this sample size (12 subjects)" in top
    assert top.count('<span class="badge ') == len(report.report_checks.CHECKS)


def test_the_page_comes_from_the_package_template_and_every_section_renders(built):
    paths, document = built
    assert (Path(report.__file__).parent / "templates" / "report.html.j2").is_file()
    assert paths.report.is_file() and not list(paths.root.glob(".report.html*"))
    for anchor in ("model-card", "data", "training", "evaluation", "statistics", "leakage", "gradcam",
                   "robustness", "run", "limitations", "appendix"):
        assert f'<section id="{anchor}">' in document, anchor
    assert 'href="#model-card"' in document and 'class="bar"' in document  # sticky table of contents
    assert "0123abc-dirty" in document and "image size alone predicts the class" in document


def test_model_card_and_claim_checklist_are_filled_from_the_run(built):
    _, document = built
    card = section_of(document, "model-card")
    for field in ("Intended use", "Out-of-scope uses", "Training data", "Evaluation data", "Metrics",
                  "Ethical considerations", "Caveats and recommendations"):
        assert f"<dt>{field}</dt>" in card
    assert "Research and teaching only" in card and "Any clinical use" in card
    assert "synthetic cohort" in card and "4 images of 2 subjects" in card  # the test split from the manifest
    appendix = section_of(document, "appendix")
    assert "CLAIM checklist" in appendix and appendix.count("<tr><td>") == 42
    assert '<a href="#robustness">robustness</a>' in appendix and "not addressed" in appendix


def test_missing_inputs_are_marked_in_place_and_listed_in_the_appendix(built):
    _, document = built
    assert "not run: evaluation/resnet50/confusion_test_subject.png missing" in document
    assert "<code>evaluation/resnet50/reliability_test.png</code>: missing" in section_of(document, "appendix")
    assert "not run: training/resnet50/curves.png missing" in document
    assert "training/baseline_cnn/curves.png missing" not in document


def test_every_png_is_embedded_as_a_data_uri(built):
    paths, document = built
    sources = re.findall(r'<img src="([^"]+)"', document)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    curves = (paths.root / "training" / "baseline_cnn" / "curves.png").read_bytes()
    assert base64.b64encode(curves).decode() in document


def test_raw_files_are_linked_not_inlined_and_nothing_is_fetched(built):
    _, document = built
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', document, flags=re.IGNORECASE)
    for reference in references:
        assert not re.match(r"^(https?:)?//|^/", reference, flags=re.IGNORECASE), reference
    assert '<a href="eda/image_sizes.csv">' in document and '<a href="notebooks/01_dataset_ingestion.html">' in document
    assert "176,208" not in document and "<td>176</td>" not in document  # the CSV itself is not inlined
    assert '<table class="kv">' not in document  # never nested dict tables
    assert "<link" not in document and "@import" not in document and "url(" not in document


def test_no_absolute_machine_path_reaches_the_page(built):
    paths, document = built
    text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "", document)
    assert MACHINE_PATH not in text and str(paths.root) not in text and str(config.PROJECT_ROOT) not in text
    assert "broken.jpg" in text  # the skipped file, by name


def test_path_scrubber_keeps_relative_paths_and_urls():
    scrub = report.path_scrubber(Path("/runs/cpu/synthetic-subject"))
    assert scrub("see /runs/cpu/synthetic-subject/evaluation/summary.csv") == "see evaluation/summary.csv"
    assert scrub(f"data in {config.PROJECT_ROOT}/data/synthetic/cpu") == "data in data/synthetic/cpu"
    assert scrub("skipped /mnt/scans/NonDemented/x.jpg (truncated)") == "skipped x.jpg (truncated)"
    text = "https://example.org/a/b.h5 and gradcam/summary.csv"
    assert scrub(text) == text


def test_text_from_inputs_is_escaped(built):
    _, document = built
    assert "<script" not in document.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in document or \
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in document


def test_missing_or_unreadable_stages_say_so(tmp_path):
    paths = config.OutputPaths(tmp_path / "cpu" / "synthetic-subject")
    paths.root.mkdir(parents=True)
    write_text(paths.root / "ingestion_report.json", "{not json")
    write_text(paths.root / "eda" / "class_distribution.png", "this is not a PNG")
    document = report.build_report(paths).read_text()
    assert "could not read ingestion_report.json: JSONDecodeError" in document
    assert "could not read eda/class_distribution.png: not a valid PNG file" in document
    assert "not run: evaluation/summary.csv missing" in document
    assert "Data source UNKNOWN" in document and "SYNTHETIC data" not in document
    assert "<img" not in document
    assert document.count('<span class="badge pass">') == 0  # nothing passes on missing files


def test_a_file_in_an_older_layout_gives_a_section_that_says_so(tmp_path):
    paths = config.OutputPaths(tmp_path / "cpu" / "synthetic-subject")
    storage.write_json(paths.evaluation / "leakage_demonstration.json", {"cells": [{"split_policy": "subject"}]})
    document = report.build_report(paths).read_text()
    assert "could not build this section: KeyError" in section_of(document, "leakage")


def test_run_details_fall_back_to_a_recipe_record(tmp_path):
    paths = config.OutputPaths(tmp_path / "cpu" / "synthetic-subject")
    run = {"settings": {"profile": "cpu", "seed": 7, "deterministic": False, "synthetic": True}, "git_commit": "feed42"}
    storage.write_json(paths.models / "resnet50.json", {"weights": "imagenet", "run": run})
    document = report.build_report(paths).read_text()
    assert "feed42" in section_of(document, "run") and "SYNTHETIC data" in document


def test_real_data_gets_the_real_data_line(tmp_path):
    paths = config.OutputPaths(tmp_path / "full" / "kaggle-subject")
    write_inputs_metadata(paths.root, synthetic=False)
    document = report.build_report(paths).read_text()
    assert "REAL images" in document and "SYNTHETIC data" not in document
    assert "not for clinical use" in document


def test_external_site_results_get_their_own_section(tmp_path):
    paths = make_outputs_tree(tmp_path / "cpu" / "synthetic-subject")
    assert 'id="external"' not in report.build_report(paths).read_text()  # no external test: no section
    write_text(paths.root / "external" / "summary.csv",
               "model,level,site_a,external,drop,drop_low,drop_high,verdict,external_subjects\n"
               "baseline_cnn,subject,0.58,0.41,0.17,0.05,0.29,drop shown,72\n"
               "baseline_cnn,slice,0.55,0.40,0.15,0.04,0.26,drop shown,72\n")
    write_text(paths.root / "external" / "external.json", json.dumps({
        "source": {"label": "synthetic cohort, site B"}, "rule": "a drop is shown when ...",
        "data": {"images": 576, "subjects": 72, "copies_left_out": [], "skipped": []}}))
    section = section_of(report.build_report(paths).read_text(), "external")
    assert "synthetic cohort, site B" in section and "drop shown" in section and "0.17" in section
    assert "576 external images of 72 subjects; 0 left out" in section and "external/summary.csv" in section


def test_build_report_needs_the_outputs_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.build_report(config.OutputPaths(tmp_path / "never_run"))


def test_render_notebooks_html_writes_offline_pages(tmp_path):
    import nbformat

    cell = nbformat.v4.new_code_cell("print('hello')", outputs=[nbformat.v4.new_output("stream", text="hello\n")])
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Ingestion"), cell]),
                   tmp_path / "01_dataset_ingestion.ipynb")
    pages = report.render_notebooks_html(tmp_path)
    assert pages == [tmp_path / "01_dataset_ingestion.html"]
    page = pages[0].read_text()
    assert "print" in page and "hello" in page
    assert not re.findall(r'<script[^>]+src="https?://', page)
    write_text(tmp_path / "02_broken.ipynb", "not a notebook")
    with pytest.raises(ValueError, match="02_broken.ipynb is not a readable notebook"):
        report.render_notebooks_html(tmp_path)
    with pytest.raises(FileNotFoundError):
        report.render_notebooks_html(tmp_path / "absent")


def test_tables_are_flat_and_scroll_in_their_own_box():
    html = str(report.pairs_table({"a<b": 0.123456, "nested": {"x": [1, 2]}}))
    assert html.startswith('<div class="scroll">') and "a&lt;b" in html and "0.1235" in html
    assert "<td>{\"x\": [1, 2]}</td>" in html and html.count("<table") == 1


def test_published_systems_show_their_source_and_models_outside_the_runs_selection_are_left_out(tmp_path):
    paths = make_outputs_tree(tmp_path / "smoke" / "synthetic-subject")
    recipe = {"citation": "Krizhevsky et al. 2012 (AlexNet)", "differences": ["no hub weights offline",
                                                                              "a subject-level split"],
              "hyperparameter_search": "not run"}
    storage.write_json(paths.root / "models" / "alexnet.json", {"system": True, "recipe": recipe, "epochs_run": 1,
                                                                "weights": "random"})
    storage.write_json(paths.root / "models" / "vit.json", {"system": True, "recipe": {**recipe, "citation": "ViT"},
                                                            "epochs_run": 1, "weights": "random"})
    metadata = storage.read_json(paths.run_metadata)
    metadata["settings"]["models"] = ["baseline_cnn", "resnet50", "alexnet"]  # vit: left by an earlier run
    storage.write_json(paths.run_metadata, metadata)
    training = section_of(report.build_report(paths).read_text(encoding="utf-8"), "training")
    assert "Krizhevsky et al. 2012 (AlexNet)" in training
    assert "no hub weights offline; a subject-level split" in training
    assert ">vit<" not in training and ">alexnet<" in training
