"""Shared test setup, at the project root so that every way of calling pytest (tests/, one notebook, one file)
runs on the smoke profile with TensorFlow quiet."""

import os

import pytest

# nbmake cannot inject papermill parameters: the notebooks read the profile from the environment. Forced (not
# setdefault): a user's ALZ_PROFILE=cpu in the shell must never make the test run write into outputs/cpu.
os.environ["ALZ_PROFILE"] = "smoke"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(items):
    """Mark notebook runs `notebooks`, so that `-m "not notebooks"` is the fast unit tier."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.notebooks)


@pytest.fixture(autouse=True)
def smoke_profile_after_every_test(monkeypatch):
    """Undo any test's change to ALZ_PROFILE (a pipeline run in a test sets it), so the notebook runs that follow
    stay on the smoke profile: measured, a leaked ALZ_PROFILE=cpu made notebook 05 run the cpu budget and time out."""
    monkeypatch.setenv("ALZ_PROFILE", "smoke")
