"""The grader: `python -m grading grade SUBMISSION_DIR --out results.json` (what Gradescope's run_autograder calls).

Only the student's `assignment/<module>.py` files are taken from the submission (upload.py finds them and
assembles the package); the tests, their conftest, the package scaffolding and the list of tests with their points
(the manifest, whose types are below) all come from the bundle this file sits in. The tests run in a child process
(see runner.py); results.json follows Gradescope's schema (results.py says how).
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from grading import runner, sandbox
from grading.results import Results, build_results, fmt, score_table, write_results
from grading.upload import assemble_package, copy_tests, locate_submission, python_files, read_regular

if TYPE_CHECKING:
    import argparse

    from grading.judge import JudgeSpec

FAILURES_SHOWN = 4  # failed tests listed per part by `make grade`
JUDGE_INI = """\
[pytest]
markers =
    points(n): graded test worth n points
    bonus: graded test counted as bonus
    slow: long test
    timeout(n): the test's time limit (the judge enforces it on each probe)
filterwarnings =
    ignore::DeprecationWarning
"""


def bundle_root() -> Path:
    """The directory holding tests/, assignment/ and this grading/ package."""
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------
# The manifest: every graded test with its part, points, visibility and timeout, fixed when the bundle is built.


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
    collect_timeout: float  # seconds to import one test module, and with it the student's module
    total_timeout: float  # seconds for the whole run
    preimport: list[str]  # modules imported before any timeout starts


class Settings(_Settings, total=False):
    """The grader's limits as manifest.json holds them (defaults from config.py)."""

    grace: float  # seconds a test may overrun its timeout before its process is killed (runner.GRACE if absent)


class Manifest(TypedDict):
    """manifest.json: every graded test with its part, points, visibility and timeout (built by manifest.py)."""

    format: int  # 1
    parts: list[ManifestPart]  # in config.PARTS order, then modules config.PARTS does not know
    files: dict[str, str]  # test file -> the module it grades
    judged: list[str]  # test files the judge grades (every test takes `student`); the others run in the runner
    tests: list[ManifestTest]  # by part, then visible before hidden, core before bonus, then file order
    settings: Settings


def load_manifest(path: str | os.PathLike) -> Manifest:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------------
# Grading.


