"""The grader: `python -m grading grade SUBMISSION_DIR --out results.json` (what Gradescope's run_autograder calls).

Only the student's `assignment/<module>.py` files are taken from the submission (upload.py finds them and
assembles the package); the tests, their conftest, the rest of the package, the given packages (lmkit/, ...) and the
list of tests with their points (the manifest, schema.py) all come from the bundle this file sits in. Every test is
run by the judge (judge.py), which never imports the student's code; the runner it starts does (sandbox.py,
probe_runner.py). results.json follows Gradescope's schema (results.py says how).

`grade()` reads as its steps: pick the tests, choose who runs the student's code, locate the upload, assemble the
package, run the visible tests, seal them, run the hidden tests, write results.json.
"""

from __future__ import annotations

import dataclasses
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grading.runtime import cgroups, sandbox
from grading.runtime.results import Results, build_results, fmt, headline, score_table, summary_line, write_results
from grading.runtime.schema import Manifest, ManifestTest, RunResult, Settings, TestOutcome, load_manifest
from grading.runtime.upload import (
    assemble_package,
    copy_tests,
    given_packages,
    locate_submission,
    python_files,
    read_regular,
)

if TYPE_CHECKING:
    import argparse

    from grading.runtime.judge import JudgeSpec

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
    """The directory holding tests/, assignment/ and the grading/ package this file is part of."""
    return Path(__file__).resolve().parents[2]


def shipped_manifest(path: str | os.PathLike | None = None, bundle: str | os.PathLike | None = None) -> Manifest | None:
    """The manifest at `path`, else the bundle's grading/manifest.json; None when the bundle has none (a repository:
    the `grade` verb then collects one, on the build side)."""
    if path is not None:
        return load_manifest(path)
    shipped = Path(bundle or bundle_root()) / "grading" / "manifest.json"
    return load_manifest(shipped) if shipped.exists() else None


# ---------------------------------------------------------------------------------------------------------------
# The steps of grade().


def select_tests(manifest: Manifest, only: Iterable[str] | None, visible_only: bool) -> Manifest:
    """A copy of `manifest` listing only the tests of the parts in `only` (all when None), visible ones only when
    `visible_only`."""
    only = set(only or ())
    tests = [t for t in manifest["tests"] if (not only or t["module"] in only) and not (visible_only and t["hidden"])]
    return dict(manifest, tests=tests)


def choose_runner_user(
    drop_privileges: bool, runner_user: str | None, sandbox_required: bool, python: str
) -> tuple[sandbox.RunnerUser | None, str]:
    """(user, note): who runs the student's code (None: the current user). Raises sandbox.SandboxRefused when root
    cannot drop privileges, unless `sandbox_required` is False (a student's own machine, where root is the
    student)."""
    try:
        user, note = sandbox.sandbox_policy(drop_privileges, runner_user or sandbox.RUNNER_USER)
        sandbox.python_for(user, python)
    except sandbox.SandboxRefused as exc:
        if sandbox_required:
            raise
        user, note = None, f"the student's code ran unsandboxed, as root: {exc}"
    return user, note


def warn_if_tests_readable(bundle: Path, user: sandbox.RunnerUser | None, log: Callable[[str], object]) -> None:
    if user is not None and (bundle / "tests").exists() and os.stat(bundle / "tests").st_mode & 0o005:
        log(
            f"warning (staff): {bundle / 'tests'} is readable by other users, the runner's user too: setup.sh makes "
            "the bundle root's alone (chmod -R go-rwx)"
        )


@dataclass
class Upload:
    """What the submission holds: the graded module files found, helper modules, what was noticed."""

    found: dict[str, Path]  # module -> its file in the submission (regular files only)
    helpers: list[Path]
    notes: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # module -> why its file was not taken


def locate_upload(submission: str | os.PathLike, manifest: Manifest, bundle: Path, work: Path) -> Upload:
    """Finds the student's module files (unpacking a .zip into `work`/unzipped when needed) and refuses any that is
    not a regular file of a sensible size."""
    graded = sorted(set(manifest["files"].values()))  # every graded module, even those this run leaves out
    known = {p.stem for p in (bundle / "assignment").glob("*.py")} | set(graded)
    unzipped = work / "unzipped"
    unzipped.mkdir(mode=0o700)
    found, notes, helpers = locate_submission(submission, graded, scratch=unzipped, known=known)
    upload = Upload(found, helpers, notes)
    for m, path in list(found.items()):
        data, reason = read_regular(path)
        if data is None:
            upload.refused[m] = f"assignment/{m}.py was not taken: {reason}"
            upload.notes.append(upload.refused[m])
            del upload.found[m]
    if helpers:
        upload.notes.append("also used your helper module(s): " + ", ".join(p.name for p in helpers))
    return upload


