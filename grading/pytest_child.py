"""The legacy child: runs pytest on a prepared work directory and reports every event as a JSON line.

It serves the test files that do not call the student's code through the `student` fixture yet (the judge grades
the others, see judge.py) and the manifest's collection. Self-contained on purpose (it imports nothing from
`grading`): the grader copies it into a root-owned folder and starts it as
`python child.py --root WORKDIR --events FILE [...] -- PYTEST_ARGS`. It
- makes `assignment` resolve to the work directory only (an editable install of the repository would otherwise
  answer for a module the submission lacks);
- imports the heavy libraries once, outside every timeout;
- bounds the import of each test module (and so of the student's module) with an alarm;
- writes one JSON line per event, flushed at once, so the parent knows what ran even if this process dies.
"""

import argparse
import json
import os
import signal
import sys
import time

import pytest

MAX_MESSAGE = 20_000  # characters kept per message here; the parent trims further for results.json


def _truncate(text, limit):
    if len(text) <= limit:
        return text
    head, tail = int(limit * 0.6), int(limit * 0.3)
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


class ImportTimeout(Exception):
    """Raised by the alarm when importing a test module (and the student's module with it) takes too long."""


class Events:
    def __init__(self, path):
        self.file = open(path, "a", buffering=1, encoding="utf-8")

    def emit(self, event, **data):
        data["e"] = event
        data["t"] = time.time()
        self.file.write(json.dumps(data) + "\n")
        self.file.flush()


def _describe(report):
    """The text a student reads for a failed, errored or skipped phase of a test."""
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        return f"skipped: {reason}"
    parts = []
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    text = report.longreprtext or ""
    if crash is not None and crash.message and crash.message not in text[:200]:
        parts.append(crash.message)
    parts.append(text)
    for title, content in report.sections:
        if content.strip() and ("stdout" in title or "stderr" in title):
            parts.append(f"----- {title} -----\n{_truncate(content, 2_000)}")
    return _truncate("\n".join(parts), MAX_MESSAGE)


class GradingPlugin:
    """Pytest hooks: test selection, one event per collected file and per test."""

    def __init__(self, events, select, file_modules, collect_timeout, collect_only):
        self.events = events
        self.select = select
        self.file_modules = file_modules
        self.collect_timeout = collect_timeout
        self.collect_only = collect_only
        self.failed_modules = {}  # module -> (first test file, message): its other test files fail at once
        self.phases = {}

    @staticmethod
    def file_of(collector):
        return collector.nodeid if isinstance(collector, pytest.Module) else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_make_collect_report(self, collector):
        """A module that already failed to import is not imported again: its other test files fail at once."""
        path = self.file_of(collector)
        module = self.file_modules.get(path)
        if path is None or module not in self.failed_modules:
            return None
        first, message = self.failed_modules[module]
        text = f"(the same error as while collecting {first})\n{message}"
        self.events.emit("collect_start", file=path)
        self.events.emit("collect_end", file=path, failed=True, message=text)
        return pytest.CollectReport(collector.nodeid, "failed", text, [])

    def pytest_collection_modifyitems(self, session, config, items):
        if self.select is not None:
            keep = [item for item in items if item.nodeid in self.select]
            dropped = [item for item in items if item.nodeid not in self.select]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
            items[:] = keep
        if self.collect_only:
            described = []
            for item in items:
                points = item.get_closest_marker("points")
                timeout = item.get_closest_marker("timeout")
                described.append(
                    {
                        "id": item.nodeid,
                        "name": item.name,
                        "points": points.args[0] if points is not None and points.args else None,
                        "bonus": item.get_closest_marker("bonus") is not None,
                        "timeout": timeout.args[0] if timeout is not None and timeout.args else None,
                        "fixtures": list(getattr(item, "fixturenames", ())),
                    }
                )
            self.events.emit("items", items=described)
        else:
            self.events.emit("collected", ids=[item.nodeid for item in items])

    def pytest_runtest_logstart(self, nodeid, location):
        self.phases[nodeid] = []
        self.events.emit("start", id=nodeid)

    def pytest_runtest_logreport(self, report):
        self.phases.setdefault(report.nodeid, []).append(report)

    def pytest_runtest_logfinish(self, nodeid, location):
        reports = self.phases.pop(nodeid, [])
        outcome, messages, duration = "passed", [], 0.0
        for report in reports:
            duration += getattr(report, "duration", 0.0)
            if report.failed:
                outcome = "failed"
                prefix = "" if report.when == "call" else f"error during test {report.when}: "
                messages.append(prefix + _describe(report))
            elif report.skipped and outcome == "passed":
                outcome = "skipped"
                messages.append(_describe(report))
        if not reports:
            outcome, messages = "failed", ["the test produced no report"]
        self.events.emit(
            "result",
            id=nodeid,
            outcome=outcome,
            duration=duration,
            message=_truncate("\n".join(messages), MAX_MESSAGE),
        )


