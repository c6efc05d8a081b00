"""The grader: `python -m grading grade SUBMISSION_DIR --out results.json` (what Gradescope's run_autograder calls).

Only the student's `assignment/<module>.py` files are taken from the submission; the tests, their conftest, the
package scaffolding and the list of tests with their points (the manifest) all come from the bundle this file sits
in. The tests run in a child process (see runner.py); results.json follows Gradescope's schema:

- one entry per graded test, `status` passed/failed, `score` of `max_score`, the failure message as `output`;
- visible tests are `visible`, hidden tests `after_published` (students see them once grades are published);
- bonus tests have `max_score` 0 and `score` = their points when they pass: Gradescope adds them to the score as
  extra credit without raising the assignment's total of 100 (their name says "bonus" and how many points);
- `score` is the sum of the tests' scores, bonus included; `output` is the score table of the visible tests.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

from grading import runner, sandbox

if TYPE_CHECKING:
    import argparse

    from grading.judge import JudgeSpec

MESSAGE_LIMIT = 4_000  # characters of a failure message kept in results.json
FAILURES_SHOWN = 4  # failed tests listed per part by `make grade`
# Never taken from a submission even inside assignment/: they would change how the package or pytest behave.
NEVER_TAKEN = {"__init__", "conftest", "sitecustomize", "usercustomize", "setup"}
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
MAX_FILE_BYTES = 2 * 2**20  # one module file of the submission
MAX_UPLOAD_BYTES = 50 * 2**20  # a zip in the submission, and what is unpacked from it
MAX_UPLOAD_FILES = 5_000  # entries of the upload looked at
MAX_HELPERS = 20  # helper modules taken beside the graded ones
SKIP_DIRS = {"__MACOSX", "__pycache__", ".git", ".venv", "venv", "env", "site-packages", "node_modules", "tests"}


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
# The submission: find the student's module files wherever the upload put them.


def read_regular(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> tuple[bytes | None, str]:
    """Returns (bytes, "") of a regular file of at most `limit` bytes, or (None, reason): never follows a symbolic
    link, never opens a device or a pipe (a link to /dev/zero or to a root-only file is refused by name)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "it is a symbolic link (only regular files are taken)"
        return None, f"it cannot be read ({exc.strerror})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "it is not a regular file (only regular files are taken)"
        if info.st_size > limit:
            return None, f"it is {info.st_size} bytes, more than the limit of {limit}"
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            return None, f"it is larger than the limit of {limit} bytes"
        return data, ""
    finally:
        os.close(fd)


def _is_regular(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _candidate_dirs(submission, modules, notes=None):
    """{folder: modules whose <module>.py is a regular file in it}; walks at most MAX_UPLOAD_FILES entries."""
    found = {}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(submission):  # never descends into a linked folder
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        seen += len(filenames) + len(dirnames)
        if seen > MAX_UPLOAD_FILES:
            if notes is not None:
                notes.append(f"the upload holds more than {MAX_UPLOAD_FILES} files: only the first ones were looked at")
            break
        present = set()
        for m in modules:
            if f"{m}.py" in filenames:
                if _is_regular(os.path.join(dirpath, f"{m}.py")):
                    present.add(m)
                elif notes is not None:
                    rel = _rel(Path(dirpath) / f"{m}.py", submission)
                    notes.append(f"ignored {rel}: it is a symbolic link or not a regular file")
        if present:
            found[Path(dirpath)] = present
    return found


def _extract_zips(submission, into, notes=None):
    """Unpacks the .py files of any .zip at the top of the submission (a student who uploaded a zip inside a zip):
    regular files only, each and all together capped, never outside `into`."""
    extracted = []
    for archive in sorted(Path(submission).glob("*.zip")):
        target = Path(into) / archive.stem
        data, reason = read_regular(archive, MAX_UPLOAD_BYTES)
        if data is None:
            if notes is not None:
                notes.append(f"ignored {archive.name}: {reason}")
            continue
        total = 0
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for member in z.infolist()[:MAX_UPLOAD_FILES]:
                    name = Path(member.filename)
                    mode = member.external_attr >> 16
                    if (
                        not member.filename.endswith(".py")
                        or name.is_absolute()
                        or ".." in name.parts
                        or stat.S_IFMT(mode) not in (0, stat.S_IFREG)  # a link or a device: only regular files
                    ):
                        continue
                    with z.open(member) as f:
                        content = f.read(MAX_FILE_BYTES + 1)
                    total += len(content)
                    if len(content) > MAX_FILE_BYTES or total > MAX_UPLOAD_BYTES:
                        continue
                    dest = target / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(content)
            extracted.append(target)
        except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError):
            continue
    return extracted


