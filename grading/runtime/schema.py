"""The data the grader passes around: the manifest (manifest.json) and the outcome of each test.

The manifest lists every graded test with its part, points, visibility and timeout; it is fixed when the bundle is
built (grading/build/manifest.py writes it) and read by `grade()` (grade.py) and results.py. Plain types only:
this module imports nothing of the grader, so every other module may import it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TypedDict

# The given packages: top-level packages of the course that students use but never write (building blocks and
# programs). The student release and the autograder bundle copy each one whole; the runner imports them from the
# grader's own copy, never from a submission. A package missing from the repository is skipped.
GIVEN_PACKAGES = ("lmkit", "lmrun")


class ManifestPart(TypedDict):
    """A part of the course as manifest.json lists it (config.Part as plain data)."""

    module: str  # assignment/<module>.py
    label: str  # what students call it: "1", "2a", ...
    title: str
    points: float | None  # core points; None for a graded module that config.PARTS does not know
    bonus: float  # bonus points


class ManifestTest(TypedDict):
    """A graded test as manifest.json lists it."""

    id: str  # pytest node id: "tests/test_rnn.py::test_cell_shape"
    file: str  # the test file, relative to the bundle: "tests/test_rnn.py"
    name: str  # the test's name, parameters included
    module: str  # the graded module
    points: float
    bonus: bool  # @pytest.mark.bonus
    hidden: bool  # in tests/hidden/
    timeout: float  # seconds


class _Settings(TypedDict):
    timeout: float  # seconds per test, unless the test sets its own
    collect_timeout: float  # seconds to import the student's module
    total_timeout: float  # seconds for the whole run
    preimport: list[str]  # modules the runner imports before any timeout starts


class _Limits(TypedDict, total=False):
    """The runner's limits (sandbox.Limits; the course's values: grading/config.py's RUNNER_LIMITS)."""

    memory_mb: int
    data_mb: int
    processes: int
    open_files: int
    cpu_seconds: int
    file_size_mb: int
    cgroup: bool


class Settings(_Settings, total=False):
    """The grader's limits as manifest.json holds them (defaults from grading/config.py)."""

    grace: float  # unused since every test is judged; older manifests carry it
    limits: _Limits  # the runner's limits; a manifest without them gets sandbox.Limits' defaults


class Manifest(TypedDict):
    """manifest.json: every graded test with its part, points, visibility and timeout."""

    format: int  # 1
    parts: list[ManifestPart]  # in config.PARTS order, then modules config.PARTS does not know
    files: dict[str, str]  # test file -> the module it grades
    judged: list[str]  # test files the judge grades: every graded file (each of its tests takes `student`)
    tests: list[ManifestTest]  # by part, then visible before hidden, core before bonus, then file order
    settings: Settings


def load_manifest(path: str | os.PathLike) -> Manifest:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass
class TestOutcome:
    """How one graded test ended."""

    __test__ = False  # not a pytest test class

    outcome: str  # passed | failed | skipped | error (import) | crashed | timeout | missing | not_run
    message: str = ""
    duration: float = 0.0


@dataclass
class RunResult:
    """One grading run: the outcome of every test asked for, with what was noticed, the time and the memory."""

    outcomes: dict[str, TestOutcome] = field(default_factory=dict)  # node id -> TestOutcome
    collect_errors: dict[str, str] = field(default_factory=dict)  # test file -> message
    notes: list[str] = field(default_factory=list)
    wall: float = 0.0
    peak_rss_mb: float = 0.0  # max over children (ru_maxrss) and over samples of /proc
    peak_anon_mb: float = 0.0  # anonymous memory (RssAnon): what a container's memory limit really charges
    peak: dict[str, float] = field(default_factory=dict)  # data_mb, threads; cgroup_mb, tasks (judge.py)
    user: str = ""
