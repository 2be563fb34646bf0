"""Shared test setup: the smoke profile everywhere, TensorFlow quiet."""

import os

# nbmake cannot inject papermill parameters: the notebooks read the profile from the environment.
os.environ.setdefault("ALZ_PROFILE", "smoke")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