def missing_outcomes(upload: Upload, manifest: Manifest, submission: str | os.PathLike) -> dict[str, TestOutcome]:
    """An outcome "missing" for every test of a part whose module the submission lacks (noted in `upload`)."""
    parts = {p["module"]: p for p in manifest["parts"]}
    modules = sorted({t["module"] for t in manifest["tests"]})
    outcomes = {}
    for m in modules:
        if m in upload.found:
            continue
        seen = python_files(submission)
        message = upload.refused.get(m, "") + (". " if m in upload.refused else "")
        message += (
            f"assignment/{m}.py is missing from your submission, so none of the tests of part "
            f"{parts[m]['label']} ({m}) could run. Submit your assignment/*.py files"
            + (f" (found only: {', '.join(seen)})." if seen else " (no .py file was found at all).")
        )
        upload.notes.append(f"missing: assignment/{m}.py")
        for t in manifest["tests"]:
            if t["module"] == m:
                outcomes[t["id"]] = TestOutcome("missing", message)
    return outcomes


def assemble(work: Path, bundle: Path, upload: Upload, manifest: Manifest) -> Path:
    """Assembles `work`/package/assignment: the bundle's package with the student's module files dropped in (the
    unzipped upload is removed). Returns the package's folder."""
    graded = sorted(set(manifest["files"].values()))
    assemble_package(work / "package", bundle, upload.found, upload.helpers, graded)
    shutil.rmtree(work / "unzipped", ignore_errors=True)
    return work / "package" / "assignment"


@dataclass
class Phase:
    """What the visible and the hidden run share: where, as whom, with which limits."""

    work: Path
    bundle: Path
    file_modules: Mapping[str, str]
    settings: Settings
    total: float  # seconds for the whole run (both phases)
    deadline: float  # time.monotonic() when the whole run must end
    user: sandbox.RunnerUser | None
    python: str
    cpu: int | None = None
    maxfail: int | None = None
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)


def run_visible(phase: Phase, tests: Sequence[ManifestTest]) -> RunResult:
    """Runs the visible tests through the judge; the hidden test files are not in its folder yet."""
    return run_judge(phase, tests, "visible")


def seal(phase: Phase, visible: RunResult) -> None:
    """Ends the visible phase for good before any hidden test reaches the judge's folder: the visible judge has
    stopped every runner it started (their cgroups, process groups and descendants; run_judge removes any cgroup
    a killed judge left) and the runners' scratch folders are removed (the visible outcomes in `visible` are
    final)."""
    shutil.rmtree(phase.work / "scratch-visible", ignore_errors=True)


def run_hidden(phase: Phase, tests: Sequence[ManifestTest], visible: RunResult) -> RunResult:
    """Runs the hidden tests through a fresh judge and fresh runners; nothing when the visible run already used up
    `maxfail` or the time."""
    failures = sum(1 for o in visible.outcomes.values() if o.outcome not in ("passed", "skipped"))
    if phase.maxfail and failures >= phase.maxfail:
        reason = "not run: the run stopped at the first failure"
        return RunResult(outcomes={t["id"]: TestOutcome("not_run", reason) for t in tests})
    if phase.deadline - time.monotonic() <= 0:
        reason = f"not run: the whole test run reached its time limit of {phase.total:g} s before this test"
        return RunResult(outcomes={t["id"]: TestOutcome("not_run", reason) for t in tests})
    return run_judge(phase, tests, "hidden")


def merge(into: RunResult, other: RunResult) -> None:
    into.outcomes.update(other.outcomes)
    into.notes += [note for note in other.notes if note not in into.notes]
    into.collect_errors.update(other.collect_errors)
    into.peak_rss_mb = max(into.peak_rss_mb, other.peak_rss_mb)
    into.peak_anon_mb = max(into.peak_anon_mb, other.peak_anon_mb)
    for key, value in other.peak.items():
        into.peak[key] = max(into.peak.get(key, 0.0), value)


