"""Run environment: seeds, determinism, hardware and library versions (per-backend parts in alzlib.backend)."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import random
import subprocess

import numpy as np

from alzlib import backend, config

LIBRARIES = ("tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "keras", "numpy", "pandas", "scikit-learn",
             "nilearn", "umap-learn", "opencv-python-headless", "papermill", "matplotlib")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up lines and Python-side notices out of notebook outputs (oneDNN stays on).

    The Python notices silenced are advice for library authors (such as "tf.function retracing" when several
    models predict in one notebook); errors still show.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def set_seeds(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and Keras; with `deterministic`, switch the Keras backend to deterministic ops.

    Raises alzlib.backend.BackendMissing (naming the pip extra to install) when the Keras backend is not installed.
    """
    quiet_tensorflow()
    backend.check_backend()
    random.seed(seed)
    np.random.seed(seed)
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic:
        backend.enable_determinism()


def library_versions() -> dict:
    """Return the installed versions of the libraries a result depends on."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """Return the project's git commit (with '-dirty' for local changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=config.PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if status else commit


def hardware() -> dict:
    """Describe the machine: CPU, cores, memory and the GPUs the Keras backend sees."""
    memory_gib = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_gib = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "memory_gib": memory_gib,
            "gpus": [gpu.name for gpu in backend.visible_gpus()]}


def run_metadata(settings: config.Settings) -> dict:
    """Return what every report states about how a result was made."""
    return {"settings": settings.to_dict(), "profile": settings.profile.to_dict(), "git_commit": git_commit(),
            "backend": backend.requested_backend(),
            "libraries": library_versions(), "hardware": hardware()}