def grade(
    submission: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    bundle: str | os.PathLike | None = None,
    manifest: Manifest | str | os.PathLike | None = None,
    only: Iterable[str] | None = None,
    visible_only: bool = False,
    cpu: int | None = None,
    maxfail: int | None = None,
    total_timeout: float | None = None,
    drop_privileges: bool = True,
    runner_user: str | None = None,
    sandbox_required: bool = True,
    keep_workdir: bool = False,
    python: str = sys.executable,
    log: Callable[[str], object] = print,
) -> tuple[Results, runner.RunResult]:
    """Grades one submission and returns (results, run): results.json's content (also written to `out`) and the
    RunResult with timings and memory. Raises sandbox.SandboxRefused when root cannot drop privileges, unless
    `sandbox_required` is False (a student's own machine, where root is the student): then it runs unsandboxed."""
    started = time.monotonic()
    bundle = Path(bundle or bundle_root()).resolve()
    if manifest is None:
        shipped = bundle / "grading" / "manifest.json"
        if shipped.exists():
            manifest = load_manifest(shipped)
        else:
            from grading.manifest import build_manifest

            log("collecting the graded tests against the reference (no manifest.json in this bundle)")
            manifest, problems = build_manifest(bundle, python=python, log=log)
            for p in problems:
                log(f"warning: {p}")
    elif not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    manifest = dict(manifest)
    tests = [t for t in manifest["tests"] if (not only or t["module"] in only) and not (visible_only and t["hidden"])]
    manifest["tests"] = tests
    settings = manifest["settings"]
    modules = sorted({t["module"] for t in tests})
    parts = {p["module"]: p for p in manifest["parts"]}
    try:
        user, sandbox_note = sandbox.sandbox_policy(drop_privileges, runner_user or sandbox.RUNNER_USER)
        sandbox.python_for(user, python)
    except sandbox.SandboxRefused as exc:
        if sandbox_required:
            raise
        user, sandbox_note = None, f"the student's code ran unsandboxed, as root: {exc}"
    if user is not None and (bundle / "tests").exists() and os.stat(bundle / "tests").st_mode & 0o005:
        log(
            f"warning (staff): {bundle / 'tests'} is readable by other users, the runner's user too: setup.sh makes "
            "the bundle root's alone (chmod -R go-rwx)"
        )

    work = Path(tempfile.mkdtemp(prefix="grading-"))
    os.chmod(work, 0o711)
    notes = []
    try:
        graded = sorted(set(manifest["files"].values()))  # every graded module, even those this run leaves out
        known = {p.stem for p in (bundle / "assignment").glob("*.py")} | set(graded)
        unzipped = work / "unzipped"
        unzipped.mkdir(mode=0o700)
        found, located_notes, helpers = locate_submission(submission, graded, scratch=unzipped, known=known)
        notes += located_notes
        refused = {}
        for m, path in list(found.items()):
            data, reason = read_regular(path)
            if data is None:
                refused[m] = f"assignment/{m}.py was not taken: {reason}"
                notes.append(refused[m])
                del found[m]
        missing = [m for m in modules if m not in found]
        if helpers:
            notes.append("also used your helper module(s): " + ", ".join(p.name for p in helpers))
        files = [f for f in dict.fromkeys(t["file"] for t in tests)]
        file_modules = {f: manifest["files"][f] for f in files}
        judged = set(manifest.get("judged", ()))
        outcomes = {}
        for m in missing:
            seen = python_files(submission)
            message = refused.get(m, "") + (". " if m in refused else "")
            message += (
                f"assignment/{m}.py is missing from your submission, so none of the tests of part "
                f"{parts[m]['label']} ({m}) could run. Submit your assignment/*.py files"
                + (f" (found only: {', '.join(seen)})." if seen else " (no .py file was found at all).")
            )
            notes.append(f"missing: assignment/{m}.py")
            for t in tests:
                if t["module"] == m:
                    outcomes[t["id"]] = runner.TestOutcome("missing", message)
        to_run = [t for t in tests if t["id"] not in outcomes]
        total = total_timeout if total_timeout is not None else settings["total_timeout"]
        assemble_package(work / "package", bundle, found, helpers, graded)
        shutil.rmtree(unzipped, ignore_errors=True)

        run = runner.RunResult(user=user.name if user else pwd.getpwuid(os.geteuid()).pw_name)
        to_judge = [t for t in to_run if t["file"] in judged]
        if to_judge:
            judged_run = run_judge(
                work, bundle, to_judge, file_modules, settings, total, user, python=python, cpu=cpu, maxfail=maxfail
            )
            outcomes.update(judged_run.outcomes)
            run.notes += judged_run.notes
            run.collect_errors.update(judged_run.collect_errors)
            run.peak_rss_mb, run.peak_anon_mb = judged_run.peak_rss_mb, judged_run.peak_anon_mb
        legacy = [t for t in to_run if t["file"] not in judged]
        if legacy:
            legacy_files = [f for f in files if f not in judged and file_modules[f] not in missing]
            legacy_work = work / "legacy"
            legacy_work.mkdir(mode=0o711)
            shutil.copytree(work / "package" / "assignment", legacy_work / "assignment")
            copy_tests(legacy_work, bundle, legacy_files)
            runner.write_pytest_ini(legacy_work, settings["timeout"])
            spec = runner.RunSpec(
                root=legacy_work,
                files=legacy_files,
                tests=[t["id"] for t in legacy],
                file_modules={f: file_modules[f] for f in legacy_files},
                timeouts={t["id"]: t["timeout"] for t in tests},
                timeout=settings["timeout"],
                collect_timeout=settings["collect_timeout"],
                total_timeout=total,
                grace=settings.get("grace", runner.GRACE),
                preimport=tuple(settings["preimport"]),
                python=python,
                cpu=cpu,
                user=user,
                maxfail=maxfail,
                log=log,
            )
            legacy_run = runner.run(spec)
            outcomes.update(legacy_run.outcomes)
            run.notes += legacy_run.notes
            run.collect_errors.update(legacy_run.collect_errors)
            run.peak_rss_mb = max(run.peak_rss_mb, legacy_run.peak_rss_mb)
            run.peak_anon_mb = max(run.peak_anon_mb, legacy_run.peak_anon_mb)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.peak_rss_mb = max(run.peak_rss_mb, usage.ru_maxrss / 1024)
        for f, message in sorted(run.collect_errors.items()):
            m = file_modules.get(f)
            if m and not any(n.startswith(f"could not import assignment/{m}.py") for n in notes):
                notes.append(
                    f"could not import assignment/{m}.py: {runner.summary_line(message.split(':', 1)[-1])[:300]}"
                )
        notes += run.notes
        notes.append(sandbox_note)
        wall = time.monotonic() - started
        run.wall = wall
        extra = {
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(run.peak_rss_mb, 1),
            "peak_anon_mb": round(run.peak_anon_mb, 1),
            "user": run.user,
            "modules": modules,
            "core_score": 0.0,
            "core_max": 0.0,
            "bonus_score": 0.0,
            "bonus_max": 0.0,
        }
        results = build_results(manifest, outcomes, notes=notes, wall=wall, extra=extra)
        for e in results["tests"]:
            key = "bonus" if e["extra_data"]["bonus"] else "core"
            extra[f"{key}_score"] += e["score"]
            extra[f"{key}_max"] += e["extra_data"]["points"]
        results["extra_data"] = extra
        if out:
            write_results(results, out)
        return results, run
    finally:
        sandbox.kill_user_processes(user)
        if keep_workdir:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_judge(
    work: Path,
    bundle: Path,
    tests: Sequence[ManifestTest],
    file_modules: Mapping[str, str],
    settings: Settings,
    total: float,
    user: sandbox.RunnerUser | None,
    *,
    python: str,
    cpu: int | None = None,
    maxfail: int | None = None,
) -> runner.RunResult:
    """Runs the judged tests: `python -m grading.judge` (trusted, never imports the student's code) with the runner
    sandboxed. Returns a RunResult with an outcome for every test asked for (from the judge's JudgeReport)."""
    judge_dir = work / "judge"
    judge_dir.mkdir(mode=0o700)
    files = list(dict.fromkeys(t["file"] for t in tests))
    copy_tests(judge_dir, bundle, files)
    (judge_dir / "pytest.ini").write_text(JUDGE_INI)
    harness = sandbox.install_harness(work / "harness")
    scratch = work / "scratch"
    scratch.mkdir(mode=0o711)
    package = work / "package"
    spec: JudgeSpec = {
        "root": str(judge_dir),
        "files": files,
        "tests": [t["id"] for t in tests],
        "hidden": [t["id"] for t in tests if t["hidden"]],
        "file_modules": {f: file_modules[f] for f in files},
        "timeouts": {t["id"]: t["timeout"] for t in tests},
        "timeout": settings["timeout"],
        "collect_timeout": settings["collect_timeout"],
        "total_timeout": total,
        "maxfail": maxfail,
        "out": str(judge_dir / "outcomes.json"),
        "sandbox": {
            "python": python,
            "harness": str(harness),
            "package": str(package / "assignment"),
            "scratch": str(scratch),
            "user": [user.uid, user.gid, user.name] if user else None,
            "cpu": cpu,
            "preimport": list(settings["preimport"]),
        },
    }
    (judge_dir / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        PYTHONDONTWRITEBYTECODE="1",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONHASHSEED="0",
    )
    result = runner.RunResult()
    with open(judge_dir / "log.txt", "wb") as log_file:
        try:
            proc = subprocess.run(
                [python, "-m", "grading.judge", str(judge_dir / "spec.json")],
                cwd=judge_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=total + 2 * sandbox.STARTUP_TIMEOUT,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    try:
        data = json.loads((judge_dir / "outcomes.json").read_text())
    except (OSError, ValueError):
        tail = (judge_dir / "log.txt").read_text(errors="replace")[-2000:]
        data = {"outcomes": {}, "collect_errors": {}, "notes": [f"the judge failed (exit {code}):\n{tail}"]}
    for nodeid, (outcome, message, duration) in data["outcomes"].items():
        result.outcomes[nodeid] = runner.TestOutcome(outcome, message, duration)
    for f, message in data["collect_errors"].items():
        result.notes.append(f"the grader could not load {f} (tell the course staff): {message[:500]}")
    result.notes += data["notes"]
    result.peak_rss_mb = data.get("peak", {}).get("rss_mb", 0.0)
    result.peak_anon_mb = data.get("peak", {}).get("anon_mb", 0.0)
    for t in tests:
        if t["id"] not in result.outcomes:
            f = t["file"]
            reason = (
                "the grader could not load this test file (not your fault: tell the course staff)"
                if f in data["collect_errors"]
                else "not run: the run stopped at the first failure"
                if maxfail
                else "not run: the grader stopped before this test"
            )
            result.outcomes[t["id"]] = runner.TestOutcome("not_run", reason)
    return result


def print_report(
    results: Results,
    out: str | os.PathLike | None = None,
    show_hidden: bool = True,
    log: Callable[[str], object] = print,
) -> None:
    """Prints the score table and a line for each failed test (what `make grade` shows)."""
    log("")
    log(score_table(results["tests"], show_hidden=show_hidden))
    failed = [e for e in results["tests"] if e["status"] == "failed" and (show_hidden or not e["extra_data"]["hidden"])]
    if failed:
        log("")
        log(f"{len(failed)} test(s) did not pass (at most {FAILURES_SHOWN} per part shown, the first ones first):")
        shown = {}
        for e in failed:
            part = e["tags"][0]
            shown[part] = shown.get(part, 0) + 1
            if shown[part] <= FAILURES_SHOWN:
                first = runner.headline(e["output"])
                if first.startswith("The tests in"):  # an import error: the exception says more than the header
                    first = f"could not import assignment/{part}.py: {runner.summary_line(e['output'])}"
                log(f"  {e['extra_data']['nodeid']}\n      {first[:200]}")
        for part, count in shown.items():
            if count > FAILURES_SHOWN:
                log(f"  ... and {count - FAILURES_SHOWN} more in {part}")
    data = results["extra_data"]
    log("")
    log(
        f"score: {fmt(data['core_score'])} / {fmt(data['core_max'])}"
        + (f"  (+ bonus {fmt(data['bonus_score'])} / {fmt(data['bonus_max'])})" if data["bonus_max"] else "")
        + f"   time {data['wall_s']:.0f} s, peak memory {data['peak_rss_mb']:.0f} MB"
    )
    notes = results["output"].split("\n\n", 1)[1] if "\n\n" in results["output"] else ""
    for line in notes.splitlines():
        log(f"note: {line}")
    if out:
        log(f"every message in full: {out}")


def main(args: argparse.Namespace) -> int:
    """The `grade` subcommand."""
    try:
        results, run = grade(
            args.submission,
            args.out,
            bundle=args.bundle,
            manifest=args.manifest,
            only=args.only or None,
            visible_only=args.visible_only,
            cpu=args.cpu,
            maxfail=args.maxfail,
            total_timeout=args.total_timeout,
            drop_privileges=not args.no_drop_privileges,
            runner_user=args.runner_user,
            sandbox_required=not args.sandbox_optional,
            keep_workdir=args.keep_workdir,
            log=(lambda line: None) if args.quiet else print,
        )
    except sandbox.SandboxRefused as exc:
        message = (
            "The autograder refused to run this submission: it never runs a student's code as root, and it could "
            f"not start it as an unprivileged user. This is not your fault: please tell the course staff.\n\n"
            f"For the staff: {exc}"
        )
        print(message, file=sys.stderr)
        if args.out:
            write_results({"score": 0, "output": message, "tests": [], "extra_data": {"refused": str(exc)}}, args.out)
        return 3
    except Exception as exc:  # the grader's own failure: say so in results.json (run_autograder ends in `exec`)
        if args.out:
            message = (
                "The autograder itself failed before it could grade this submission. This is not your fault: please "
                "tell the course staff."
            )
            write_results({"score": 0, "output": message, "tests": [], "extra_data": {"error": repr(exc)}}, args.out)
        raise
    if not args.quiet:
        print_report(results, out=args.out)
    return 0
