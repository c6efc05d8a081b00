"""Shared test set-up: quiet TensorFlow, fixed seeds, and the `student` fixture the graded tests call code through."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "clause(*texts): the docstring promises this graded test pins, each as 'module.function: words'"
    )


def _judge():
    """The grader's judge when these tests run under it (it never imports TensorFlow or the student's code)."""
    module = sys.modules.get("grading.runtime.judge")
    return getattr(module, "ACTIVE", None)


@pytest.fixture
def student(request):
    """Calls the student's code: `out = student.run(probe, *args)` (see grading/runtime/probes.py).

    Under plain pytest the probe runs here; under the grader it runs in the sandboxed runner and only plain data
    comes back. Either way `out` holds arrays, numbers, strings, lists and dicts, and an exception raised by the
    student's code arrives as `StudentError` (`student.error(probe, ...)` returns it)."""
    judge = _judge()
    if judge is not None:
        return judge.student(request.node)
    from grading.runtime.probes import InProcessStudent

    return InProcessStudent()


@pytest.fixture(autouse=True)
def _seed():
    """Seed Python, NumPy and TensorFlow before every test, so a test's inputs never depend on order."""
    if _judge() is None:
        import keras

        keras.utils.set_random_seed(1234)
    yield
