"""Write a pipeline notebook in the house frame from a list of cells (a maintainer's tool, not run by the pipeline).

Each cell is ("md", text), ("code", text) or ("parameters", text); the parameters cell gets the papermill tag.
Notebooks are committed without outputs; after creating one, edit it in JupyterLab as usual.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

PARAMETERS = '''PROFILE = None  # "smoke", "cpu" or "full"; None: ALZ_PROFILE, else full with a GPU and cpu without
SEED = 42
DATA_DIR = None  # None: the embedded synthetic cohort (made on first use); else a data set root
SPLIT = "subject"  # "subject" (default, leakage-safe), "shipped" (the data set's own) or "slice" (leaks: demo only)
EPOCHS = None  # None: the profile's epoch budget
WEIGHTS = None  # None or "imagenet": Keras' ImageNet weights where available; "none"; or a weights file
DETERMINISTIC = False  # True: TensorFlow op determinism (slower; identical reruns)
FOLDS = None  # None: the profile's subject-level cross-validation folds (cpu and full 5); 1: the single split only'''

SETTINGS = '''environment.quiet_tensorflow()
settings = config.load_settings(PROFILE, SEED, DATA_DIR, SPLIT, EPOCHS, WEIGHTS, DETERMINISTIC, FOLDS)
environment.set_seeds(settings.seed, settings.deterministic)
settings.to_dict()'''


def write_notebook(path: str | Path, cells: list[tuple[str, str]]) -> Path:
    """Write `cells` as a notebook with the project's kernel metadata; return the path."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for kind, text in cells:
        text = text.strip("\n")
        if kind == "md":
            notebook.cells.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "parameters":
            notebook.cells.append(nbformat.v4.new_code_cell(text or PARAMETERS, metadata={"tags": ["parameters"]}))
        elif kind == "code":
            notebook.cells.append(nbformat.v4.new_code_cell(text))
        else:
            raise ValueError(f"Unknown cell kind {kind!r}: expected md, code or parameters.")
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    nbformat.validate(notebook)
    path = Path(path)
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    sys.exit("Import write_notebook from this module; it has no command line.")
