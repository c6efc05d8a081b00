"""`make verify`: proves the graded tests do their job, through the very grader Gradescope runs.

- the reference solution scores 100%, timed on one CPU (`taskset -c 0`) with its peak memory, against Gradescope's
  default container (1 CPU, 768 MB, 10 minutes);
- the full stub release scores 0 on every graded test, and every test still gets a result (the harness holds);
- each part alone: with every other part stubbed, the part's own tests all pass (no test leans on another part), so
  stubbing one part fails only that part's tests (the all-stub run shows they do fail);
- every bug of the catalogue (grading/checks/bugs/<module>/*.patch) applies to a copy of the reference and fails at
  least one test of its own part; the catalogue holds at least 25 bugs;
- every alternative-but-correct implementation (grading/checks/alternatives/<module>/*.patch, patches like the
  bugs') applies and keeps full marks on its part, so the tests accept correct code written differently; there are
  at least 12;
- every degenerate submission (grading/checks/degenerate/<module>/*.patch: a model returning zeros, a layer holding
  no weights, a sampler returning seeded integers, code that answers probes instead of doing the work) scores 0 on
  its part: no test passes without the work;
- the points of each part add up to grading/config.py (CONVENTIONS.md), and the release builds without a leak;
- every clause of a graded docstring listed in grading/checks/clauses.txt is pinned by a graded test (`python -m grading
  clauses` prints the map).
Runs go in parallel, one per CPU, each pinned to its CPU; a bug run stops at its first failing test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grading import config
from grading.build import manifest as manifest_builder
from grading.build import release
from grading.checks import attacks as attack_suite
from grading.checks import clauses
from grading.runtime import grade, sandbox
from grading.runtime.results import Results
from grading.runtime.schema import GIVEN_PACKAGES

JUDGED_CHECK = "every graded test takes the `student` fixture (the judge grades it)"

MIN_BUGS = 25
MIN_ALTERNATIVES = 12


@dataclass
class Job:
    name: str
    kind: str  # reference | stub | alone | bug | alternative
    module: str | None = None
    submission: Path | None = None
    only: list[str] | None = None
    maxfail: int | None = None
    bug: Bug | None = None
    results: Results | None = None
    error: str = ""
    seconds: float = 0.0
    cost: float = 1.0  # a guess of its duration, to start long jobs first


@dataclass
class Bug:
    module: str
    name: str
    path: Path
    description: str
    caught_by: str = ""
    visible: bool = False
    error: str = ""
    seconds: float = 0.0
    failed: int = 0
    ran: int = 0
    passed: list[str] = field(default_factory=list)  # a degenerate submission's tests that pass on its part


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: object, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def load_bugs(
    root: str | os.PathLike,
    modules: Iterable[str] | None = None,
    names: Iterable[str] | None = None,
    folder: str = "bugs",
) -> list[Bug]:
    """The bug catalogue: grading/checks/bugs/<module>/<name>.patch, each with its one-sentence description (or, with
    folder="alternatives", the alternative-but-correct implementations, patches of the same form)."""
    bugs = []
    base = Path(root) / "grading" / "checks" / folder
    for path in sorted(base.glob("*/*.patch")):
        module = path.parent.name
        if modules and module not in modules:
            continue
        if names and path.stem not in names and f"{module}/{path.stem}" not in names:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        head = []
        for line in text.splitlines():
            if line.startswith(("--- ", "diff ", "Index: ")):
                break
            head.append(line.strip())
        bugs.append(Bug(module, path.stem, path, " ".join(h for h in head if h)))
    return bugs


def apply_bug(root: str | os.PathLike, bug: Bug, dest: str | os.PathLike) -> str:
    """Copies the reference package (and the given packages it has) to `dest` and applies the bug there (never to
    the working tree); returns "" or why the bug could not be applied."""
    dest = Path(dest)
    for name in ("assignment", *GIVEN_PACKAGES):
        if (Path(root) / name).is_dir():
            shutil.copytree(Path(root) / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    text = bug.path.read_text(encoding="utf-8", errors="replace")
    touched = [
        line.split()[1] for line in text.splitlines() if line.startswith(("--- ", "+++ ")) and len(line.split()) > 1
    ]
    outside = [t for t in touched if t != "/dev/null" and not t.split("/", 1)[-1].startswith("assignment/")]
    if outside:
        return f"the patch changes files outside assignment/: {', '.join(sorted(set(outside)))}"
    if not bug.description:
        return "the patch has no description (the lines before `---` say what the bug is)"
    for args in (["--dry-run"], []):
        proc = subprocess.run(
            ["patch", "-p1", "--batch", "--forward", "--silent", *args, "-i", str(bug.path)],
            cwd=dest,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return f"the patch does not apply cleanly: {(proc.stdout + proc.stderr).strip()[:500]}"
    return ""


def _run_reference(root, manifest_path, only, cpu, out):
    """The timed run: a separate `python -m grading grade` process, so its peak memory is its own."""
    cmd = [
        sys.executable,
        "-m",
        "grading",
        "grade",
        str(root),
        "--bundle",
        str(root),
        "--manifest",
        str(manifest_path),
        "--out",
        str(out),
        "--quiet",
        "--no-drop-privileges",  # the reference and the bug catalogue are ours
    ]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    for m in only or ():
        cmd += ["--only", m]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))  # this grading package
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    if proc.returncode != 0 or not Path(out).exists():
        raise RuntimeError(f"the grader failed on the reference (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(Path(out).read_text()), wall


def _pool(jobs, workers, run_one, log):
    """Runs jobs on `workers` threads; worker i pins its runs to CPU i. Longest (by cost) first."""
    queue = sorted(jobs, key=lambda j: -j.cost)
    lock = threading.Lock()

    def worker(cpu):
        while True:
            with lock:
                if not queue:
                    return
                # The reference run is the timing run: it goes on CPU 0 only.
                pick = next((j for j in queue if j.kind != "reference" or cpu == 0), None)
                if pick is None:
                    return
                queue.remove(pick)
            start = time.monotonic()
            try:
                run_one(pick, cpu)
            except Exception as exc:  # a job that breaks is a failed check, not a crashed verify
                pick.error = f"{type(exc).__name__}: {exc}"
            pick.seconds = time.monotonic() - start
            with lock:
                _progress(pick, log)

    threads = [threading.Thread(target=worker, args=(cpu,)) for cpu in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _failing(results, want):
    """Test names whose status is not `want`, with the first line of their output."""
    out = []
    for e in results["tests"]:
        if e["status"] != want:
            first = next((line for line in e["output"].splitlines() if line.strip()), "")
            out.append(f"{e['extra_data']['nodeid']}: {first[:160]}")
    return out


def verify(
    root: str | os.PathLike = ".",
    *,
    only: Iterable[str] | None = None,
    bugs_only: bool = False,
    no_bugs: bool = False,
    bug_names: Iterable[str] | None = None,
    jobs: int | None = None,
    bugs_full: bool = False,
    parts: Iterable[config.Part] | None = None,
    settings: Mapping[str, object] | None = None,
    min_bugs: int = MIN_BUGS,
    min_alternatives: int = MIN_ALTERNATIVES,
    attacks: bool = True,
    runner_user: str | None = None,
    runner_python: str | None = None,
    log: Callable[[str], object] = print,
) -> Report:
    """Runs every check and prints the tables; returns the Report."""
    started = time.monotonic()
    root = Path(root).resolve()
    report = Report()
    workers = max(1, min(jobs or os.cpu_count() or 1, os.cpu_count() or 1))
    tmp = Path(tempfile.mkdtemp(prefix="grading-verify-"))
    try:
        log("collecting the graded tests against the reference ...")
        try:
            manifest, problems = manifest_builder.build_manifest(
                root, parts=parts, settings=settings, log=lambda line: None
            )
        except manifest_builder.ManifestError as exc:  # nothing can be graded: the rest would only repeat it
            report.add(JUDGED_CHECK, False, str(exc))
            return _finish(report, started, log)
        report.add(JUDGED_CHECK, True)
        report.add("every graded test collects and carries @pytest.mark.points", not problems, "\n".join(problems))
        modules = [p["module"] for p in manifest["parts"] if not only or p["module"] in only]
        if only:
            unknown = sorted(set(only) - {p["module"] for p in manifest["parts"]})
            report.add("--only names graded parts", not unknown, f"no graded tests for: {', '.join(unknown)}")
        manifest_path = tmp / "manifest.json"
        manifest_path.write_text(json.dumps(manifest))
        tests_of = {m: [t for t in manifest["tests"] if t["module"] == m] for m in modules}

        if not bugs_only:
            _check_points(manifest, modules, report)
            ok, detail = clauses.check(root)
            report.add(
                "every docstring clause of the graded code is pinned by a graded test (grading/checks/clauses.txt)",
                ok,
                detail,
            )
            log(f"clause-to-test map: {detail.splitlines()[0] if ok else 'see the failed check below'}")
            try:
                release.build_student(root, tmp / "release", manifest=manifest, check_import=False, log=lambda l: None)
                report.add("the student release builds: markers, every module parses, nothing leaks", True)
            except (release.BuildError, Exception) as exc:
                report.add("the student release builds: markers, every module parses, nothing leaks", False, str(exc))
        stubs = tmp / "stubs"
        try:
            release.stub_package(root, stubs)
        except release.BuildError as exc:
            report.add("every solution region stubs", False, str(exc))
            stubs = None

        work = []
        suite_cost = sum(t.get("timeout", 1) for t in manifest["tests"])
        if not bugs_only:
            work.append(Job("reference", "reference", only=modules, cost=1e9))
            if stubs is not None:
                work.append(Job("all stubbed", "stub", submission=stubs, only=modules, cost=suite_cost / 100))
                for m in modules:
                    sub = tmp / f"alone-{m}"
                    shutil.copytree(stubs / "assignment", sub / "assignment")
                    shutil.copy(root / "assignment" / f"{m}.py", sub / "assignment" / f"{m}.py")
                    work.append(
                        Job(
                            f"{m} alone",
                            "alone",
                            module=m,
                            submission=sub,
                            only=[m],
                            cost=sum(t["timeout"] for t in tests_of[m]) / 20,
                        )
                    )
        bugs = [] if no_bugs else load_bugs(root, modules if only else None, bug_names)
        alternatives = [] if no_bugs else load_bugs(root, modules if only else None, bug_names, "alternatives")
        degenerate = [] if no_bugs else load_bugs(root, modules if only else None, bug_names, "degenerate")
        for kind, patches in (("bug", bugs), ("alternative", alternatives), ("degenerate", degenerate)):
            for bug in patches:
                dest = tmp / kind / bug.module / bug.name
                bug.error = apply_bug(root, bug, dest)
                if bug.module not in tests_of:
                    bug.error = bug.error or f"no graded tests for module {bug.module}"
                if not bug.error:
                    work.append(
                        Job(
                            f"{kind} {bug.module}/{bug.name}",
                            kind,
                            module=bug.module,
                            submission=dest,
                            only=[bug.module],
                            # a bug stops at the first test it fails; so does an alternative, which then has failed;
                            # a degenerate submission runs every test of its part, each of which must fail
                            maxfail=None if bugs_full or kind == "degenerate" else 1,
                            bug=bug,
                            cost=5 if kind == "bug" else sum(t["timeout"] for t in tests_of[bug.module]) / 20,
                        )
                    )

        log(f"running {len(work)} grading runs on {workers} CPU(s) ...")

        def run_one(job, cpu):
            if job.kind == "reference":
                job.results, job.wall = _run_reference(
                    root, manifest_path, job.only, 0 if _has_taskset() else None, tmp / "reference.json"
                )
            else:
                job.results, _ = grade.grade(
                    job.submission,
                    None,
                    bundle=root,
                    manifest=manifest,
                    only=job.only,
                    maxfail=job.maxfail,
                    drop_privileges=False,
                    cpu=cpu if _has_taskset() else None,
                    log=lambda line: None,
                )

        _pool(work, workers, run_one, log)
        by_kind = {}
        for job in work:
            by_kind.setdefault(job.kind, []).append(job)
        part_rows = {m: {} for m in modules}
        for job in work:
            if job.error:
                report.add(f"{job.name}: the run completes", False, job.error)
                continue
            if job.kind == "reference":
                bad = _failing(job.results, "passed")
                report.add("the reference passes every graded test", not bad, "\n".join(bad))
                for m in modules:
                    mine = [e for e in job.results["tests"] if e["tags"][0] == m]
                    part_rows[m]["reference"] = f"{sum(e['status'] == 'passed' for e in mine)}/{len(mine)}"
                _timing(job, report, log)
            elif job.kind == "stub":
                bad = _failing(job.results, "failed")
                unrun = [
                    e["extra_data"]["nodeid"]
                    for e in job.results["tests"]
                    if e["extra_data"]["outcome"] in ("not_run", "crashed", "timeout")
                ]
                report.add(
                    "the full stub release scores 0 on every graded test",
                    not bad and job.results["score"] == 0,
                    "these pass without any solution:\n" + "\n".join(bad),
                )
                report.add(
                    "the harness gives every test a result on the stubs",
                    not unrun,
                    "not run, crashed or timed out:\n" + "\n".join(unrun),
                )
                for m in modules:
                    mine = [e for e in job.results["tests"] if e["tags"][0] == m]
                    part_rows[m]["stubbed"] = f"{sum(e['status'] == 'failed' for e in mine)}/{len(mine)} fail"
            elif job.kind == "alone":
                bad = _failing(job.results, "passed")
                report.add(f"part {job.module} passes with every other part stubbed", not bad, "\n".join(bad))
                mine = job.results["tests"]
                part_rows[job.module]["alone"] = f"{sum(e['status'] == 'passed' for e in mine)}/{len(mine)}"
            elif job.kind in ("bug", "alternative", "degenerate"):
                bug = job.bug
                bug.passed = [
                    e["extra_data"]["nodeid"]
                    for e in job.results["tests"]
                    if e["status"] == "passed" and e["tags"][0] == bug.module
                ]
                bug.seconds = job.seconds
                failed = [
                    e
                    for e in job.results["tests"]
                    if e["status"] == "failed" and e["extra_data"]["outcome"] != "not_run"
                ]
                bug.failed = len(failed)
                bug.ran = sum(e["extra_data"]["outcome"] != "not_run" for e in job.results["tests"])
                if failed:
                    bug.caught_by = failed[0]["extra_data"]["nodeid"]
                    bug.visible = any(not e["extra_data"]["hidden"] for e in failed)
        for bug in bugs:
            report.add(
                f"bug {bug.module}/{bug.name} is caught by a test of its part",
                bug.caught_by and not bug.error,
                bug.error or ("no test of its part fails" if not bug.caught_by else ""),
            )
        for alt in alternatives:
            report.add(
                f"alternative {alt.module}/{alt.name} keeps full marks on its part",
                not alt.caught_by and not alt.error and alt.ran == len(tests_of.get(alt.module, ())),
                alt.error or (f"fails {alt.caught_by}" if alt.caught_by else f"only {alt.ran} tests ran"),
            )
        for sham in degenerate:
            report.add(
                f"degenerate {sham.module}/{sham.name} scores 0 on its part",
                not sham.error and not sham.passed,
                sham.error or ("these pass without the work:\n" + "\n".join(sham.passed) if sham.passed else ""),
            )
        if not no_bugs and not only and not bug_names:
            report.add(f"the bug catalogue holds at least {min_bugs} bugs", len(bugs) >= min_bugs, f"{len(bugs)} bugs")
            report.add(
                f"at least {min_alternatives} alternative-but-correct implementations are checked",
                len(alternatives) >= min_alternatives,
                f"{len(alternatives)} alternatives",
            )
        _print_tables(manifest, modules, part_rows, bugs, report, log, bugs_full)
        _print_alternatives(alternatives, log)
        if attacks and not bugs_only and stubs is not None and attack_suite.TARGET in modules:
            _attacks(root, manifest, stubs, report, runner_user, runner_python, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _finish(report, started, log)


def _finish(report: Report, started: float, log: Callable[[str], object]) -> Report:
    """Prints the failed checks and the closing line; returns `report`."""
    minutes, seconds = divmod(time.monotonic() - started, 60)
    failed = [c for c in report.checks if not c.ok]
    log("")
    if failed:
        log(f"{len(failed)} of {len(report.checks)} checks FAILED ({minutes:.0f} min {seconds:.0f} s):")
        for c in failed:
            log(f"  FAILED {c.name}")
            for line in c.detail.splitlines()[:25]:
                log(f"      {line}")
    else:
        log(f"all {len(report.checks)} checks passed ({minutes:.0f} min {seconds:.0f} s)")
    log(f"verify: {len(report.checks) - len(failed)} passed, {len(failed)} failed")  # a closing line CI can count
    return report


def _has_taskset():
    return shutil.which("taskset") is not None


def _progress(job, log):
    if job.error:
        log(f"  {job.name:<48} ERROR {job.error.splitlines()[0][:60]}")
        return
    tests = job.results["tests"]
    passed = sum(e["status"] == "passed" for e in tests)
    ran = sum(e["extra_data"]["outcome"] != "not_run" for e in tests)
    log(f"  {job.name:<48} {passed:>3} passed of {ran:<3} run  {job.seconds:>5.0f} s")


def _check_points(manifest, modules, report):
    wrong = []
    for part in manifest["parts"]:
        if part["module"] not in modules or part.get("points") is None:
            continue
        tests = [t for t in manifest["tests"] if t["module"] == part["module"]]
        core = sum(t["points"] for t in tests if not t["bonus"])
        bonus = sum(t["points"] for t in tests if t["bonus"])
        if abs(core - part["points"]) > 1e-9 or abs(bonus - part.get("bonus", 0)) > 1e-9:
            wrong.append(
                f"{part['module']}: the tests give {core:g} points + {bonus:g} bonus, "
                f"the part is worth {part['points']} + {part.get('bonus', 0)} bonus (grading/config.py)"
            )
        hidden = [t for t in tests if t["hidden"]]
        if not hidden:
            wrong.append(f"{part['module']}: no hidden tests")
    report.add("the points of each part add up to CONVENTIONS.md", not wrong, "\n".join(wrong))


def _timing(job, report, log):
    data = job.results["extra_data"]
    job.summary = (
        f"graded suite on one CPU (taskset -c 0): {data['wall_s']:.0f} s for {len(job.results['tests'])} tests "
        f"(Gradescope stops at {config.GRADESCOPE_TIMEOUT_S} s; the grader's own limit is {config.TOTAL_TIMEOUT:g} s)\n"
        f"peak memory: {data['peak_rss_mb']:.0f} MB resident, of which {data['peak_anon_mb']:.0f} MB anonymous "
        f"(the rest is file-backed shared libraries, reclaimable); Gradescope's container has "
        f"{config.GRADESCOPE_MEMORY_MB} MB"
    )
    report.add(
        f"the graded suite fits {config.GRADESCOPE_CPUS} CPU and the grader's time limit",
        data["wall_s"] < config.TOTAL_TIMEOUT,
        f"{data['wall_s']:.0f} s",
    )
    report.add(
        f"the graded suite's anonymous memory fits {config.GRADESCOPE_MEMORY_MB} MB",
        0 < data["peak_anon_mb"] < config.GRADESCOPE_MEMORY_MB,
        f"{data['peak_anon_mb']:.0f} MB",
    )
    report.timing = job.summary


def _print_tables(manifest, modules, rows, bugs, report, log, bugs_full):
    parts = {p["module"]: p for p in manifest["parts"]}
    log("")
    header = (
        f"{'Part':<5} {'Module':<12} {'Tests':>11} {'Points':>12} {'Reference':>10} {'All stubbed':>12} "
        f"{'Alone':>7} {'Bugs':>7}"
    )
    log(header)
    log("-" * len(header))
    for m in modules:
        tests = [t for t in manifest["tests"] if t["module"] == m]
        vis = sum(not t["hidden"] for t in tests)
        core = sum(t["points"] for t in tests if not t["bonus"])
        bonus = sum(t["points"] for t in tests if t["bonus"])
        mine = [b for b in bugs if b.module == m]
        caught = sum(bool(b.caught_by) for b in mine)
        points = f"{core:g}" + (f"+{bonus:g}b" if bonus else "")
        row = rows.get(m, {})
        log(
            f"{parts[m]['label']:<5} {m:<12} {f'{vis}+{len(tests) - vis}h':>11} {points:>12} "
            f"{row.get('reference', '-'):>10} {row.get('stubbed', '-'):>12} {row.get('alone', '-'):>7} "
            f"{f'{caught}/{len(mine)}' if mine else '-':>7}"
        )
    if bugs:
        log("")
        log(f"{'Bug':<44} {'Caught by':<70} {'Time':>6}")
        log("-" * 122)
        for b in bugs:
            if b.error:
                by = f"ERROR: {b.error.splitlines()[0][:62]}"
            elif not b.caught_by:
                by = "NOT CAUGHT"
            else:
                by = b.caught_by.split("::", 1)[1] if "::" in b.caught_by else b.caught_by
                counts = f", {b.failed}/{b.ran} fail" if bugs_full else ""
                by = f"{by[:52]} ({'visible' if b.visible else 'hidden'}{counts})"
            log(f"{b.module + '/' + b.name:<44} {by:<70} {b.seconds:>5.0f}s")
        log(
            f"bug catalogue: {len(bugs)} bugs, {sum(bool(b.caught_by) for b in bugs)} caught, "
            f"{sum(b.visible for b in bugs)} by a visible test"
        )
    timing = getattr(report, "timing", None)
    if timing:
        log("")
        log(timing)


def _print_alternatives(alternatives, log):
    if not alternatives:
        return
    log("")
    log(f"{'Alternative-but-correct implementation':<44} {'Marks on its part':<70} {'Time':>6}")
    log("-" * 122)
    for a in alternatives:
        if a.error:
            state = f"ERROR: {a.error.splitlines()[0][:62]}"
        elif a.caught_by:
            state = f"FAILS {a.caught_by.split('::', 1)[-1][:62]}"
        else:
            state = f"full marks ({a.ran} tests)"
        log(f"{a.module + '/' + a.name:<44} {state:<70} {a.seconds:>5.0f}s")
    full = sum(not a.error and not a.caught_by for a in alternatives)
    log(f"alternatives: {len(alternatives)}, {full} at full marks")


def _attacks(root, manifest, stubs, report, runner_user, runner_python, log):
    """The attack suite: sandboxed when this is root with a runner user who can run the interpreter, else the
    attacks that need the sandbox are skipped and said so."""
    python = runner_python or sys.executable
    try:
        user, _ = sandbox.sandbox_policy(True, runner_user or sandbox.RUNNER_USER)
        sandbox.python_for(user, python)
        sandboxed = user is not None
        why = "" if sandboxed else "not root"
    except sandbox.SandboxRefused as exc:
        sandboxed, why = False, str(exc)
    log("")
    log(f"attack suite ({'sandboxed as ' + (runner_user or sandbox.RUNNER_USER) if sandboxed else 'unsandboxed'}):")
    outcomes = attack_suite.run_all(
        root,
        manifest,
        stubs,
        python=python,
        runner_user=(runner_user or sandbox.RUNNER_USER) if sandboxed else None,
        sandboxed=sandboxed,
    )
    ran = [o for o in outcomes if not o.skipped]
    for o in outcomes:
        state = "skipped" if o.skipped else "blocked" if o.blocked else "NOT BLOCKED"
        log(f"  {o.attack.name:<20} {state:<11} {o.attack.what}" + (f": {'; '.join(o.problems)}" if o.problems else ""))
        if not o.skipped:
            report.add(f"attack {o.attack.name} is blocked", o.blocked, "; ".join(o.problems))
    skipped = len(outcomes) - len(ran)
    log(
        f"attacks: {sum(o.blocked for o in ran)}/{len(ran)} blocked"
        + (f" ({skipped} skipped: they need the sandbox: {why})" if skipped else "")
    )


def main(args: argparse.Namespace) -> int:
    """The `verify` subcommand."""
    report = verify(
        args.root,
        only=args.only,
        bugs_only=args.bugs_only,
        no_bugs=args.no_bugs,
        bug_names=args.bug,
        jobs=args.jobs,
        bugs_full=args.bugs_full,
        attacks=not args.no_attacks,
        runner_user=args.runner_user,
        runner_python=args.runner_python,
    )
    return 0 if report.ok else 1
