"""The manifest: every graded test with its part, points, visibility and timeout, fixed when the bundle is built.

Build-time only (it imports the reference solution to collect the tests, collect.py): it ships with neither the
student release nor the autograder, which read the manifest.json it produced (its types: grading/runtime/schema.py).
Every graded test must take the `student` fixture, so that the judge grades it without importing the student's
code (grading/runtime/judge.py): a graded test that does not is refused (ManifestError names it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from grading import config
from grading.runtime.grade import JUDGE_INI
from grading.runtime.schema import Manifest, ManifestPart, ManifestTest

COLLECT_TIMEOUT = 600  # seconds to collect every test file against the reference (TensorFlow on a busy machine)


class ManifestError(Exception):
    """The tests cannot be graded as they are: the message names each test at fault and says what to do."""


def graded_test_files(root: str | os.PathLike) -> list[str]:
    """Visible (tests/test_*.py) then hidden (tests/hidden/test_*.py) test files, relative to `root`."""
    root = Path(root)
    visible = sorted(p.relative_to(root).as_posix() for p in (root / "tests").glob("test_*.py"))
    hidden = sorted(p.relative_to(root).as_posix() for p in (root / "tests" / "hidden").glob("test_*.py"))
    return visible + hidden


def module_of(test_file: str, modules: Iterable[str]) -> str | None:
    """The module a test file grades: the longest `m` with the file named test_<m>.py or test_<m>_*.py."""
    stem = Path(test_file).stem
    matches = [m for m in modules if stem == f"test_{m}" or stem.startswith(f"test_{m}_")]
    return max(matches, key=len) if matches else None


def build_manifest(
    root: str | os.PathLike,
    *,
    parts: Iterable[config.Part] | None = None,
    settings: Mapping[str, object] | None = None,
    hidden: bool = True,
    python: str = sys.executable,
    log: Callable[[str], object] | None = None,
) -> tuple[Manifest, list[str]]:
    """Collects the graded tests of `root` against its own assignment/ (the reference) and returns the manifest,
    with the problems found (one line each: a test without points, a file that does not collect)."""
    root = Path(root).resolve()
    parts = parts if parts is not None else config.PARTS
    settings = dict(settings or {})
    settings.setdefault("timeout", config.TEST_TIMEOUT)
    settings.setdefault("collect_timeout", config.COLLECT_TIMEOUT)
    settings.setdefault("total_timeout", config.TOTAL_TIMEOUT)
    settings.setdefault("preimport", list(config.PREIMPORT))
    settings.setdefault("limits", dict(config.RUNNER_LIMITS))
    modules = sorted(p.stem for p in (root / "assignment").glob("*.py") if p.stem != "__init__")
    files = [f for f in graded_test_files(root) if hidden or not f.startswith("tests/hidden/")]
    problems = []
    file_modules = {}
    for f in files:
        m = module_of(f, modules)
        if m is None:
            problems.append(f"{f} grades no module: there is no assignment/{Path(f).stem[5:]}.py")
        else:
            file_modules[f] = m
    files = [f for f in files if f in file_modules]
    items, collect_errors = collect(root, files, python=python)
    for f, message in collect_errors.items():
        problems.append(f"{f} does not collect against the reference:\n{message[:3000]}")
    unjudged = [
        item["id"] for item in items if item["points"] is not None and "student" not in item.get("fixtures", ())
    ]
    if unjudged:
        raise ManifestError(
            "every graded test (one with @pytest.mark.points) must take the `student` fixture and call the student's "
            "code through `student.run(probe, ...)` / `student.call(...)` (CONVENTIONS.md); these do not:\n"
            + "\n".join(f"  {nodeid}" for nodeid in unjudged)
        )
    tests: list[ManifestTest] = []
    fixtures_of = {}  # test file -> the fixtures of each of its tests
    for item in items:
        f = item["id"].split("::")[0]
        fixtures_of.setdefault(f, []).append(item.get("fixtures", []))
        if item["points"] is None:
            problems.append(f"{item['id']} has no @pytest.mark.points(n): every graded test needs one")
            continue
        tests.append(
            {
                "id": item["id"],
                "file": f,
                "name": item["name"],
                "module": file_modules[f],
                "points": float(item["points"]),
                "bonus": bool(item["bonus"]),
                "hidden": f.startswith("tests/hidden/"),
                "timeout": float(item["timeout"]) if item["timeout"] is not None else settings["timeout"],
            }
        )
    used = {t["module"] for t in tests} | set(file_modules.values())
    known = {p.module for p in parts}
    part_list: list[ManifestPart] = [
        {"module": p.module, "label": p.label, "title": p.title, "points": p.points, "bonus": p.bonus}
        for p in parts
        if p.module in used
    ] + [{"module": m, "label": m, "title": m, "points": None, "bonus": 0} for m in sorted(used - known)]
    order = {p["module"]: i for i, p in enumerate(part_list)}
    file_order = {f: i for i, f in enumerate(files)}
    tests.sort(key=lambda t: (order[t["module"]], t["hidden"], t["bonus"], file_order[t["file"]]))
    judged = sorted(f for f in file_modules if fixtures_of.get(f) and all("student" in fx for fx in fixtures_of[f]))
    manifest: Manifest = {
        "format": 1,
        "parts": part_list,
        "files": file_modules,
        "judged": judged,
        "tests": tests,
        "settings": settings,
    }
    return manifest, problems


def collect(root: str | os.PathLike, files: Iterable[str], *, python: str = sys.executable) -> tuple[list, dict]:
    """(items, errors): the tests of `files` collected in a child process against `root`'s own assignment/
    (collect.py), and {test file: message} for those that did not collect."""
    root = Path(root).resolve()
    files = list(files)
    if not files:
        return [], {}
    work = Path(tempfile.mkdtemp(prefix="grading-collect-"))
    try:
        (work / "pytest.ini").write_text(JUDGE_INI)
        out = work / "collected.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
        env.update(
            PYTHONPATH=str(Path(__file__).resolve().parents[2]),  # this grading package
            PYTHONDONTWRITEBYTECODE="1",
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
            TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        )
        proc = subprocess.run(
            [python, "-m", "grading.build.collect", str(root), str(out), str(work / "pytest.ini"), *files],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=COLLECT_TIMEOUT,
        )
        if not out.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            return [], {f: f"the collection failed (exit {proc.returncode}):\n{tail}" for f in files}
        data = json.loads(out.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return data["items"], data["errors"]


def collect_for_grading(bundle: str | os.PathLike, *, python: str = sys.executable, log=print) -> Manifest:
    """The manifest the `grade` command uses in a bundle without manifest.json (a repository): collected now
    against the bundle's own assignment/, its problems logged as warnings."""
    log("collecting the graded tests against the reference (no manifest.json in this bundle)")
    manifest, problems = build_manifest(bundle, python=python, log=log)
    for p in problems:
        log(f"warning: {p}")
    return manifest
