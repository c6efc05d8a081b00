"""The manifest: every graded test with its part, points, visibility and timeout, fixed when the bundle is built.

Build-time only (it imports the reference solution to collect the tests): it ships with neither the student release
nor the autograder, which read the manifest.json it produced. A test file whose every test takes the `student`
fixture is listed under `judged`: the judge grades it without importing the student's code (judge.py); the others
run whole in the runner (runner.py, the legacy mode).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from grading import config, runner, upload
from grading.grade import Manifest, ManifestPart, ManifestTest


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
    work = Path(tempfile.mkdtemp(prefix="grading-collect-"))
    try:
        found = {m: root / "assignment" / f"{m}.py" for m in set(file_modules.values())}
        upload.assemble(work, root, files, found, settings["timeout"])
        spec = runner.RunSpec(
            root=work,
            files=files,
            tests=[],
            file_modules=file_modules,
            timeout=settings["timeout"],
            collect_timeout=max(settings["collect_timeout"], 120),
            total_timeout=600,
            preimport=tuple(settings["preimport"]),
            python=python,
            collect_only=True,
            log=log,
        )
        run = runner.run(spec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for f, message in run.collect_errors.items():
        problems.append(f"{f} does not collect against the reference:\n{message[:3000]}")
    problems += run.notes
    tests: list[ManifestTest] = []
    fixtures_of = {}  # test file -> the fixtures of each of its tests
    for item in run.items:
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