class CollectAlarm:
    """Bounds the import of each test module with an alarm and reports the start and end of its collection."""

    def __init__(self, plugin):
        self.plugin = plugin

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector):
        plugin = self.plugin
        path = plugin.file_of(collector)
        if path is None or plugin.file_modules.get(path) in plugin.failed_modules:
            yield
            return
        plugin.events.emit("collect_start", file=path)
        limit = plugin.collect_timeout

        module = plugin.file_modules.get(path)
        what = f"assignment/{module}.py" if module else f"{path} and the module it grades"

        def on_alarm(signum, frame):
            raise ImportTimeout(
                f"importing {what} took longer than {limit:g} s: "
                "is there an infinite loop or heavy work at the top level of the module?"
            )

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            outcome = yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        report = outcome.get_result()
        message = _truncate(report.longreprtext, MAX_MESSAGE) if report.failed else ""
        if report.failed and module:
            plugin.failed_modules.setdefault(module, (path, message))
        plugin.events.emit("collect_end", file=path, failed=bool(report.failed), message=message)


def _isolate(root):
    """Makes `import assignment` find the work directory's package and nothing else."""
    here = os.path.dirname(os.path.abspath(__file__))
    kept = []
    for entry in sys.path:
        full = os.path.abspath(entry or ".")
        if full == here or "__editable__" in entry:
            continue
        if full != root and os.path.exists(os.path.join(full, "assignment", "__init__.py")):
            continue  # another copy of the package (a repository on the path) must never answer
        kept.append(entry)
    sys.path[:] = [root] + kept
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if "editable" not in (getattr(finder, "__module__", "") or "").lower()
        and "editable" not in getattr(finder, "__name__", type(finder).__name__).lower()
    ]
    for name in [m for m in sys.modules if m == "assignment" or m.startswith("assignment.")]:
        del sys.modules[name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--select", help="JSON file: the node ids to run (default: all collected)")
    parser.add_argument("--file-modules", help="JSON file: test file -> module it grades")
    parser.add_argument("--collect-timeout", type=float, default=60.0)
    parser.add_argument("--preimport", default="")
    parser.add_argument("--collect-only", action="store_true")
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    root = os.path.abspath(args.root)
    os.chdir(root)
    _isolate(root)
    events = Events(args.events)
    events.emit("boot", pid=os.getpid(), uid=os.getuid())
    for name in filter(None, args.preimport.split(",")):
        try:
            __import__(name)
        except Exception as exc:  # the tests that need it will fail and say why
            events.emit("preimport_error", module=name, message=repr(exc))
    events.emit("ready")
    select = None
    if args.select:
        with open(args.select, encoding="utf-8") as f:
            select = set(json.load(f))
    file_modules = {}
    if args.file_modules:
        with open(args.file_modules, encoding="utf-8") as f:
            file_modules = json.load(f)
    plugin = GradingPlugin(events, select, file_modules, args.collect_timeout, args.collect_only)
    if args.collect_only:
        pytest_args = ["--collect-only", *pytest_args]
    code = pytest.main(pytest_args, plugins=[plugin, CollectAlarm(plugin)])
    events.emit("end", exitstatus=int(code))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: TensorFlow's can hang or crash, and every result is already written


if __name__ == "__main__":
    main()
