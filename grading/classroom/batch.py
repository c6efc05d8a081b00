"""`python -m grading grade-class SUBMISSIONS --out OUT`: grade every student of a class, N at a time.

Each student is graded by its own `python -m grading grade` process (the same judge, runner, sandbox and limits as
Gradescope's run_autograder; as root it refuses without a runner user, as `grade` does), in its own session, killed
with the batch. What the batch writes, each file atomically (a temporary file in the same folder, fsync,
os.replace) as each student finishes:

    OUT/results/<student>.json   results.json as `grade` writes it (Gradescope's format)
    OUT/gradebook.csv            student, score (core + bonus), one column per part, bonus, status, metadata
    OUT/report.html              the class report (report.py), with OUT/score_histogram.png, OUT/part_pass_rates.png
    OUT/similarity.csv, .html    every pair compared (similarity.py), once every student is graded

Resume: the same command continues where a crash, SIGKILL or reboot stopped it; a student whose results file parses
is not graded again (--regrade forces it); a results file that does not parse is graded again. OUT/.work holds the
unpacked zips, the manifest, the compared texts and one log per student.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grading.classroom import intake, report, similarity
from grading.runtime import grade as grade_module
from grading.runtime import sandbox
from grading.runtime.schema import Manifest

MEMORY_PER_WORKER = 1.2 * 2**30  # a grading run's peak: the judge, TensorFlow in the runner, pytest (measured)
POLL_S = 0.2
PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------------------------------------------
# Files.


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` to `path` so that a reader sees the old file or the whole new one, even across a crash or a
    power cut: a temporary file in the same folder, fsync, os.replace, fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_results(path: str | os.PathLike) -> dict | None:
    """A results file's content, or None when it is missing, does not parse, or is not a finished grade."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list) or "score" not in data:
        return None
    extra = data.get("extra_data")
    if not isinstance(extra, dict) or "core_score" not in extra:
        return None
    return data


def results_path(out: Path, student: str) -> Path:
    return out / "results" / f"{student}.json"


