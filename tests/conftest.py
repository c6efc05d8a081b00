"""Shared test set-up: quiet TensorFlow, fixed seeds, every test starting from the same state."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(autouse=True)
def _seed():
    """Seed Python, NumPy and TensorFlow before every test, so a test's inputs never depend on order."""
    import keras

    keras.utils.set_random_seed(1234)
    yield
