"""Run environment: seeds, determinism, hardware, library versions and the distribution strategy."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import random
import subprocess

import numpy as np

from alzlib import config

LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "scikit-learn", "nilearn",
             "umap-learn", "opencv-python-headless", "papermill", "matplotlib")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up lines and Python-side notices out of notebook outputs (oneDNN stays on).

    The Python notices silenced are advice for library authors (such as "tf.function retracing" when several
    models predict in one notebook); errors still show.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def set_seeds(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and Keras; with `deterministic`, switch TensorFlow to deterministic ops."""
    quiet_tensorflow()
    random.seed(seed)
    np.random.seed(seed)
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


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
    """Describe the machine: CPU, cores, memory and visible GPUs."""
    gpus = []
    try:
        import tensorflow as tf

        gpus = [tf.config.experimental.get_device_details(device).get("device_name", device.name)
                for device in tf.config.list_physical_devices("GPU")]
    except ImportError:
        pass
    memory_gib = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_gib = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "memory_gib": memory_gib, "gpus": gpus}


def distribution_strategy():
    """Return MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, MirroredStrategy over several visible
    GPUs, else TensorFlow's default strategy."""
    import tensorflow as tf

    if cluster_config():
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def cluster_config() -> dict:
    """Return the `cluster` of the TF_CONFIG environment variable ({} when unset), naming it when it is not JSON."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); expected e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                         '"index": 0}}.') from error
    if not isinstance(value, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {text[:80]!r}.")
    return value.get("cluster") or {}


def run_metadata(settings: config.Settings) -> dict:
    """Return what every report states about how a result was made."""
    return {"settings": settings.to_dict(), "profile": settings.profile.to_dict(), "git_commit": git_commit(),
            "libraries": library_versions(), "hardware": hardware()}