def default_workers() -> int:
    """min(CPUs, available memory / MEMORY_PER_WORKER), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    by_memory = int(available // MEMORY_PER_WORKER) if available else cpus
    return max(1, min(cpus, by_memory))


# ---------------------------------------------------------------------------------------------------------------
# The gradebook.


def status_of(results: Mapping) -> str:
    extra = results.get("extra_data", {})
    if "refused" in extra:
        return f"error: the grader refused to run it: {extra['refused']}"
    if "error" in extra:
        return f"error: the grader failed: {extra['error']}"
    return "graded"


def gradebook_csv(
    entries: Iterable[intake.Entry],
    results: Mapping[str, Mapping],
    failures: Mapping[str, str],
    parts: Iterable[Mapping],
    meta_columns: Iterable[str] = (),
) -> str:
    """gradebook.csv: student, score, one column per part (its core points), bonus, status, then `meta_columns`."""
    modules = [p["module"] for p in parts]
    meta_columns = list(meta_columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "score", *modules, "bonus", "status", *meta_columns])
    for e in entries:
        r = results.get(e.student)
        if r is not None:
            points = report.part_points(r)
            row = [e.student, f"{float(r['score']):g}"]
            row += [f"{points.get(m, 0.0):g}" for m in modules]
            row += [f"{report.bonus_points(r):g}", status_of(r)]
        else:
            status = e.error or failures.get(e.student) or "not graded yet"
            row = [e.student, "", *["" for _ in modules], "", status]
        row += [e.meta.get(c, "") for c in meta_columns]
        writer.writerow(row)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Grading: one `python -m grading grade` process per student.


@dataclass
class Settings:
    out: Path
    manifest_path: Path
    bundle: Path
    runner_users: list[str | None]  # one per worker slot (None: grade's default)
    runner_python: str | None = None
    drop_privileges: bool = True
    watchdog_s: float = 1800.0


@dataclass
class Job:
    entry: intake.Entry
    slot: int
    proc: subprocess.Popen
    started: float
    tmp: Path
    log: Path
    log_file: object = None


def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def start(entry: intake.Entry, slot: int, settings: Settings) -> Job:
    work = settings.out / ".work"
    tmp = work / "grading" / f"{entry.student}.json"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    log = work / "logs" / f"{entry.student}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "grading", "grade", str(entry.source), "--out", str(tmp), "--quiet"]
    cmd += ["--manifest", str(settings.manifest_path), "--bundle", str(settings.bundle)]
    user = settings.runner_users[slot]
    if user:
        cmd += ["--runner-user", user]
    if settings.runner_python:
        cmd += ["--runner-python", settings.runner_python]
    if not settings.drop_privileges:
        cmd += ["--no-drop-privileges"]
    log_file = open(log, "wb")
    proc = subprocess.Popen(
        cmd,
        cwd=grade_module.bundle_root(),  # the repository whose grading package runs
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed whole on a timeout or when the batch stops
        preexec_fn=_die_with_parent,  # and killed with the batch even when the batch is SIGKILLed
    )
    # Its process group, so that the next run can end what `grade` left running if the batch was SIGKILLed (the
    # parent-death signal reaches `grade`, not its judge).
    atomic_write(running_dir(settings.out) / f"{entry.student}.pgid", str(proc.pid))
    return Job(entry, slot, proc, time.monotonic(), tmp, log, log_file)


def running_dir(out: Path) -> Path:
    return out / ".work" / "running"


def process_groups() -> dict[int, list[int]]:
    """{process group: [pid]} of every live process on the machine (from /proc; zombies left out)."""
    groups = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                groups.setdefault(int(fields[2]), []).append(int(name))
    return groups


def end_leftovers(out: Path) -> list[int]:
    """Kills the process groups of the `grade` runs a killed batch left behind (recorded in .work/running/);
    returns the groups killed. A group is only killed while one of its processes is running the grader."""
    killed = []
    folder = running_dir(out)
    records = list(folder.glob("*.pgid")) if folder.is_dir() else []
    groups = process_groups() if records else {}
    for record in records:
        try:
            pgid = int(record.read_text().strip())
        except (OSError, ValueError):
            pgid = None
        pids = groups.get(pgid, []) if pgid else []
        cmdlines = []
        for pid in pids:
            try:
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
        if any(b"grading" in c for c in cmdlines):
            try:
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
            except (ProcessLookupError, PermissionError):
                pass
        record.unlink(missing_ok=True)
    deadline = time.monotonic() + 10.0  # SIGKILL is not instant: wait until the groups' processes are gone
    while killed and set(killed) & set(process_groups()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def _kill(job: Job) -> None:
    try:
        os.killpg(job.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    job.proc.wait()


def finish(job: Job, settings: Settings, timed_out: bool) -> tuple[dict | None, str]:
    """(results, status) of a finished job; the results file is written atomically when it graded."""
    job.log_file.close()
    (running_dir(settings.out) / f"{job.entry.student}.pgid").unlink(missing_ok=True)
    if timed_out:
        return None, f"error: grading took longer than {settings.watchdog_s:g} s and was stopped"
    results = read_results(job.tmp)
    if results is None:
        try:
            raw = json.loads(job.tmp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = None
        if isinstance(raw, dict) and isinstance(raw.get("extra_data"), dict):
            status = status_of(raw)
        else:
            tail = job.log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            status = f"error: the grader failed (exit {job.proc.returncode}): {tail[0][:300]}"
        return None, status
    atomic_write(results_path(settings.out, job.entry.student), json.dumps(results, indent=2, ensure_ascii=False))
    job.tmp.unlink(missing_ok=True)
    return results, "graded"


# ---------------------------------------------------------------------------------------------------------------
# The class.


@dataclass
class Summary:
    entries: list[intake.Entry]
    graded_now: list[str] = field(default_factory=list)  # students graded by this run
    skipped: list[str] = field(default_factory=list)  # students whose results were already there
    failures: dict[str, str] = field(default_factory=dict)
    pairs: list | None = None
    wall_s: float = 0.0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N, e.g. 1/4; got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text}: I must be between 1 and N")
    return i, n


def _clause_tests(bundle: Path) -> tuple[dict[str, list[str]], str]:
    """({clause: test ids}, note) from the bundle's grading/checks/clauses.txt; ({}, why) when there is none."""
    if not (bundle / "grading" / "checks" / "clauses.txt").is_file():
        return {}, f"{bundle} has no grading/checks/clauses.txt"
    try:
        from grading.checks import clauses

        found, problems = clauses.load_map(bundle)
    except Exception as exc:  # a course whose parts are not grading/config.py's
        return {}, f"cannot read the clause map: {exc}"
    if not found:
        return {}, "; ".join(problems[:3])
    return {c.key: list(c.tests) for c in found}, ""