def run_notes(run: RunResult, manifest: Manifest) -> list[str]:
    """The notes of the run for results.json: a line per module that did not import (from the first of its visible
    tests that says so), then the run's own."""
    extra = {}
    for t in manifest["tests"]:
        outcome = run.outcomes.get(t["id"])
        m = t["module"]
        if t["hidden"] or m in extra or outcome is None or outcome.outcome != "error":
            continue
        lines = outcome.message.splitlines()
        if lines and lines[0].startswith(f"could not import assignment/{m}.py"):
            extra[m] = f"could not import assignment/{m}.py: {summary_line(chr(10).join(lines[1:]))[:300]}"
    return list(extra.values()) + run.notes


def write_grade(
    manifest: Manifest,
    outcomes: Mapping[str, TestOutcome],
    run: RunResult,
    notes: Sequence[str],
    out: str | os.PathLike | None,
) -> Results:
    """results.json's content (written to `out` when given): the entries, the notes and the split of the score."""
    modules = sorted({t["module"] for t in manifest["tests"]})
    extra = {
        "wall_s": round(run.wall, 2),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "peak_anon_mb": round(run.peak_anon_mb, 1),
        "peak": {key: round(value, 1) for key, value in run.peak.items()},
        "user": run.user,
        "modules": modules,
        "core_score": 0.0,
        "core_max": 0.0,
        "bonus_score": 0.0,
        "bonus_max": 0.0,
    }
    results = build_results(manifest, outcomes, notes=notes, wall=run.wall, extra=extra)
    for e in results["tests"]:
        key = "bonus" if e["extra_data"]["bonus"] else "core"
        extra[f"{key}_score"] += e["score"]
        extra[f"{key}_max"] += e["extra_data"]["points"]
    results["extra_data"] = extra
    if out:
        write_results(results, out)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Grading.


