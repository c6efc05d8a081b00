"""The judge: runs the graded tests with pytest, sends each probe to the runner, decides every outcome.

`python -m grading.runtime.judge SPEC.json` (started by grade.py) never imports `assignment`, TensorFlow or Keras
(nor the given packages, lmkit/...): an import hook refuses them, so a test file that needs them cannot be judged by
mistake. The tests' `student` fixture
(tests/conftest.py) asks this plugin for a RemoteStudent, whose `run(probe, *args)` crosses to the runner
(sandbox.py, probe_runner.py) and comes back as plain data, or as StudentError / ProbeTimeout / ProbeCrashed.

- Per-test deadline: a probe that does not answer before the test's time limit stops the runner (and every process
  it started); the test fails, the next probe starts a fresh runner.
- Per-runner limits (sandbox.Limits: memory, processes and threads, open files, CPU time): a runner past one loses
  the current test with a message naming the limit, and is replaced by a fresh one for the next test.
- A module that does not import (or hangs, or crashes while importing) fails the tests of its part, once each,
  without importing it again.
- Visible tests run first. Before the first hidden test the runner is stopped and a fresh one started in a fresh
  folder; a hidden test's outcome reaches results.json as passed or failed, nothing more.
- Messages are the judge's: the assertion message of the test (capped), never a traceback through the runner.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypedDict

import pytest

from grading.runtime import probes, sandbox
from grading.runtime.schema import GIVEN_PACKAGES

FORBIDDEN = ("assignment", "tensorflow", "keras", *GIVEN_PACKAGES)
MESSAGE_LIMIT = 1_500  # characters of a visible test's failure message
HIDDEN_MESSAGE = "This hidden test did not pass."
ACTIVE = None  # the Judge of this process, which tests/conftest.py's `student` fixture asks for a RemoteStudent


class SandboxSpec(TypedDict):
    """How the judge starts runners (sandbox.Sandbox as plain data)."""

    python: str
    harness: str  # holds grading/runtime/ with the runner's code (sandbox.install_harness)
    package: str  # the assembled assignment/ package
    given: list[str]  # the grader's given packages (lmkit/, ...), copied beside it into each runner's folder
    scratch: str  # parent of each runner's scratch folder
    user: list | None  # [uid, gid, name] of the runner's user; None: the current user, unsandboxed
    cpu: int | None
    preimport: list[str]
    limits: dict  # sandbox.Limits as a dict (grading/config.py's RUNNER_LIMITS, through the manifest)


class JudgeSpec(TypedDict):
    """spec.json, what grade.py asks of `python -m grading.runtime.judge`."""

    root: str  # the judge's folder: tests/ and pytest.ini
    files: list[str]  # test files, relative to root
    tests: list[str]  # node ids to run, in order
    hidden: list[str]  # the node ids among them of hidden tests
    file_modules: dict[str, str]  # test file -> the module it grades
    timeouts: dict[str, float]  # node id -> seconds
    timeout: float  # seconds per test without an entry in timeouts
    collect_timeout: float  # seconds to import the student's module
    total_timeout: float  # seconds left for this run of the judge
    total_limit: float  # seconds of the whole grading run (for messages)
    maxfail: int | None
    out: str  # where the JudgeReport is written
    sandbox: SandboxSpec


class JudgeReport(TypedDict):
    """outcomes.json, what the judge writes for grade.py."""

    outcomes: dict[str, list]  # node id -> [outcome, message, seconds]
    collect_errors: dict[str, str]  # test file -> message
    notes: list[str]
    exit: int  # pytest's exit code
    peak: dict[str, float]  # the runners' peaks: rss_mb, anon_mb, data_mb, threads; cgroup_mb, tasks with a cgroup


class ForbiddenImport:
    """A meta-path finder refusing the student's package and TensorFlow in the judge."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(
                f"the judge never imports {name!r}: call the student's code through `student.run(probe, ...)` "
                "and keep TensorFlow inside probes"
            )
        return None


class ModuleBroken(Exception):
    """The module this test grades could not be imported by the runner."""


