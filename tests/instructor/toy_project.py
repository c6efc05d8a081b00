"""A tiny synthetic course (two parts, no TensorFlow) that the release builder and the grader are tested on.

`make_toy(root)` writes it: assignment/alpha.py and assignment/beta.py with solution markers in functions, methods,
a decorated static method and a nested function; visible, hidden and bonus tests with points, each calling the
student's code through the `student` fixture (as every graded test must). Not collected by pytest itself (its name
does not start with test_)."""

import json
from pathlib import Path

from grading.config import Part

PARTS = (Part("alpha", "A", "arithmetic", 6), Part("beta", "B", "statistics", 2, bonus=3))
# Small limits so the failure modes are quick to provoke.
SETTINGS = {"timeout": 4.0, "collect_timeout": 3.0, "total_timeout": 90.0, "grace": 3.0, "preimport": []}

ALPHA = '''\
"""Part A: arithmetic, with one region of each kind the builder must handle."""
import functools


def add(a, b):
    """Returns a + b."""
    # TODO: add the two numbers (~1 line)
    # BEGIN SOLUTION
    return a + b
    # END SOLUTION


class Accumulator:
    """Sums what it is given."""

    def __init__(self):
        self.total = 0

    def push(self, x):
        """Adds x; returns the new total."""
        # TODO: 1. add x to self.total
        #       2. return the new total (~2 lines)
        # BEGIN SOLUTION
        self.total += x
        return self.total
        # END SOLUTION

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def twice(x):
        """Returns 2 * x."""
        # TODO: double x (~1 line)
        # BEGIN SOLUTION
        return 2 * x
        # END SOLUTION


def make_scaler(k):
    """Returns a function multiplying its argument by k."""

    def scale(x):
        if x is None:
            raise ValueError("x must be a number")
        # TODO: multiply x by k (~1 line)
        # BEGIN SOLUTION
        return k * x
        # END SOLUTION

    return scale
'''

BETA = '''\
"""Part B: statistics."""
SCAFFOLD_CONSTANT = 7


def mean(xs):
    """Returns the arithmetic mean of xs."""
    if not xs:
        raise ValueError("mean of nothing")
    # TODO: sum, then divide by the count (~2 lines)
    # BEGIN SOLUTION
    total_of_values = sum(xs)
    result = total_of_values / len(xs)
    # END SOLUTION
    return result


def spread(xs):
    """Returns max(xs) - min(xs)."""
    # BEGIN SOLUTION
    return max(xs) - min(xs)
    # END SOLUTION
'''

TESTS = {
    "tests/conftest.py": '''\
"""Toy conftest: the `student` fixture (as tests/conftest.py has it), nothing heavy."""
import sys

import pytest


@pytest.fixture
def student(request):
    judge = getattr(sys.modules.get("grading.runtime.judge"), "ACTIVE", None)
    if judge is not None:
        return judge.student(request.node)
    from grading.runtime.probes import InProcessStudent

    return InProcessStudent()
''',
    "tests/checks.py": """\
def assert_equal(got, expected, what="value"):
    assert got == expected, f"expected {what} {expected!r}, got {got!r}"
""",
    "tests/test_alpha.py": """\
import pytest

from checks import assert_equal


def accumulate(values):
    from assignment import alpha

    acc = alpha.Accumulator()
    total = None
    for value in values:
        total = acc.push(value)
    return total


def scaled(k, x):
    from assignment import alpha

    return alpha.make_scaler(k)(x)


@pytest.mark.points(1)
def test_add(student):
    assert_equal(student.call("alpha.add", 2, 3), 5, "add(2, 3)")


@pytest.mark.points(1)
def test_add_negative(student):
    assert_equal(student.call("alpha.add", -2, -3), -5, "add(-2, -3)")


@pytest.mark.points(1)
def test_accumulator(student):
    assert_equal(student.run(accumulate, [2, 3]), 5, "the total after pushing 2 and 3")


@pytest.mark.points(1)
def test_twice(student):
    assert_equal(student.call("alpha.Accumulator.twice", 4), 8, "twice(4)")


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.points(0.5)
def test_scaler(student, k):
    assert_equal(student.run(scaled, k, 5), 5 * k, f"make_scaler({k})(5)")
""",
    "tests/hidden/test_alpha_hidden.py": """\
import pytest


@pytest.mark.points(1)
def test_add_floats_hidden(student):
    assert student.call("alpha.add", 0.5, 0.25) == 0.75
""",
    "tests/reference_beta.py": """\
\"\"\"Toy shared reference (as tests/reference_*.py): a reference and a probe helper the beta tests share.\"\"\"


def reference_mean(xs):
    return sum(xs) / len(xs)


def call_mean(xs):
    \"\"\"Probe helper, sent by source with `uses=`: beta.mean(xs).\"\"\"
    from assignment import beta

    return beta.mean(xs)
""",
    "tests/test_beta.py": """\
import pytest

from reference_beta import call_mean, reference_mean


def mean_of(xs):
    return call_mean(xs)


@pytest.mark.points(1)
def test_mean(student):
    assert student.run(mean_of, [1, 2, 3], uses=(call_mean,)) == reference_mean([1, 2, 3])


@pytest.mark.points(1)
def test_spread(student):
    assert student.call("beta.spread", [4, 1, 9]) == 8
""",
    "tests/test_beta_extensions.py": """\
import pytest


@pytest.mark.bonus
@pytest.mark.points(3)
def test_mean_of_floats_bonus(student):
    assert student.call("beta.mean", [0.5, 1.5]) == 1.0
""",
}


def make_toy(root):
    """Writes the toy course under `root` and returns its path."""
    root = Path(root)
    files = {"assignment/__init__.py": '"""Toy package."""\n', "assignment/alpha.py": ALPHA, "assignment/beta.py": BETA}
    files.update(TESTS)
    files["data/corpora.json"] = '{"toy": {"url": "http://127.0.0.1/toy.txt", "sha256": "0"}}\n'
    files["README.md"] = "# Toy course (instructor copy)\n"
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 3,
                "metadata": {},
                "outputs": [{"output_type": "stream", "name": "stdout", "text": ["5\n"]}],
                "source": ["from assignment import alpha\n", "print(alpha.add(2, 3))"],
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    files["notebooks/walkthrough.ipynb"] = json.dumps(notebook, indent=1)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
