"""Runs the tests of a prepared work directory in a child process, survives whatever the student's code does.

The child (`pytest_child.py`), which runs pytest as the runner's user in the legacy mode (test files not yet
judged), reports each event on a JSON line. This side watches those lines and the clock:
- a test that outlives its timeout (plus a grace period for pytest-timeout to act) is killed with its process, marked
  failed, and the run restarts with the tests that remain; so is a crash (segfault, `os._exit`, out of memory);
- a test module whose import hangs or crashes the process fails all the tests of the module it grades;
- past the whole-run deadline, every test that has not run is marked failed and said so.
Every test asked for comes back with an outcome; nothing is silently missing.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from grading import sandbox

CHILD = Path(__file__).with_name("pytest_child.py")
GRACE = 20.0  # seconds the watchdog allows past a timeout before it kills the child itself
STARTUP_TIMEOUT = 300.0  # importing TensorFlow on a slow, shared CPU
MAX_RESTARTS = 25
FILE_SIZE_LIMIT = 256 * 2**20  # no file the tests write (captured output included) may grow past this
PYTEST_INI = """\
[pytest]
markers =
    points(n): graded test worth n points
    bonus: graded test counted as bonus
    slow: long test
timeout = {timeout:g}
timeout_method = signal
filterwarnings =
    ignore::DeprecationWarning
"""


@dataclass
class TestOutcome:
    outcome: str  # passed | failed | skipped | error (collection) | crashed | timeout | not_run
    message: str = ""
    duration: float = 0.0


class CollectedItem(TypedDict):
    """A test as a collect-only run describes it (pytest_child.py), which manifest.py turns into a ManifestTest."""

    id: str  # pytest node id
    name: str
    points: float | None  # @pytest.mark.points(n), None when the test has none
    bonus: bool
    timeout: float | None  # @pytest.mark.timeout(n), None when the test has none
    fixtures: list[str]


@dataclass
class RunResult:
    outcomes: dict[str, TestOutcome] = field(default_factory=dict)  # node id -> TestOutcome
    items: list[CollectedItem] = field(default_factory=list)  # collect-only: the tests found
    collect_errors: dict[str, str] = field(default_factory=dict)  # test file -> message
    notes: list[str] = field(default_factory=list)
    wall: float = 0.0
    peak_rss_mb: float = 0.0  # max over children (ru_maxrss) and over samples of /proc
    peak_anon_mb: float = 0.0  # anonymous memory (RssAnon): what a container's memory limit really charges
    user: str = ""
    log_tail: str = ""


@dataclass
class RunSpec:
    root: Path  # the work directory (assignment/, tests/, pytest.ini)
    files: list[str]  # test files, relative to root, in order
    tests: list[str]  # node ids to run, in order (each must belong to one of `files`)
    file_modules: dict[str, str]  # test file -> module it grades
    timeouts: dict[str, float] = field(default_factory=dict)  # node id -> seconds (default: `timeout`)
    timeout: float = 120.0
    collect_timeout: float = 60.0
    total_timeout: float = 480.0
    grace: float = GRACE
    preimport: tuple[str, ...] = ()
    python: str = sys.executable
    cpu: int | None = None  # pin the child to one CPU (taskset)
    user: sandbox.RunnerUser | None = None  # who runs the tests (None: the current user)
    maxfail: int | None = None
    collect_only: bool = False
    log: Callable[[str], object] | None = None  # for progress lines


def truncate(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its head and tail around a note of how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = int(limit * 0.6), int(limit * 0.3)
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


def clean_traceback(message: str, root: str | os.PathLike) -> str:
    """Drops pytest's and importlib's own frames before the first frame in the tests, and the work directory."""
    message = message.replace(str(root) + "/", "")
    lines = message.splitlines()
    keep_head = [line for line in lines[:1] if line.startswith("(the same error")]
    body = lines[len(keep_head) :]
    first = next((i for i, line in enumerate(body) if line.startswith(("tests/", "assignment/"))), None)
    if first:
        body = body[first:]
    return "\n".join(keep_head + body)


def summary_line(message: str) -> str:
    """The line of an error message a student should read first (the exception), for one-line notes."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E ")]
    if errors:
        return errors[-1][1:].strip()
    return lines[0] if lines else ""


