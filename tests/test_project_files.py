"""The project's own files: environment.yml agrees with pyproject.toml; notebooks keep the house frame."""

import re
import tomllib

import nbformat
import pytest
import yaml

from alzlib import config

PARAMETER_NAMES = ["PROFILE", "SEED", "DATA_DIR", "SPLIT", "EPOCHS", "WEIGHTS", "DETERMINISTIC"]
NOTEBOOKS = sorted(config.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def split_requirement(text):
    """Split 'name>=1.2' into ('name', '>=1.2'), dropping extras."""
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", text)
    return match.group(1).lower(), match.group(3).replace(" ", "")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((config.PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(split_requirement(text) for text in project["dependencies"])
    for extra in ("cpu", "dev"):
        wanted.update(split_requirement(text) for text in project["optional-dependencies"][extra])
    environment = yaml.safe_load((config.PROJECT_ROOT / "environment.yml").read_text())
    listed = {}
    for entry in environment["dependencies"]:
        items = entry["pip"] if isinstance(entry, dict) else [entry]
        for item in items:
            if not item.startswith("-e"):
                name, version = split_requirement(item.replace("=", "==", 1) if re.match(r"^[\w\-]+=\d", item) else item)
                listed[name] = version
    assert {name: listed.get(name) for name in wanted} == wanted
    assert listed["python"] == "==3.11"


def test_notebooks_cover_the_pipeline_in_order():
    numbers = [path.name[:2] for path in NOTEBOOKS]
    assert numbers == [f"{index:02d}" for index in range(1, len(NOTEBOOKS) + 1)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_keeps_the_house_frame(path):
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {path.name[:2]} ")
    parameters = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1
    assert re.findall(r"^([A-Z_]+) =", parameters[0].source, flags=re.M) == PARAMETER_NAMES
    assert "config.load_settings(PROFILE, SEED, DATA_DIR, SPLIT, EPOCHS, WEIGHTS, DETERMINISTIC)" in cells[2].source
    assert any(cell.cell_type == "markdown" and cell.source.startswith("## Conclusion") for cell in cells)
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