class Batch:
    """The state of one run of grade-class: entries, results, failures; writes the gradebook and the report."""

    def __init__(self, out: Path, bundle: Path, manifest: Manifest, entries: list[intake.Entry]):
        self.out, self.bundle, self.manifest, self.entries = out, bundle, manifest, entries
        self.results: dict[str, dict] = {}
        self.failures: dict[str, str] = {}
        self.pairs: list | None = None
        self.meta_columns = [c for c in ("name", "email", "sid") if any(e.meta.get(c) for e in entries)]
        self._clauses = None

    def load_existing(self) -> None:
        for e in self.entries:
            if e.source is not None:
                r = read_results(results_path(self.out, e.student))
                if r is not None:
                    self.results[e.student] = r

    def write_gradebook(self) -> None:
        text = gradebook_csv(self.entries, self.results, self.failures, self.manifest["parts"], self.meta_columns)
        atomic_write(self.out / "gradebook.csv", text)

    def write_report(self) -> None:
        if self._clauses is None:
            self._clauses = _clause_tests(self.bundle)
        errors = {e.student: e.error or self.failures.get(e.student, "not graded yet") for e in self.entries}
        errors = {s: why for s, why in errors.items() if s not in self.results}
        data = report.ClassData(
            parts=self.manifest["parts"],
            results=self.results,
            errors=errors,
            clause_tests=self._clauses[0],
            clause_note=self._clauses[1],
            pairs=self.pairs,
            threshold=similarity.THRESHOLD,
        )
        images = report.plots(data)
        for name, png in images.items():
            atomic_write(self.out / name, png)
        atomic_write(self.out / "report.html", report.render(data, images))

    def write_all(self) -> None:
        self.write_gradebook()
        self.write_report()

    def run_similarity(self, log: Callable[[str], object]) -> None:
        """Compares every pair of students with graded files; similarity.csv, similarity.html."""
        from grading.build.release import stub_package
        from grading.runtime.upload import locate_submission, read_regular

        modules = [p["module"] for p in self.manifest["parts"]]
        work = self.out / ".work" / "similarity"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        students = {}
        for e in self.entries:
            if e.source is None:
                continue
            scratch = work / "unzipped" / e.student
            scratch.mkdir(parents=True)
            found, _notes, _helpers = locate_submission(e.source, modules, scratch=scratch)
            files = {}
            for m, path in found.items():
                data, _ = read_regular(path)
                if data is not None:
                    files[m] = data.decode("utf-8", "replace")
            if files:
                students[e.student] = files
        stub = work / "release"
        stub_package(self.bundle, stub)
        boilerplate = {
            m: (stub / "assignment" / f"{m}.py").read_text(encoding="utf-8")
            for m in modules
            if (stub / "assignment" / f"{m}.py").is_file()
        }
        html_tmp = work / "similarity.html"
        self.pairs = similarity.compare(students, boilerplate, modules, work, html=html_tmp)
        atomic_write(self.out / "similarity.csv", similarity.to_csv(self.pairs))
        atomic_write(self.out / "similarity.html", html_tmp.read_bytes() if html_tmp.exists() else b"")
        flagged = [p for p in self.pairs if p.flagged]
        log(
            f"similarity: {len(self.pairs)} pairs of {len(students)} students compared, {len(flagged)} flagged "
            f"(>= {similarity.THRESHOLD:g}): {self.out / 'similarity.csv'}"
        )