class RemoteStudent(probes.Student):
    """The `student` fixture under the grader: each probe crosses to the runner."""

    mode = "runner"

    def __init__(self, judge: Judge, test: Test):
        self.judge = judge
        self.test = test

    def run(self, probe: Callable, *args: object, uses: Iterable[Callable] = (), **kwargs: object) -> object:
        req = probes.request(probe, args, kwargs, uses)
        reply = self.judge.call(self.test, req)
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise probes.ProbeCrashed("the runner answered something that is not a reply")
        if reply["ok"]:
            return reply.get("value")
        raise probes.StudentError(reply.get("type", "Error"), reply.get("message", ""), reply.get("where", ""))


class Test:
    """What the judge knows of the test being run."""

    def __init__(self, nodeid: str, module: str, timeout: float, hidden: bool):
        self.nodeid = nodeid
        self.module = module
        self.timeout = timeout
        self.hidden = hidden
        self.deadline = time.monotonic() + timeout
        self.seeded = False


class Judge:
    """The pytest plugin: test order, the runner's life, the outcome of every test."""

    def __init__(self, spec: JudgeSpec, sandbox_config: sandbox.Sandbox):
        self.spec = spec
        self.sandbox = sandbox_config
        self.selected = spec["tests"]
        self.hidden = set(spec["hidden"])
        self.runner = None
        self.imported = set()
        self.broken = {}  # module -> message
        self.current = None
        self.reports = {}
        self.outcomes = {}
        self.notes = []
        self.collect_errors = {}
        self.hidden_phase = False
        self.notes_limits = False
        self.peak = {"rss_mb": 0.0, "anon_mb": 0.0, "data_mb": 0.0, "threads": 0.0}
        self.deadline = time.monotonic() + spec["total_timeout"]

    # -- the runner --------------------------------------------------------------------------------------------

    def stop_runner(self) -> None:
        if self.runner is not None:
            self.sample_memory(self.runner)
            for key, value in self.runner.peak().items():
                self.peak[key] = max(self.peak.get(key, 0.0), value)
            self.runner.stop()
        self.runner = None
        self.imported = set()

    def limit_exceeded(self, runner: sandbox.Runner, reply: object = None) -> str | None:
        """The limit `runner` went past (a sentence), after stopping it so the next test gets a fresh one."""
        limit = runner.limit_exceeded(reply)
        if limit is not None:
            self.stop_runner()
        return limit

    def ensure_runner(self) -> sandbox.Runner:
        if self.runner is None:
            try:
                self.runner = sandbox.Runner(self.sandbox)
                if not self.notes_limits:
                    self.notes_limits = True
                    self.notes.append(f"limits of the student's code: {self.sandbox.cgroup_note}")
            except sandbox.RunnerTimeout:
                raise probes.ProbeCrashed("the process for the student's code did not start in time") from None
            except sandbox.RunnerDied as exc:
                raise probes.ProbeCrashed(f"the process for the student's code did not start ({exc.args[0]})") from None
        return self.runner

    def ensure_import(self, module: str) -> None:
        """Imports assignment.<module> in the runner once; raises ModuleBroken (now and for every later test of the
        module) when it does not import."""
        if module in self.broken:
            raise ModuleBroken(self.broken[module])
        if module in self.imported:
            return
        runner = self.ensure_runner()
        limit = self.spec["collect_timeout"]
        what = f"assignment/{module}.py"
        try:
            reply = runner.call({"op": "import", "module": module}, time.monotonic() + limit)
            exceeded = self.limit_exceeded(runner, reply)
            if exceeded:
                reply = {"ok": False, "message": f"importing {what} went past a limit: {exceeded}"}
        except sandbox.RunnerTimeout:
            exceeded = self.limit_exceeded(runner)
            self.stop_runner()
            reply = {
                "ok": False,
                "message": f"importing {what} took longer than {limit:g} s: is there an infinite loop "
                "or heavy work at the top level of the module?",
            }
            if exceeded:
                reply["message"] = f"importing {what} went past a limit: {exceeded}"
        except sandbox.RunnerDied as exc:
            exceeded = self.limit_exceeded(runner)
            self.stop_runner()
            reply = {"ok": False, "message": f"importing {what} crashed its process ({exceeded or exc.args[0]})"}
        if isinstance(reply, dict) and reply.get("ok") is True:
            self.imported.add(module)
            return
        reply = reply if isinstance(reply, dict) else {}
        error = probes.StudentError(reply.get("type", ""), reply.get("message", ""), reply.get("where", ""))
        text = str(error) if reply.get("type") else error.message
        self.broken[module] = (
            f"could not import {what}, so none of the tests of this part could run. The error:\n{text}"
        )
        raise ModuleBroken(self.broken[module])

    def call(self, test: Test, req: probes.ProbeRequest) -> object:
        """Runs one probe for `test` in the runner and returns its reply; ProbeTimeout / ProbeCrashed otherwise."""
        self.ensure_import(test.module)
        if not test.seeded:
            req["seed"] = probes.SEED
            test.seeded = True
        runner = self.ensure_runner()
        try:
            reply = runner.call(req, test.deadline)
            self.sample_memory(runner)
        except sandbox.RunnerTimeout:
            exceeded = self.limit_exceeded(runner)
            self.stop_runner()
            if exceeded:
                raise probes.ProbeCrashed(over_limit(exceeded)) from None
            raise probes.ProbeTimeout(
                f"This test ran longer than its time limit of {test.timeout:g} s and was stopped: an infinite loop, "
                "or an implementation far slower than needed?"
            ) from None
        except sandbox.RunnerDied as exc:
            exceeded = self.limit_exceeded(runner)
            self.stop_runner()
            if exceeded:
                raise probes.ProbeCrashed(over_limit(exceeded)) from None
            raise probes.ProbeCrashed(
                f"Your code crashed the process running it ({exc.args[0]}"
                + (": out of memory?" if exc.args[0] == "SIGKILL" else "")
                + ")."
            ) from None
        exceeded = self.limit_exceeded(runner, reply)
        if exceeded:
            raise probes.ProbeCrashed(over_limit(exceeded))
        return reply

    def sample_memory(self, runner: sandbox.Runner) -> None:
        """Keeps the runner's peak resident and anonymous memory (what a container's limit charges), its private
        writable memory (what RLIMIT_DATA counts) and its threads, from /proc."""
        try:
            with open(f"/proc/{runner.proc.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            for key, field, scale in (
                ("rss_mb", "VmHWM", 1024),
                ("anon_mb", "RssAnon", 1024),
                ("data_mb", "VmData", 1024),
                ("threads", "Threads", 1),
            ):
                self.peak[key] = max(self.peak.get(key, 0.0), int(fields[field].split()[0]) / scale)
        except (OSError, KeyError, ValueError):
            pass

    def student(self, item: pytest.Item) -> RemoteStudent:
        return RemoteStudent(self, self.current)

    # -- pytest hooks -----------------------------------------------------------------------------------------

    def pytest_collection_modifyitems(self, session, config, items):
        order = {t: i for i, t in enumerate(self.selected)}
        keep = [item for item in items if item.nodeid in order]
        dropped = [item for item in items if item.nodeid not in order]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        keep.sort(key=lambda item: (item.nodeid in self.hidden, order[item.nodeid]))
        items[:] = keep

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors[report.nodeid] = probes.cap(report.longreprtext, 3000)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        nodeid = item.nodeid
        if nodeid in self.hidden and not self.hidden_phase:
            self.hidden_phase = True  # every visible outcome is decided: a fresh runner for the hidden tests
            self.stop_runner()
        module = self.spec["file_modules"][nodeid.split("::")[0]]
        timeout = float(self.spec["timeouts"].get(nodeid, self.spec["timeout"]))
        self.current = Test(nodeid, module, timeout, nodeid in self.hidden)
        self.reports[nodeid] = []
        if time.monotonic() > self.deadline:
            limit = self.spec.get("total_limit", self.spec["total_timeout"])
            self.outcomes[nodeid] = (
                "not_run",
                f"not run: the whole test run reached its time limit of {limit:g} s before this test",
            )
            pytest.skip("past the deadline")

    def pytest_runtest_logreport(self, report):
        self.reports.setdefault(report.nodeid, []).append(report)

    def pytest_runtest_logfinish(self, nodeid, location):
        if nodeid in self.outcomes:
            return
        reports = self.reports.pop(nodeid, [])
        failed = [r for r in reports if r.failed]
        duration = sum(getattr(r, "duration", 0.0) for r in reports)
        if not reports:
            self.outcomes[nodeid] = ("failed", "the test produced no report", duration)
        elif not failed:
            skipped = any(r.skipped for r in reports)
            self.outcomes[nodeid] = ("skipped" if skipped else "passed", "", duration)
        elif nodeid in self.hidden:
            self.outcomes[nodeid] = ("failed", HIDDEN_MESSAGE, duration)
        else:
            kind, message = describe(failed[0])
            self.outcomes[nodeid] = (kind, probes.cap(message, MESSAGE_LIMIT), duration)

    def pytest_sessionfinish(self, session):
        self.stop_runner()