def locate_submission(
    submission: str | os.PathLike,
    modules: Iterable[str],
    scratch: Path | None = None,
    known: Iterable[str] = (),
) -> tuple[dict[str, Path], list[str], list[Path]]:
    """Returns ({module: path}, notes, helpers): the student's module files, what was noticed, helper modules.

    Prefers the directory holding most of the modules, then one named `assignment`, then the shallowest: a zip of
    the whole repository, of the assignment folder, or the bare files all work. Helpers are the other modules
    beside them, except those in `known` (the bundle's own scaffolding and other graded modules)."""
    submission = Path(submission)
    notes = []
    candidates = _candidate_dirs(submission, modules, notes)
    if not candidates and scratch is not None:
        for target in _extract_zips(submission, scratch, notes):
            candidates.update(_candidate_dirs(target, modules))
        if candidates:
            notes.append("found the files inside a .zip in the submission")
    if not candidates:
        return {}, notes, []

    def rank(d):
        return (-len(candidates[d]), d.name != "assignment", len(d.parts), str(d))

    ordered = sorted(candidates, key=rank)
    primary = ordered[0]
    found = {m: primary / f"{m}.py" for m in candidates[primary]}
    for m in modules:
        if m in found:
            continue
        for d in ordered[1:]:
            if m in candidates[d]:
                found[m] = d / f"{m}.py"
                notes.append(f"took {m}.py from {_rel(d / f'{m}.py', submission)}, not beside the other files")
                break
    helpers = sorted(
        p
        for p in primary.glob("*.py")
        if p.stem not in modules
        and p.stem not in known
        and p.stem not in NEVER_TAKEN
        and p.stem.isidentifier()
        and _is_regular(p)
    )[:MAX_HELPERS]
    return found, notes, helpers


def _python_files(submission, limit=20):
    """The names of the .py files of a submission (outside virtualenvs and caches), to say what was found."""
    names = set()
    for _dirpath, dirnames, filenames in os.walk(submission):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        names |= {f for f in filenames if f.endswith(".py")}
    return sorted(names)[:limit]


def _rel(path, base):
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------------
# The work directory: the bundle's scaffolding and tests, with the student's module files dropped in.