def grade_class(
    submissions: str | os.PathLike,
    out: str | os.PathLike,
    *,
    manifest: Manifest,
    bundle: str | os.PathLike | None = None,
    workers: int | None = None,
    runner_users: list[str] | None = None,
    runner_python: str | None = None,
    drop_privileges: bool = True,
    regrade: bool = False,
    shard: tuple[int, int] | None = None,
    compare: bool = True,
    log: Callable[[str], object] = print,
    progress: bool = True,
) -> Summary:
    """Grades every student of `submissions` into `out` (see the module docstring); returns what it did."""
    started = time.monotonic()
    out = Path(out).resolve()
    bundle = Path(bundle or grade_module.bundle_root()).resolve()
    work = out / ".work"
    (out / "results").mkdir(parents=True, exist_ok=True)
    for stale in list((out / "results").glob(".*.tmp")) + list(out.glob(".*.tmp")):
        stale.unlink(missing_ok=True)  # a write a crash interrupted: never read back
    leftovers = end_leftovers(out)
    if leftovers:
        log(f"grade-class: ended {len(leftovers)} grading run(s) a killed batch had left running")
    manifest_path = work / "manifest.json"
    atomic_write(manifest_path, json.dumps(manifest))
    entries, _export = intake.discover(submissions, work)
    batch = Batch(out, bundle, manifest, entries)
    batch.load_existing()
    mine = [e for k, e in enumerate(entries) if shard is None or k % shard[1] == shard[0] - 1]
    todo, skipped = [], []
    for e in mine:
        if e.source is None:
            continue
        if e.student in batch.results and not regrade:
            skipped.append(e.student)
        else:
            batch.results.pop(e.student, None)
            todo.append(e)
    summary = Summary(entries, skipped=skipped)
    users = list(runner_users or [None])
    workers = max(1, min(workers or default_workers(), len(todo) or 1))
    if drop_privileges and os.geteuid() == 0 and len(users) < workers:
        log(
            f"grading {len(users)} at a time, not {workers}: as root each worker needs a runner user of its own (the "
            "process limit counts per user without a cgroup); give more with --runner-user"
        )
        workers = len(users)
    users = (users * workers)[:workers] if not (drop_privileges and os.geteuid() == 0) else users[:workers]
    total = manifest["settings"]["total_timeout"]
    settings = Settings(
        out=out,
        manifest_path=manifest_path,
        bundle=bundle,
        runner_users=users,
        runner_python=runner_python,
        drop_privileges=drop_privileges,
        watchdog_s=total + 2 * sandbox.STARTUP_TIMEOUT + 60,
    )
    refused = sum(1 for e in mine if e.source is None)
    log(
        f"grade-class: {len(entries)} students, {len(todo)} to grade, {len(skipped)} already graded, {refused} "
        f"not gradable; {workers} at a time"
    )
    for e in mine:
        if e.source is None:
            log(f"  {e.student}: {e.error}")
        elif e.note:
            log(f"  {e.student}: note: {e.note}")
    batch.write_all()

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="student", disable=not progress, dynamic_ncols=True)
    say = bar.write if progress else log
    pending = deque(todo)
    running: list[Job] = []
    free = list(range(workers))
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in previous:
        signal.signal(sig, stop)
    try:
        while pending or running:
            while pending and free:
                running.append(start(pending.popleft(), free.pop(0), settings))
            time.sleep(POLL_S)
            for job in list(running):
                timed_out = False
                if job.proc.poll() is None:
                    if time.monotonic() - job.started <= settings.watchdog_s:
                        continue
                    _kill(job)
                    timed_out = True
                running.remove(job)
                free.append(job.slot)
                results, status = finish(job, settings, timed_out)
                student = job.entry.student
                wall = time.monotonic() - job.started
                if results is not None:
                    batch.results[student] = results
                    batch.failures.pop(student, None)
                    summary.graded_now.append(student)
                    extra = results["extra_data"]
                    say(
                        f"{student}: {extra['core_score']:g} / {extra['core_max']:g}"
                        + (f" + bonus {extra['bonus_score']:g}" if extra.get("bonus_max") else "")
                        + f"  ({wall:.0f} s)"
                    )
                else:
                    batch.failures[student] = status
                    say(f"{student}: {status}  ({wall:.0f} s)")
                bar.update(1)
                batch.write_all()
    except KeyboardInterrupt:
        for job in running:
            _kill(job)
            job.log_file.close()
        bar.close()
        log("grade-class: stopped; run the same command again to continue where it stopped")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    bar.close()
    summary.failures = dict(batch.failures)
    if shard is None and compare:
        batch.run_similarity(log)
        summary.pairs = batch.pairs
    elif shard is not None:
        log(f"shard {shard[0]}/{shard[1]} done; once every shard is, run the same command without --shard to merge")
    batch.write_all()
    summary.wall_s = time.monotonic() - started
    graded = sum(1 for e in entries if e.student in batch.results)
    log(
        f"grade-class: {graded} of {len(entries)} students graded ({len(summary.graded_now)} by this run) in "
        f"{summary.wall_s:.0f} s: {out / 'gradebook.csv'}, {out / 'report.html'}"
    )
    return summary


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def main(args: argparse.Namespace) -> int:
    """The `grade-class` subcommand."""
    submissions = Path(args.submissions)
    if not submissions.exists():
        print(f"grade-class: {submissions} does not exist", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if submissions.is_dir() and _inside(out, submissions.resolve()):
        print(
            f"grade-class: --out {args.out} is inside SUBMISSIONS {submissions}: choose a folder outside it",
            file=sys.stderr,
        )
        return 2
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        print(f"grade-class: {exc}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print("grade-class: --workers must be at least 1", file=sys.stderr)
        return 2
    users = [u for item in (args.runner_user or []) for u in item.split(",") if u] or [sandbox.RUNNER_USER]
    python = args.runner_python or sys.executable
    drop = not args.no_drop_privileges
    if drop:
        try:  # as `grade` does, before anything runs: as root, never without an unprivileged user
            for user in users if os.geteuid() == 0 else users[:1]:
                grade_module.choose_runner_user(True, user, True, python)
        except sandbox.SandboxRefused as exc:
            print(f"grade-class: refused: {exc}", file=sys.stderr)
            return 3
    bundle = Path(args.bundle).resolve() if args.bundle else grade_module.bundle_root()
    manifest = grade_module.shipped_manifest(args.manifest, bundle)
    if manifest is None:
        from grading.build.manifest import collect_for_grading

        manifest = collect_for_grading(bundle)
    try:
        grade_class(
            submissions,
            out,
            manifest=manifest,
            bundle=bundle,
            workers=args.workers,
            runner_users=users,
            runner_python=args.runner_python,
            drop_privileges=drop,
            regrade=args.regrade,
            shard=shard,
            compare=not args.no_similarity,
        )
    except intake.IntakeError as exc:
        print(f"grade-class: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