def headline(output: str) -> str:
    """The first line of a failed test's output, the one line `make grade` shows; for an error raised inside a
    `tf.function` ("XError: in user code:"), the exception line at the end of TensorFlow's trace instead."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.endswith("in user code:"):
        kind = first.split(":", 1)[0]
        inner = [line for line in lines[1:] if line.startswith(kind + ": ")]
        if inner:
            return inner[0]
    return first


def _collect_message(spec, test_file, message):
    module = spec.file_modules.get(test_file)
    what = f"assignment/{module}.py" if module else "the module it grades"
    return (
        f"The tests in {test_file} could not be loaded: importing {what} failed, or a name these tests use is "
        f"missing from it. None of them could run. The error:\n\n{clean_traceback(message, spec.root)}"
    )


def write_pytest_ini(root: str | os.PathLike, timeout: float) -> None:
    (Path(root) / "pytest.ini").write_text(PYTEST_INI.format(timeout=timeout))


def _last_output(tail):
    tail = tail.strip()
    return f"\n\nThe last output of the test process:\n{truncate(tail, 3000)}" if tail else ""


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except (ValueError, TypeError):
        return f"exit code {code}"


def _chown_tree(root, uid, gid):
    """Gives `root` to the runner's user before any of its code runs: never follows a link (os.lchown)."""
    for path, dirs, files in os.walk(root):
        os.lchown(path, uid, gid)
        for name in dirs + files:
            os.lchown(os.path.join(path, name), uid, gid)


def _memory_of(pid):
    """(VmRSS, RssAnon) of a live process in MB, from /proc; (0, 0) when unavailable."""
    rss = anon = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return rss, anon


