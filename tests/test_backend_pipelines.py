"""The pipeline on Keras' other backends: unit tests of the backend-sensitive modules and the whole smoke pipeline
run under JAX and PyTorch in child processes (Keras fixes its backend at import, so this session cannot switch).

Marked `notebooks` (minutes, like the notebook tier) and `backend_jax` / `backend_torch`; skipped where that backend
is not installed (`pip install -e ".[jax]"` or `".[torch]"`)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from alzlib import config

BACKENDS = [pytest.param(name, marks=[pytest.mark.notebooks, getattr(pytest.mark, f"backend_{name}"),
                                      pytest.mark.skipif(importlib.util.find_spec(name) is None,
                                                         reason=f"{name} is not installed: pip install -e "
                                                                f"\".[{name}]\"")])
            for name in ("jax", "torch")]
# The tests whose code paths differ per backend: the input pipeline, save/reload/predict, training runs
# (resume, batch norm, checkpoint), Grad-CAM's gradients and its randomisation checks.
BACKEND_SENSITIVE_TESTS = ["tests/test_preprocessing.py", "tests/test_models.py", "tests/test_training.py",
                           "tests/test_explain.py", "tests/test_backend.py"]


def run_child(arguments: list[str], keras_backend: str, outputs=None, timeout: int = 1500):
    """Run a Python child with KERAS_BACKEND set (and ALZ_OUTPUTS_DIR when `outputs` is given)."""
    environment = {**os.environ, "KERAS_BACKEND": keras_backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if outputs is not None:
        environment["ALZ_OUTPUTS_DIR"] = str(outputs)
    return subprocess.run([sys.executable, *arguments], cwd=config.PROJECT_ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("keras_backend", BACKENDS)
def test_backend_sensitive_unit_tests_pass_on_the_backend(keras_backend):
    result = run_child(["-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", *BACKEND_SENSITIVE_TESTS],
                       keras_backend)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("keras_backend", BACKENDS)
def test_smoke_pipeline_runs_end_to_end_on_the_backend(keras_backend, tmp_path):
    # Every model, the four published systems included (issue 18: --models all runs end to end on smoke).
    result = run_child(["run_all.py", "--profile", "smoke", "--backend", keras_backend, "--models", "all"],
                       keras_backend, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    outputs = tmp_path / "smoke" / config.run_name(None, "smoke")  # the run folder, outputs/<profile>/<run>/
    summary = json.loads((outputs / "run_summary.json").read_text())
    assert summary["backend"] == keras_backend and summary["status"] == "ok"
    numbered = len(list(config.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")))
    assert len(summary["notebooks"]) == numbered + len(config.EXTRA_MODEL_NAMES)
    records = [json.loads(path.read_text()) for path in (outputs / "models").glob("*.json")]
    trained = [record for record in records if "dtype_policy" in record]  # Keras models (not linear_pixels)
    assert trained and all(record["backend"] == keras_backend for record in trained)
    systems = {record["model"]: record for record in records if record.get("system")}
    assert set(systems) == set(config.EXTRA_MODEL_NAMES)
    assert all(record["run"]["backend"] == keras_backend for record in systems.values())
    evaluated = {path.parent.name for path in (outputs / "evaluation").glob("*/metrics.json")}
    assert set(config.ALL_MODEL_NAMES) <= evaluated
    assert (outputs / "report.html").is_file()
