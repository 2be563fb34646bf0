"""run_all's runner: notebook selection, papermill execution, fail-fast, timings and resume."""

import sys

import nbformat
import pytest

from alzlib import config, runner, storage

sys.path.insert(0, str(config.PROJECT_ROOT))
import run_all  # noqa: E402  (the script lives at the project root)


def write_notebook(path, source):
    """Write a one-cell notebook with a papermill parameters cell."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell('PROFILE = None\nSEED = 42\nDATA_DIR = None\nSPLIT = "subject"',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source),
    ]
    nbformat.write(notebook, path)


@pytest.fixture
def notebook_dir(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    log = tmp_path / "log.txt"
    for number, name in (("01", "first"), ("02", "second"), ("03", "third")):
        write_notebook(folder / f"{number}_{name}.ipynb", f"open({str(log)!r}, 'a').write('{number} ' + PROFILE + '\\n')")
    (folder / "scratch.ipynb").write_text("{}")  # not a pipeline notebook: ignored
    return folder


def parameters(profile="smoke"):
    return {"PROFILE": profile, "SEED": 1, "DATA_DIR": None, "SPLIT": "subject"}


def test_discovers_numbered_notebooks_in_order(notebook_dir):
    steps = runner.discover_notebooks(notebook_dir)
    assert [step.name for step in steps] == ["01_first", "02_second", "03_third"]


def test_select_only_and_from(notebook_dir):
    steps = runner.discover_notebooks(notebook_dir)
    assert [s.number for s in runner.select_notebooks(steps, only="1,03")] == ["01", "03"]
    assert [s.number for s in runner.select_notebooks(steps, start="02")] == ["02", "03"]
    with pytest.raises(ValueError, match="No notebook numbered 07"):
        runner.select_notebooks(steps, only="07")
    with pytest.raises(ValueError, match="look like 01"):
        runner.select_notebooks(steps, only="first")


def test_runs_in_order_and_records_timings(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    summary = runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), echo=lambda _: None)
    assert (tmp_path / "log.txt").read_text().split("\n")[:3] == ["01 smoke", "02 smoke", "03 smoke"]
    recorded = storage.read_json(paths.run_summary)
    assert recorded["status"] == "ok"
    assert [entry["name"] for entry in recorded["notebooks"]] == ["01_first", "02_second", "03_third"]
    assert all(entry["seconds"] > 0 for entry in recorded["notebooks"])
    assert (paths.notebooks / "02_second.ipynb").is_file()
    assert summary["total_seconds"] > 0


def test_fails_fast_naming_the_executed_notebook(notebook_dir, tmp_path):
    write_notebook(notebook_dir / "02_second.ipynb", "raise ValueError('bad input in 02')")
    paths = config.OutputPaths(tmp_path / "out")
    with pytest.raises(runner.NotebookFailed, match="02_second failed .*bad input in 02.*02_second.ipynb"):
        runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), echo=lambda _: None)
    recorded = storage.read_json(paths.run_summary)
    assert recorded["status"] == "failed" and recorded["failed"] == "02_second"
    assert "03" not in (tmp_path / "log.txt").read_text()


def test_resume_skips_notebooks_that_are_up_to_date(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    steps = runner.discover_notebooks(notebook_dir)
    runner.run_pipeline(steps, paths, parameters(), echo=lambda _: None)
    write_notebook(notebook_dir / "02_second.ipynb", f"open({str(tmp_path / 'log.txt')!r}, 'a').write('02 again\\n')")
    messages = []
    runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), resume=True, echo=messages.append)
    assert any("01_first: up to date" in message for message in messages)
    lines = (tmp_path / "log.txt").read_text().split("\n")
    assert lines[3:5] == ["02 again", "03 smoke"], "an edited notebook and everything after it run again"


def test_resume_reruns_everything_when_parameters_change(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    steps = runner.discover_notebooks(notebook_dir)
    runner.run_pipeline(steps, paths, parameters(), echo=lambda _: None)
    runner.run_pipeline(steps, paths, {**parameters(), "SEED": 2}, resume=True, echo=lambda _: None)
    assert len((tmp_path / "log.txt").read_text().split()) == 12


def test_run_all_rejects_unknown_notebook_number(capsys):
    assert run_all.main(["--profile", "smoke", "--only", "99"]) == 2
    assert "No notebook numbered 99" in capsys.readouterr().err


def test_run_all_rejects_unknown_profile():
    with pytest.raises(SystemExit):
        run_all.parse_arguments(["--profile", "huge"])


def test_run_all_rejects_a_missing_data_folder(tmp_path, capsys):
    assert run_all.main(["--profile", "smoke", "--data", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_run_all_checks_epochs_and_weights_before_any_notebook_runs(capsys):
    assert run_all.main(["--profile", "smoke", "--epochs", "0"]) == 2
    assert "EPOCHS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.parse_arguments(["--weights", "resnet.h5"])
    assert run_all.parse_arguments(["--weights", "none"]).weights == "none"