class _Attempt:
    """One child process: launch, follow its events, kill it when the watchdog says so."""

    def __init__(self, spec, tests, grader_dir, user, attempt):
        self.spec = spec
        self.events_path = grader_dir / f"events-{attempt}.jsonl"
        self.events_path.write_text("")
        select = grader_dir / f"select-{attempt}.json"
        select.write_text(json.dumps(tests))
        files = [f for f in spec.files if any(t.split("::")[0] == f for t in tests)] if tests else list(spec.files)
        self.stdout_path = grader_dir / f"output-{attempt}.txt"
        cmd = [
            spec.python,
            str(grader_dir / "child.py"),
            "--root",
            str(spec.root),
            "--events",
            str(self.events_path),
            "--file-modules",
            str(grader_dir / "file_modules.json"),
            "--collect-timeout",
            str(spec.collect_timeout),
            "--preimport",
            ",".join(spec.preimport),
        ]
        if spec.collect_only:
            cmd.append("--collect-only")
        else:
            cmd += ["--select", str(select)]
        cmd += [
            "--",
            "-c",
            str(spec.root / "pytest.ini"),
            "--rootdir",
            str(spec.root),
            "-p",
            "no:cacheprovider",
            "-p",
            "pytest_timeout",
            "-q",
            "--tb=short",
            "--color=no",
            "-W",
            "ignore::DeprecationWarning",
            "--continue-on-collection-errors",
        ]
        if spec.maxfail:
            cmd.append(f"--maxfail={spec.maxfail}")
        cmd += files
        if spec.cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(spec.cpu)] + cmd
        home, tmp = spec.root / ".home", spec.root / ".tmp"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
        env.update(
            HOME=str(home),
            TMPDIR=str(tmp),
            PYTHONDONTWRITEBYTECODE="1",
            PYTHONNOUSERSITE="1",
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
            PYTHONHASHSEED="0",
            MPLBACKEND="Agg",
            TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        )
        if user is not None:  # only the events file is the child's to write; its script and selection stay root's
            os.lchown(self.events_path, user.uid, user.gid)
        self.out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=spec.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=sandbox.drop_to(user, sandbox.Limits(file_size=FILE_SIZE_LIMIT), None),
        )
        self.offset = 0
        self.buffer = b""

    def read_events(self):
        with open(self.events_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue  # a line broken by a dying process

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def tail(self, limit=6_000):
        try:
            size = self.stdout_path.stat().st_size
            with open(self.stdout_path, "rb") as f:
                f.seek(max(0, size - limit))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


def run(spec: RunSpec) -> RunResult:
    """Runs `spec.tests` (or collects, with `collect_only`) and returns a RunResult with an outcome for every test."""
    log = spec.log or (lambda line: None)
    spec.root = Path(spec.root).resolve()
    result = RunResult()
    grader_dir = Path(tempfile.mkdtemp(prefix="grader-"))  # outside the work directory the child may write to
    grader_dir.chmod(0o755)
    try:
        return _run(spec, result, grader_dir, log)
    finally:
        sandbox.kill_user_processes(spec.user)
        shutil.rmtree(grader_dir, ignore_errors=True)


def _run(spec, result, grader_dir, log):
    shutil.copyfile(CHILD, grader_dir / "child.py")
    (grader_dir / "file_modules.json").write_text(json.dumps(spec.file_modules))
    for name in (".home", ".tmp"):
        (spec.root / name).mkdir(exist_ok=True)
    if not (spec.root / "pytest.ini").exists():
        write_pytest_ini(spec.root, spec.timeout)

    user = spec.user
    if user is not None:
        _chown_tree(spec.root, user.uid, user.gid)  # once, before any of the student's code runs
        result.user = user.name
    else:
        result.user = pwd.getpwuid(os.geteuid()).pw_name

    start = time.monotonic()
    deadline = start + spec.total_timeout
    file_of = {t: t.split("::")[0] for t in spec.tests}
    dead_modules = {}  # module -> message: its test files are not collected again
    attempt = 0
    tails = []
    while True:
        todo = [t for t in spec.tests if t not in result.outcomes]
        for t in todo:
            module = spec.file_modules.get(file_of[t])
            if module in dead_modules:
                result.outcomes[t] = TestOutcome("error", dead_modules[module])
        todo = [t for t in todo if t not in result.outcomes]
        if not todo and not spec.collect_only:
            break
        now = time.monotonic()
        if now >= deadline:
            for t in todo:
                result.outcomes[t] = TestOutcome(
                    "not_run",
                    f"not run: the whole test run reached its time limit of {spec.total_timeout:g} s "
                    "before this test started (the tests before it took too long)",
                )
            break
        attempt += 1
        if attempt > MAX_RESTARTS:
            for t in todo:
                result.outcomes[t] = TestOutcome("not_run", "not run: the test process crashed too many times")
            break
        if attempt > 1:
            log(f"restarting the test process for the {len(todo)} tests left (attempt {attempt})")
        child = _Attempt(spec, todo if not spec.collect_only else [], grader_dir, user, attempt)
        watch = {"state": None, "since": time.monotonic(), "finished": False, "exitstatus": None, "progress": 0}

        def handle(ev):
            kind = ev.get("e")
            if kind == "collect_start":
                watch.update(state=("collect", ev["file"]), since=time.monotonic())
            elif kind == "collect_end":
                watch.update(state=None, since=time.monotonic())
                if ev.get("failed"):
                    result.collect_errors[ev["file"]] = _collect_message(spec, ev["file"], ev.get("message", ""))
            elif kind == "start":
                watch.update(state=("test", ev["id"]), since=time.monotonic())
            elif kind == "result":
                outcome, message = ev["outcome"], ev.get("message", "")
                if outcome == "failed" and "Timeout (>" in message and "pytest-timeout" in message:
                    outcome = "timeout"
                    limit = spec.timeouts.get(ev["id"], spec.timeout)
                    message = (
                        f"This test ran longer than its time limit of {limit:g} s and was stopped: an "
                        f"infinite loop, or an implementation far slower than needed?\n\n{message}"
                    )
                result.outcomes[ev["id"]] = TestOutcome(outcome, message, ev.get("duration", 0.0))
                watch.update(state=None, since=time.monotonic(), progress=watch["progress"] + 1)
            elif kind == "items":
                result.items = ev["items"]
            elif kind in ("ready", "boot"):
                watch["since"] = time.monotonic()
            elif kind == "preimport_error":
                result.notes.append(f"could not import {ev['module']} before the tests: {ev['message']}")
            elif kind == "end":
                watch.update(finished=True, exitstatus=ev.get("exitstatus"))

        killed_reason = None
        while True:
            exited = child.proc.poll() is not None  # asked before reading, so the last read sees every event
            for ev in child.read_events():
                handle(ev)
            if exited:
                break
            rss, anon = _memory_of(child.proc.pid)
            result.peak_rss_mb = max(result.peak_rss_mb, rss)
            result.peak_anon_mb = max(result.peak_anon_mb, anon)
            now = time.monotonic()
            state = watch["state"]
            if state is None:
                limit = STARTUP_TIMEOUT if watch["progress"] == 0 else spec.timeout
            elif state[0] == "collect":
                limit = spec.collect_timeout
            else:
                limit = spec.timeouts.get(state[1], spec.timeout)
            if now >= deadline:
                killed_reason = "deadline"
            elif now - watch["since"] > limit + spec.grace:
                killed_reason = "watchdog"
            if killed_reason:
                child.kill()
                for ev in child.read_events():  # whatever it wrote before it died
                    handle(ev)
                break
            time.sleep(0.1)
        state, finished, exitstatus, progress = (
            watch["state"],
            watch["finished"],
            watch["exitstatus"],
            watch["progress"],
        )
        child.proc.wait()
        sandbox.kill_user_processes(user)
        child.out.close()
        tail = child.tail()
        tails.append(tail)
        code = child.proc.returncode
        if finished and killed_reason is None and state is not None and state[0] == "test":
            # The session ended in the middle of a test: the test stopped it (KeyboardInterrupt, pytest.exit).
            result.outcomes[state[1]] = TestOutcome(
                "crashed",
                "This test stopped the whole test session (KeyboardInterrupt or pytest.exit?), so "
                "it fails; the tests after it were run again in a new session." + _last_output(tail),
            )
            continue
        if finished and killed_reason is None:
            # A normal end: whatever was not reported could not be collected, or was stopped by --maxfail.
            for t in todo:
                if t in result.outcomes:
                    continue
                f = file_of[t]
                if f in result.collect_errors:
                    result.outcomes[t] = TestOutcome("error", result.collect_errors[f])
                elif spec.maxfail:
                    result.outcomes[t] = TestOutcome("not_run", "not run: the run stopped at the first failure")
                elif exitstatus in (2, 3, 4):
                    result.outcomes[t] = TestOutcome(
                        "not_run", f"not run: pytest stopped with exit status {exitstatus}:\n{truncate(tail, 3000)}"
                    )
                else:
                    result.outcomes[t] = TestOutcome("not_run", "not run: pytest did not collect this test")
            break
        # The child died or was killed: blame what it was doing, then go on with the rest.
        if killed_reason == "deadline":
            if state is not None and state[0] == "test":
                result.outcomes[state[1]] = TestOutcome(
                    "timeout",
                    f"stopped: the whole test run reached its time limit of {spec.total_timeout:g} s "
                    "while this test was running",
                )
            continue  # the loop marks the rest as not run
        how = (
            f"did not finish within its time limit of {limit:g} s and did not respond to interruption, so its "
            "process was stopped"
            if killed_reason
            else f"crashed the test process ({_signal_name(code)}"
            + (
                ": it wrote more than the file size limit, too much output?"
                if code == -signal.SIGXFSZ
                else ": out of memory?"
                if code == -signal.SIGKILL
                else ""
            )
            + ")"
        )
        if state is not None and state[0] == "test":
            outcome = "timeout" if killed_reason else "crashed"
            result.outcomes[state[1]] = TestOutcome(outcome, f"This test {how}." + _last_output(tail))
            log(f"{state[1]}: {outcome}")
        elif state is not None and state[0] == "collect":
            f = state[1]
            module = spec.file_modules.get(f)
            what = f"assignment/{module}.py" if module else f"{f} (and the module it grades)"
            message = f"Importing {what} {how}." + _last_output(tail)
            result.collect_errors[f] = message
            if module:
                dead_modules[module] = message
            else:
                for t in todo:
                    if file_of[t] == f:
                        result.outcomes[t] = TestOutcome("error", message)
            log(f"{f}: import {'hung' if killed_reason else 'crashed'}")
        elif spec.collect_only:
            result.notes.append(f"collection {how}:\n{truncate(tail, 3000)}")
            break
        else:
            # Died outside any test (start-up, between tests): if nothing progressed, retrying would loop forever.
            if progress == 0:
                for t in todo:
                    if t not in result.outcomes:
                        result.outcomes[t] = TestOutcome(
                            "not_run", f"not run: the test process {how} before running this test." + _last_output(tail)
                        )
                break
        if spec.collect_only:
            break
    result.wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.peak_rss_mb = max(result.peak_rss_mb, usage.ru_maxrss / 1024)
    result.log_tail = "\n".join(tails)[-8000:]
    return result
