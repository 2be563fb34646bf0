"""Tests of the final HTML report, built from a small fake outputs tree made here."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from alzlib import config, report, robustness, storage

HOSTILE_TEXT = "<script>alert('x')</script>"


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


def write_inputs_metadata(root: Path, synthetic: bool) -> None:
    """Write the manifest, ingestion report, run metadata and run summary."""
    manifest = pd.DataFrame({"path": [f"/data/{index}.jpg" for index in range(12)],
                             "label": ["NonDemented", "MildDemented"] * 6,
                             "subject_id": [f"SYN{index // 2:04d}" for index in range(12)],
                             "split": ["train"] * 6 + ["val"] * 2 + ["test"] * 4})
    storage.write_parquet(root / "manifest.parquet", manifest)
    storage.write_json(root / "ingestion_report.json", {
        "data_dir": f"/data/synthetic/{HOSTILE_TEXT}", "classes": ["NonDemented", "MildDemented"], "task": "2-class",
        "data_source": {"kind": "synthetic" if synthetic else "class_folders", "layout": "class_folders",
                        "synthetic": synthetic},
        "counts": {"images": 12, "subjects": 6}, "skipped": [{"path": "/data/broken.jpg", "reason": "truncated JPEG"}],
        "split_policy": "subject", "split_warnings": [f"only 2 subjects of MildDemented {HOSTILE_TEXT}"],
        "leakage_audit": {"subject": {"overlapping_subjects": 0}, "shipped": None}, "extra_key_from_the_future": 1})
    storage.write_json(root / "run_metadata.json", {
        "settings": {"profile": "smoke", "seed": 42, "data_dir": "/data", "split": "subject", "epochs": 1,
                     "weights": "none", "deterministic": True, "synthetic": synthetic},
        "profile": {"name": "smoke", "image_size": 64}, "git_commit": "0123abc-dirty",
        "libraries": {"python": "3.11.7", "numpy": "2.4.0"}, "hardware": {"cpu_cores": 2, "gpus": []}})
    storage.write_json(root / "run_summary.json", {"profile": "smoke",
                                              "notebooks": [{"name": "01_dataset_ingestion", "seconds": 3.2}]})


def write_stage_outputs(root: Path) -> None:
    """Write EDA, features, two trained models, evaluation and Grad-CAM files."""
    save_small_figure(root / "eda" / "class_balance.png", "class balance")
    storage.write_json(root / "eda" / "shortcut_audit.json",
                       {"score": 0.71, "chance": 0.5, "properties": ["mean", "size"],
                        "warning": "image size alone predicts the class"})
    write_text(root / "eda" / "image_sizes.csv", f"width,height,note\n176,208,{HOSTILE_TEXT}\n")
    save_small_figure(root / "features" / "umap.png", "umap")
    for name, seconds in (("baseline_cnn", 12.5), ("resnet50", 40.0)):
        storage.write_json(root / "models" / f"{name}.json", {"weights": "none", "training_time_seconds": seconds,
                                                        "best_epoch": 1, "best_val_score": 0.5, "parameters": 1000})
    save_small_figure(root / "training" / "baseline_cnn" / "curves.png", "curves")
    write_text(root / "evaluation" / "summary.csv",
               "model,balanced_accuracy,ci_low,ci_high\nbaseline_cnn,0.61,0.5,0.72\nresnet50,0.55,0.44,0.66\n")
    for name in ("baseline_cnn", "resnet50"):
        storage.write_json(root / "evaluation" / name / "metrics.json",
                      {"splits": {"test": {"slice": {"intervals": {"balanced_accuracy": [0.5, 0.7]},
                                                     "calibration": {"ece": 0.08, "bins": [{"count": 3}]}}}}})
    storage.write_json(root / "evaluation" / "summary.json", {"control_check": {"passed": True}})
    for figure_name in ("confusion_test_slice", "roc_test", "reliability_test"):
        save_small_figure(root / "evaluation" / "baseline_cnn" / f"{figure_name}.png", figure_name)
    save_small_figure(root / "gradcam" / "gradcam_panel.png", "grad-cam")
    storage.write_json(root / "gradcam" / "randomisation_check.json", {"baseline_cnn": {"spearman": 0.12}})
    write_text(root / "gradcam" / "localisation_scores.csv", "model,pointing_game\nbaseline_cnn,0.4\n")
    save_small_figure(root / "comparison" / "model_comparison.png", "comparison")
    write_text(root / "comparison" / "paired_differences.csv",
               "model_a,model_b,difference\nbaseline_cnn,resnet50,0.1\n")


def write_robustness_outputs(root: Path) -> None:
    """Write real robustness tables and a curve figure with a trivial predictor."""
    images = np.stack([np.full((16, 16), value, dtype=np.uint8) for value in (30, 40, 150, 160)])
    labels = np.array([0, 0, 1, 1])

    def predict(batch: np.ndarray) -> np.ndarray:
        bright = (batch.reshape(len(batch), -1).mean(axis=1) > 90).astype(float)
        return np.stack([1 - bright, bright], axis=1)

    table = robustness.evaluate_robustness({"baseline_cnn": predict}, images, labels, corruptions=["brightness"])
    robustness.write_robustness_tables(table, robustness.corruption_errors(table), root / "robustness")
    storage.save_figure(robustness.plot_robustness_curves(table), root / "robustness" / "curves.png", dpi=50)


def make_outputs_tree(root: Path, synthetic: bool = True) -> config.OutputPaths:
    """Write a small outputs tree like a smoke run's, with a few inputs deliberately missing."""
    write_inputs_metadata(root, synthetic)
    write_stage_outputs(root)
    write_robustness_outputs(root)
    write_text(root / "notebooks" / "01_dataset_ingestion.html", "<html><body>executed notebook</body></html>")
    write_text(root / "notebooks" / "02_eda.ipynb", "{}")
    return config.OutputPaths(root)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[config.OutputPaths, str]:
    paths = make_outputs_tree(tmp_path_factory.mktemp("outputs") / "smoke")
    return paths, report.build_report(paths).read_text(encoding="utf-8")