def over_limit(limit: str) -> str:
    """The message of a test whose runner went past a limit."""
    return f"Your code went past a limit of the grader and this test was stopped: {limit}."


def describe(report: pytest.TestReport) -> tuple[str, str]:
    """(outcome, message) of a failed visible test: its exception and the line of the test it came from."""
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(longrepr)
    kind = "failed"
    for prefix, outcome in (
        ("grading.runtime.probes.StudentError: ", "failed"),
        ("grading.runtime.probes.ProbeTimeout: ", "timeout"),
        ("grading.runtime.probes.ProbeCrashed: ", "crashed"),
        ("grading.runtime.judge.ModuleBroken: ", "error"),
        ("AssertionError: ", "failed"),
    ):
        if message.startswith(prefix):
            message, kind = message[len(prefix) :], outcome
            break
    line = ""
    entries = getattr(getattr(longrepr, "reprtraceback", None), "reprentries", [])
    for entry in entries:
        loc = getattr(entry, "reprfileloc", None)
        if loc is not None and "tests/" in loc.path and "conftest" not in loc.path:
            line = f"{loc.path[loc.path.rfind('tests/') :]}:{loc.lineno}"
    if report.when != "call":
        message = f"error during test {report.when}: {message}"
    return kind, message + (f"\n(at {line})" if line and kind != "error" else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec: JudgeSpec = json.loads(Path(argv[0]).read_text())
    sys.meta_path.insert(0, ForbiddenImport())
    sys.dont_write_bytecode = True
    box = spec["sandbox"]
    user = sandbox.RunnerUser(*box["user"]) if box["user"] else None
    config = sandbox.Sandbox(
        python=box["python"],
        harness=Path(box["harness"]),
        package=Path(box["package"]),
        scratch=Path(box["scratch"]),
        given=tuple(Path(p) for p in box.get("given", ())),
        user=user,
        cpu=box["cpu"],
        preimport=tuple(box["preimport"]),
        limits=sandbox.Limits.from_settings(box.get("limits")),
        subreaper=True,
    )
    sandbox.become_subreaper()
    global ACTIVE
    judge = ACTIVE = Judge(spec, config)
    root = spec["root"]
    args = [
        "-c",
        str(Path(root) / "pytest.ini"),
        "--rootdir",
        root,
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=short",
        "--color=no",
        "-W",
        "ignore::DeprecationWarning",
        "--continue-on-collection-errors",
    ]
    if spec.get("maxfail"):
        args.append(f"--maxfail={spec['maxfail']}")
    try:
        code = pytest.main(args + [str(Path(root) / f) for f in spec["files"]], plugins=[judge])
    finally:
        judge.stop_runner()
    outcomes = {k: list(v) + [0.0] * (3 - len(v)) for k, v in judge.outcomes.items()}
    result: JudgeReport = {
        "outcomes": outcomes,
        "collect_errors": judge.collect_errors,
        "notes": judge.notes,
        "exit": int(code),
        "peak": judge.peak,
    }
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    import importlib

    # The module itself under its own name, not __main__: tests/conftest.py finds the Judge there.
    sys.exit(importlib.import_module("grading.runtime.judge").main())
