"""Atomic writes: a failure never leaves a file that looks complete."""

import json

import numpy as np
import pandas as pd
import pytest

from alzlib import storage


def test_write_json_round_trips_numpy_values(tmp_path):
    path = storage.write_json(tmp_path / "a" / "b.json", {"n": np.int64(3), "x": np.float32(0.5), "v": np.arange(3)})
    assert storage.read_json(path) == {"n": 3, "x": 0.5, "v": [0, 1, 2]}


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = storage.write_json(tmp_path / "result.json", {"ok": True})
    with pytest.raises(TypeError):
        storage.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [entry.name for entry in tmp_path.iterdir()] == ["result.json"]


def test_undefined_numbers_are_written_as_null_not_invalid_json(tmp_path):
    data = {"x": float("nan"), "y": [np.float32("inf")], "z": np.array([1.0, np.nan])}
    path = storage.write_json(tmp_path / "n.json", data)
    assert "NaN" not in path.read_text()
    assert storage.read_json(path) == {"x": None, "y": [None], "z": [1.0, None]}


def test_parquet_round_trip_and_missing_file_message(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = storage.write_parquet(tmp_path / "f.parquet", frame)
    pd.testing.assert_frame_equal(storage.read_parquet(path), frame)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        storage.read_parquet(tmp_path / "missing.parquet")