def test_report_has_every_section_and_the_synthetic_banner(built):
    paths, document = built
    assert paths.report.is_file() and not list(paths.root.glob(".report.html*"))
    for _, title, _ in report.SECTIONS:
        assert f"<h2>{title}</h2>" in document
    assert 'class="banner synthetic"' in document and "SYNTHETIC DATA" in document
    assert "Nothing in this report is for clinical use" in document
    assert "0123abc-dirty" in document and "image size alone predicts the class" in document
    assert '<a href="notebooks/01_dataset_ingestion.html">' in document
    assert "Executed but not rendered to HTML: 02_eda.ipynb" in document
    calibration = document[document.index('<section id="calibration">'):document.index('<section id="confusion">')]
    assert "<th>splits.test.slice.calibration.ece</th><td>0.08</td>" in calibration
    assert "splits.test.slice.calibration.bins" not in calibration
    assert "evaluation/summary.json" in document and "control_check" in document


def test_missing_inputs_are_marked_in_place_and_listed_at_the_top(built):
    _, document = built
    expected_missing = ["models/resnet50_attention.json", "models/efficientnetb0.json",
                        "models/baseline_cnn_random_labels.json", "training/resnet50/curves.png",
                        "evaluation/resnet50/confusion*.png", "evaluation/resnet50/reliability*.png"]
    top = document[:document.index("<nav>")]
    for name in expected_missing:
        assert f"not run: {name} missing" in document
        assert f"<code>{name}</code>: missing" in top
    assert "not run: training/baseline_cnn/curves.png missing" not in document


def test_every_png_is_embedded_as_a_data_uri(built):
    paths, document = built
    pngs = sorted(paths.root.rglob("*.png"))
    sources = re.findall(r'<img src="([^"]+)"', document)
    assert len(sources) == len(pngs) == 9
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    curves = (paths.root / "training" / "baseline_cnn" / "curves.png").read_bytes()
    assert base64.b64encode(curves).decode() in document


def test_report_makes_no_external_requests(built):
    _, document = built
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', document, flags=re.IGNORECASE)
    assert references
    for reference in references:
        assert not re.match(r"^(https?:)?//", reference, flags=re.IGNORECASE), reference
        assert reference.startswith(("data:image/", "#", "notebooks/")), reference
    assert "<link" not in document and "@import" not in document and "url(" not in document


def test_text_from_inputs_is_escaped(built):
    _, document = built
    assert "<script" not in document.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in document
    assert document.count("&lt;script&gt;") >= 3  # data folder, split warning and CSV cell


def test_missing_or_unreadable_stages_say_so(tmp_path):
    paths = config.OutputPaths(tmp_path / "cpu")
    paths.root.mkdir()
    write_text(paths.root / "ingestion_report.json", "{not json")
    write_text(paths.root / "eda" / "broken.png", "this is not a PNG")
    document = report.build_report(paths).read_text()
    assert "could not read ingestion_report.json: JSONDecodeError" in document
    assert "could not read eda/broken.png: not a valid PNG file" in document
    for name in ("run_metadata.json", "run_summary.json", "manifest.parquet", "eda/shortcut_audit.json",
                 "features/ (tables and figures)", "evaluation/summary.csv", "robustness/ (tables and figures)",
                 "notebooks/*.html"):
        assert f"not run: {name} missing" in document, name
    assert 'class="banner unknown"' in document and 'class="banner synthetic"' not in document
    assert "<img" not in document


def test_run_metadata_falls_back_to_a_recipe_record(tmp_path):
    paths = config.OutputPaths(tmp_path / "cpu")
    run = {"settings": {"profile": "cpu", "seed": 7, "deterministic": False, "synthetic": True}, "git_commit": "feed42"}
    storage.write_json(paths.models / "resnet50.json", {"weights": "imagenet", "run": run})
    document = report.build_report(paths).read_text()
    assert "not run: run_metadata.json missing" in document
    assert "Run metadata below is taken from models/resnet50.json" in document
    assert "feed42" in document and 'class="banner synthetic"' in document


def test_real_data_gets_no_synthetic_banner(tmp_path):
    paths = config.OutputPaths(tmp_path / "full")
    write_inputs_metadata(paths.root, synthetic=False)
    document = report.build_report(paths).read_text()
    assert 'class="banner synthetic"' not in document and 'class="banner unknown"' not in document
    assert "Nothing in this report is for clinical use" in document


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


def test_json_values_render_as_escaped_tables():
    # Floats show with four significant digits; keys are escaped like values.
    assert report._json_html({"a<b": 0.123456, "items": [1, 2]}) == (
        '<table class="kv"><tbody><tr><th>a&lt;b</th><td>0.1235</td></tr><tr><th>items</th><td>1, 2</td></tr>'
        "</tbody></table>")