def grade(
    submission: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    manifest: Manifest,
    bundle: str | os.PathLike | None = None,
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
    limits: sandbox.Limits | None = None,
    log: Callable[[str], object] = print,
) -> tuple[Results, RunResult]:
    """Grades one submission against `manifest` and returns (results, run): results.json's content (also written to
    `out`) and the RunResult with timings and memory. Raises sandbox.SandboxRefused when root cannot drop
    privileges, unless `sandbox_required` is False (a student's own machine, where root is the student): then it
    runs unsandboxed. `limits` replaces the runner's limits the manifest holds (grading/config.py's)."""
    started = time.monotonic()
    bundle = Path(bundle or bundle_root()).resolve()
    manifest = select_tests(manifest, only, visible_only)
    settings = manifest["settings"]
    total = total_timeout if total_timeout is not None else settings["total_timeout"]
    user, sandbox_note = choose_runner_user(drop_privileges, runner_user, sandbox_required, python)
    warn_if_tests_readable(bundle, user, log)
    work = Path(tempfile.mkdtemp(prefix="grading-"))
    os.chmod(work, 0o711)
    try:
        upload = locate_upload(submission, manifest, bundle, work)
        outcomes = missing_outcomes(upload, manifest, submission)
        assemble(work, bundle, upload, manifest)
        to_run = [t for t in manifest["tests"] if t["id"] not in outcomes]
        phase = Phase(
            work=work,
            bundle=bundle,
            file_modules={f: manifest["files"][f] for f in dict.fromkeys(t["file"] for t in manifest["tests"])},
            settings=settings,
            total=total,
            deadline=started + total,
            user=user,
            python=python,
            cpu=cpu,
            maxfail=maxfail,
            limits=limits or sandbox.Limits.from_settings(settings.get("limits")),
        )
        run = RunResult(user=user.name if user else pwd.getpwuid(os.geteuid()).pw_name)
        visible = [t for t in to_run if not t["hidden"]]
        hidden = [t for t in to_run if t["hidden"]]
        visible_run = run_visible(phase, visible) if visible else RunResult()
        merge(run, visible_run)
        seal(phase, visible_run)
        if hidden:
            merge(run, run_hidden(phase, hidden, visible_run))
        outcomes.update(run.outcomes)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.peak_rss_mb = max(run.peak_rss_mb, usage.ru_maxrss / 1024)
        notes = upload.notes + run_notes(run, manifest) + [sandbox_note]
        run.wall = time.monotonic() - started
        return write_grade(manifest, outcomes, run, notes, out), run
    finally:
        if keep_workdir:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_judge(phase: Phase, tests: Sequence[ManifestTest], name: str) -> RunResult:
    """Runs `tests` (of one phase, `name`: visible or hidden): `python -m grading.runtime.judge` (trusted, never
    imports the student's code) with the runner sandboxed. Returns a RunResult with an outcome for every test asked
    for (from the judge's JudgeReport)."""
    work = phase.work
    judge_dir = work / "judge"
    judge_dir.mkdir(mode=0o700, exist_ok=True)
    files = list(dict.fromkeys(t["file"] for t in tests))
    copy_tests(judge_dir, phase.bundle, files)
    (judge_dir / "pytest.ini").write_text(JUDGE_INI)
    harness = work / "harness"
    if not harness.exists():
        sandbox.install_harness(harness)
    scratch = work / f"scratch-{name}"
    scratch.mkdir(mode=0o711)
    settings = phase.settings
    maxfail = phase.maxfail
    spec: JudgeSpec = {
        "root": str(judge_dir),
        "files": files,
        "tests": [t["id"] for t in tests],
        "hidden": [t["id"] for t in tests if t["hidden"]],
        "file_modules": {f: phase.file_modules[f] for f in files},
        "timeouts": {t["id"]: t["timeout"] for t in tests},
        "timeout": settings["timeout"],
        "collect_timeout": settings["collect_timeout"],
        "total_timeout": max(0.0, phase.deadline - time.monotonic()),
        "total_limit": phase.total,
        "maxfail": maxfail,
        "out": str(judge_dir / f"outcomes-{name}.json"),
        "sandbox": {
            "python": phase.python,
            "harness": str(harness),
            "package": str(work / "package" / "assignment"),
            "given": [str(p) for p in given_packages(phase.bundle)],
            "scratch": str(scratch),
            "user": [phase.user.uid, phase.user.gid, phase.user.name] if phase.user else None,
            "cpu": phase.cpu,
            "preimport": list(settings["preimport"]),
            "limits": dataclasses.asdict(phase.limits),
        },
    }
    spec_path = judge_dir / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
    env.update(
        PYTHONPATH=str(bundle_root()),  # this grading package
        PYTHONDONTWRITEBYTECODE="1",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONHASHSEED="0",
    )
    result = RunResult()
    log_path = judge_dir / f"log-{name}.txt"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [phase.python, "-m", "grading.runtime.judge", str(spec_path)],
            cwd=judge_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(timeout=spec["total_timeout"] + 2 * sandbox.STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()  # its runner dies with it (PR_SET_DEATHSIG); their cgroups go just below
            proc.wait()
            code = "timeout"
        cgroups.remove_leftovers(str(proc.pid))
    try:
        data = json.loads(Path(spec["out"]).read_text())
    except (OSError, ValueError):
        tail = log_path.read_text(errors="replace")[-2000:]
        data = {"outcomes": {}, "collect_errors": {}, "notes": [f"the judge failed (exit {code}):\n{tail}"]}
    for nodeid, (outcome, message, duration) in data["outcomes"].items():
        result.outcomes[nodeid] = TestOutcome(outcome, message, duration)
    for f, message in data["collect_errors"].items():
        result.notes.append(f"the grader could not load {f} (tell the course staff): {message[:500]}")
    result.notes += data["notes"]
    result.peak_rss_mb = data.get("peak", {}).get("rss_mb", 0.0)
    result.peak_anon_mb = data.get("peak", {}).get("anon_mb", 0.0)
    result.peak = {k: v for k, v in data.get("peak", {}).items() if k not in ("rss_mb", "anon_mb")}
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
            result.outcomes[t["id"]] = TestOutcome("not_run", reason)
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
                first = headline(e["output"])
                if first.startswith("could not import assignment/"):  # the exception says more than the header
                    error = e["output"].split("\n", 1)[1] if "\n" in e["output"] else ""
                    first = f"could not import assignment/{part}.py: {summary_line(error)}"
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


def main(args: argparse.Namespace, get_manifest: Callable[[], Manifest]) -> int:
    """The `grade` subcommand (grading/__main__.py says where the manifest comes from: `get_manifest`)."""
    try:
        manifest = get_manifest()
        limits = None
        if args.no_cgroup:
            limits = dataclasses.replace(sandbox.Limits.from_settings(manifest["settings"].get("limits")), cgroup=False)
        results, run = grade(
            args.submission,
            args.out,
            bundle=args.bundle,
            manifest=manifest,
            limits=limits,
            only=args.only or None,
            visible_only=args.visible_only,
            cpu=args.cpu,
            maxfail=args.maxfail,
            total_timeout=args.total_timeout,
            drop_privileges=not args.no_drop_privileges,
            runner_user=args.runner_user,
            sandbox_required=not args.sandbox_optional,
            keep_workdir=args.keep_workdir,
            python=getattr(args, "runner_python", None) or sys.executable,
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