def assemble_package(
    work: str | os.PathLike,
    bundle: str | os.PathLike,
    found: Mapping[str, Path],
    helpers: Iterable[Path] = (),
    graded: Iterable[str] | None = None,
) -> None:
    """Fills `work`/assignment with the bundle's scaffolding and the student's module files (regular files only).

    `graded` names the modules that must come from the submission: the bundle's copy of a graded module the
    student did not submit is left out, never used in its place."""
    work, bundle = Path(work), Path(bundle)
    package = work / "assignment"
    package.mkdir(parents=True, exist_ok=True)
    graded = set(graded if graded is not None else found)
    for src in sorted((bundle / "assignment").glob("*.py")):
        if src.stem not in graded:
            shutil.copyfile(src, package / src.name)
    if not (package / "__init__.py").exists():
        (package / "__init__.py").write_text("")
    scaffolding = {p.stem for p in package.glob("*.py")}
    for module, path in found.items():
        data, _ = read_regular(path)
        if data is not None:
            (package / f"{module}.py").write_bytes(data)
    for path in helpers:
        data, _ = read_regular(path)
        if path.stem not in scaffolding and data is not None:
            (package / path.name).write_bytes(data)
    for path in [work, package, *package.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def copy_tests(work: str | os.PathLike, bundle: str | os.PathLike, files: Iterable[str]) -> None:
    """Copies the bundle's tests (tests/hidden/ only when `files` has a hidden test) into `work`/tests."""
    work, bundle = Path(work), Path(bundle)
    want_hidden = any(f.startswith("tests/hidden/") for f in files)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    (work / "tests").mkdir(exist_ok=True)
    for src in sorted((bundle / "tests").iterdir()):
        if src.name.startswith(".") or src.name in ("instructor", "__pycache__"):
            continue
        if src.is_dir():
            if src.name != "hidden" or want_hidden:
                shutil.copytree(src, work / "tests" / src.name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy(src, work / "tests" / src.name)


def assemble(
    work: str | os.PathLike,
    bundle: str | os.PathLike,
    files: Iterable[str],
    found: Mapping[str, Path],
    timeout: float,
    helpers: Iterable[Path] = (),
    graded: Iterable[str] | None = None,
) -> None:
    """Fills `work` with assignment/, the bundle's tests and pytest.ini (how the legacy runner and the manifest's
    collection see a submission)."""
    assemble_package(work, bundle, found, helpers, graded)
    copy_tests(work, bundle, files)
    runner.write_pytest_ini(work, timeout)


# ---------------------------------------------------------------------------------------------------------------
# results.json and the score table.


class EntryData(TypedDict):
    """The `extra_data` of one test's entry in results.json: what the score table reads."""

    nodeid: str
    outcome: str  # runner.TestOutcome.outcome: "passed", "failed", "timeout", "missing", "not_run", ...
    points: float
    bonus: bool
    hidden: bool
    duration: float  # seconds


class ResultEntry(TypedDict):
    """One test in results.json, in Gradescope's schema."""

    name: str  # "Part 2a (rnn): test_cell_shape [hidden]"
    number: str  # "<part label>.<n>"
    score: float
    max_score: float  # 0 for a bonus test: Gradescope counts its score as extra credit
    status: Literal["passed", "failed"]
    output: str  # the failure message, or "passed in 1.2 s"
    visibility: Literal["visible", "after_published"]
    tags: list[str]  # [module], then "hidden" and "bonus" when they apply
    extra_data: EntryData


class GradeStats(TypedDict):
    """results.json's `extra_data` after a run: the split of the score, time and memory."""

    wall_s: float
    peak_rss_mb: float
    peak_anon_mb: float
    user: str  # who ran the student's code
    modules: list[str]  # the modules this run graded
    core_score: float
    core_max: float
    bonus_score: float
    bonus_max: float


class _Results(TypedDict):
    score: float  # the tests' scores, bonus included
    output: str  # the score table of the visible tests, then the notes
    tests: list[ResultEntry]
    extra_data: GradeStats | dict[str, str]  # {"refused": ...} or {"error": ...} when the grader could not grade


class Results(_Results, total=False):
    """results.json, what Gradescope reads (its schema); a grader that failed writes only the required keys."""

    execution_time: int  # seconds
    stdout_visibility: str


def _fmt(x):
    return f"{x:g}"


def _name(test, part):
    tags = []
    if test["hidden"]:
        tags.append("hidden")
    if test["bonus"]:
        tags.append(f"bonus, {_fmt(test['points'])} pts")
    tag = f" [{', '.join(tags)}]" if tags else ""
    return f"Part {part['label']} ({part['module']}): {test['name']}{tag}"


def build_results(
    manifest: Manifest,
    outcomes: Mapping[str, runner.TestOutcome],
    *,
    notes: Sequence[str] = (),
    wall: float = 0.0,
    extra: GradeStats | None = None,
) -> Results:
    """Returns Gradescope's results.json content for the manifest's tests and their outcomes."""
    parts = {p["module"]: p for p in manifest["parts"]}
    entries = []
    counters = {}
    for test in manifest["tests"]:
        part = parts[test["module"]]
        outcome = outcomes.get(test["id"]) or runner.TestOutcome("not_run", "not run (no result was recorded)")
        passed = outcome.outcome == "passed"
        counters[part["module"]] = counters.get(part["module"], 0) + 1
        if passed:
            output = f"passed in {outcome.duration:.1f} s"
        else:
            output = runner.truncate(outcome.message.strip() or outcome.outcome, MESSAGE_LIMIT)
        entries.append(
            {
                "name": _name(test, part),
                "number": f"{part['label']}.{counters[part['module']]}",
                "score": test["points"] if passed else 0.0,
                "max_score": 0.0 if test["bonus"] else test["points"],
                "status": "passed" if passed else "failed",
                "output": output,
                "visibility": "after_published" if test["hidden"] else "visible",
                "tags": [part["module"]]
                + (["hidden"] if test["hidden"] else [])
                + (["bonus"] if test["bonus"] else []),
                "extra_data": {
                    "nodeid": test["id"],
                    "outcome": outcome.outcome,
                    "points": test["points"],
                    "bonus": test["bonus"],
                    "hidden": test["hidden"],
                    "duration": round(outcome.duration, 3),
                },
            }
        )
    score = sum(e["score"] for e in entries)
    table = score_table(entries, show_hidden=False)
    output = table + ("\n\n" + "\n".join(notes) if notes else "")
    return {
        "score": round(score, 4),
        "execution_time": int(round(wall)),
        "output": output,
        "stdout_visibility": "hidden",
        "tests": entries,
        "extra_data": dict(extra or {}),
    }


def score_table(entries: Iterable[ResultEntry], show_hidden: bool = True) -> str:
    """A per-part table of the points earned: visible tests, hidden tests (when shown) and bonus tests."""
    parts = {}  # module -> (label, {"visible"|"hidden"|"bonus": [earned, possible]})
    for e in entries:
        data = e["extra_data"]
        if data["hidden"] and not show_hidden:
            continue
        module = e["tags"][0]
        label, cells = parts.setdefault(module, (e["number"].split(".")[0], {}))
        key = "bonus" if data["bonus"] else "hidden" if data["hidden"] else "visible"
        cell = cells.setdefault(key, [0.0, 0.0])
        cell[0] += e["score"]
        cell[1] += data["points"]
    columns = [k for k in ("visible", "hidden", "bonus") if any(k in cells for _, cells in parts.values())]
    totals = {k: [sum(c.get(k, [0, 0])[i] for _, c in parts.values()) for i in (0, 1)] for k in columns}
    header = f"{'Part':<5} {'Module':<12}" + "".join(f" {k.capitalize():>13}" for k in columns)
    rule = "-" * len(header)

    def row(label, module, cells):
        text = f"{label:<5} {module:<12}"
        for k in columns:
            c = cells.get(k)
            text += f" {_fmt(c[0]):>6} / {_fmt(c[1]):<4}" if c else " " * 14
        return text.rstrip()

    lines = [header, rule] + [row(label, m, cells) for m, (label, cells) in parts.items()]
    return "\n".join(lines + [rule, row("", "total", totals)])


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
            seen = _python_files(submission)
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


def write_results(results: Results, out: str | os.PathLike) -> None:
    """Writes results.json atomically; never through a link a student could have planted."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=2, ensure_ascii=False))
    os.replace(tmp, out)


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
        f"score: {_fmt(data['core_score'])} / {_fmt(data['core_max'])}"
        + (f"  (+ bonus {_fmt(data['bonus_score'])} / {_fmt(data['bonus_max'])})" if data["bonus_max"] else "")
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
