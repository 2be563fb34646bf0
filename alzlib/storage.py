"""Atomic, machine-readable writes: a killed run never leaves a half-written file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _to_jsonable(value):
    """Convert numpy scalars, arrays and paths so `json` can write them."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _replace_non_finite(value.tolist())
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON: {value!r}")


def _replace_non_finite(value):
    """Replace NaN and infinities (undefined metrics) by None so the file stays valid JSON."""
    if isinstance(value, dict):
        return {key: _replace_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_non_finite(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data) -> Path:
    """Write `data` as indented JSON, atomically (NaN becomes null); return the path."""
    text = json.dumps(_replace_non_finite(data), indent=2, default=_to_jsonable, allow_nan=False)
    with atomic_path(path) as temporary:
        temporary.write_text(text + "\n")
    return Path(path)


def read_json(path: str | os.PathLike):
    """Read a JSON file, naming the file when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the notebook that writes it first.")
    return json.loads(path.read_text())


def write_parquet(path: str | os.PathLike, frame) -> Path:
    """Write a DataFrame to Parquet atomically; return the path."""
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)
    return Path(path)


def write_csv(path: str | os.PathLike, frame, index: bool = False) -> Path:
    """Write a DataFrame as CSV atomically; return the path."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=index)
    return Path(path)


def read_parquet(path: str | os.PathLike):
    """Read a Parquet file, naming the file when it is missing."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the notebook that writes it first.")
    return pd.read_parquet(path)


def save_figure(figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG; return the path."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight", format="png")
    return Path(path)
