"""The project's own files: pyproject.toml declares what the code imports, environment.yml agrees; notebook frames."""

import ast
import re
import sys
import tomllib

import nbformat
import pytest
import yaml

from alzlib import config, pipeline

PARAMETER_NAMES = ["PROFILE", "SEED", "DATA_DIR", "SPLIT", "EPOCHS", "WEIGHTS", "DETERMINISTIC", "FOLDS",
                   "EXTERNAL_DATA", "MODELS"]
NOTEBOOKS = sorted(config.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
# Import names that differ from the distribution that provides them.
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml",
                 "umap": "umap-learn"}
# Declared but never imported by name: what each is for.
USED_WITHOUT_IMPORT = {
    "pyarrow": "pandas' Parquet engine (storage.write_parquet, read_parquet)",
    "jupyterlab": "the notebook interface the README starts",
    "tensorboard": "Keras' TensorBoard callback writes its logs (training.tensorboard_available)",
}
# Modules of this project imported by bare name: tests/fixtures.py, the root conftest.py and run_all.py.
LOCAL_MODULES = {"fixtures", "conftest", "run_all"}


def normalised(name):
    """Return a distribution name in PEP 503 form (lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(text):
    """Split 'name>=1.2' into ('name', '>=1.2'), dropping extras; the name in PEP 503 form."""
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", text)
    return normalised(match.group(1)), match.group(3).replace(" ", "")


def project():
    """Return the [project] table of pyproject.toml."""
    return tomllib.loads((config.PROJECT_ROOT / "pyproject.toml").read_text())["project"]


def declared(*extras):
    """Return the names of the distributions pyproject.toml requires, with those of `extras`."""
    table = project()
    texts = table["dependencies"] + [text for extra in extras for text in table["optional-dependencies"][extra]]
    return {split_requirement(text)[0] for text in texts}


def third_party_imports(folder):
    """Return {distribution: files} for each absolute import of a non-standard, non-local module under `folder`."""
    found = {}
    for path in sorted((config.PROJECT_ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "alzlib" and top not in LOCAL_MODULES:
                    found.setdefault(normalised(DISTRIBUTIONS.get(top, top)), set()).add(path.name)
    return found


def test_every_third_party_import_is_declared():
    # The Keras backend comes from one extra, whichever the machine needs (alzlib.backend imports each lazily).
    runtime = declared("cpu", "gpu", "jax", "torch") | {"tensorflow"}
    undeclared = {name: files for name, files in third_party_imports("alzlib").items() if name not in runtime}
    assert undeclared == {}, "imported by alzlib but not in pyproject.toml's dependencies"
    for_tests = runtime | declared("dev")
    undeclared = {name: files for name, files in third_party_imports("tests").items() if name not in for_tests}
    assert undeclared == {}, "imported by the tests but in neither the dependencies nor the dev extra"


def test_every_declared_dependency_is_used():
    imported = set(third_party_imports("alzlib")) | set(third_party_imports("tests"))
    unused = declared() - imported - set(USED_WITHOUT_IMPORT)
    assert unused == set(), "declared in pyproject.toml but imported nowhere: remove them or say why they are needed"


def test_requires_python_admits_only_versions_the_code_runs_on():
    # tomllib (these tests), datetime.UTC (the benchmarks) and environment.yml's python=3.11.
    assert project()["requires-python"] == ">=3.11"


def test_environment_yml_agrees_with_pyproject():
    table = project()
    wanted = dict(split_requirement(text) for text in table["dependencies"])
    for extra in ("cpu", "dev"):
        wanted.update(split_requirement(text) for text in table["optional-dependencies"][extra])
    environment = yaml.safe_load((config.PROJECT_ROOT / "environment.yml").read_text())
    listed = {}
    for entry in environment["dependencies"]:
        items = entry["pip"] if isinstance(entry, dict) else [entry]
        for item in items:
            if not item.startswith("-e"):
                conda_pin = re.match(r"^[\w\-]+=\d", item)
                name, version = split_requirement(item.replace("=", "==", 1) if conda_pin else item)
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
    call = re.search(r"config\.load_settings\(([^)]*)\)", cells[2].source)
    assert call and re.split(r",\s*", call.group(1).strip()) == PARAMETER_NAMES
    assert any(cell.cell_type == "markdown" and cell.source.startswith("## Conclusion") for cell in cells)
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_the_system_notebook_keeps_the_house_frame_with_its_model_parameter():
    path = config.NOTEBOOKS_DIR / pipeline.SYSTEM_NOTEBOOK
    notebook = nbformat.read(path, as_version=4)
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert notebook.cells[0].source.startswith("# 08s ") and len(parameters) == 1
    assert re.findall(r"^([A-Z_]+) =", parameters[0].source, flags=re.M) == [*PARAMETER_NAMES, "MODEL"]
    call = re.search(r"config\.load_settings\(([^)]*)\)", notebook.cells[2].source)
    assert call and re.split(r",\s*", call.group(1).strip()) == PARAMETER_NAMES
    assert all(not cell.outputs for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
