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

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from grading import runner

MESSAGE_LIMIT = 4_000  # characters of a failure message kept in results.json
FAILURES_SHOWN = 4  # failed tests listed per part by `make grade`
# Never taken from a submission even inside assignment/: they would change how the package or pytest behave.
NEVER_TAKEN = {"__init__", "conftest", "sitecustomize", "usercustomize", "setup"}
SKIP_DIRS = {"__MACOSX", "__pycache__", ".git", ".venv", "venv", "env", "site-packages", "node_modules", "tests"}


def bundle_root():
    """The directory holding tests/, assignment/ and this grading/ package."""
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------
# The manifest: every graded test with its part, points, visibility and timeout, fixed when the bundle is built.


def graded_test_files(root):
    """Visible (tests/test_*.py) then hidden (tests/hidden/test_*.py) test files, relative to `root`."""
    root = Path(root)
    visible = sorted(p.relative_to(root).as_posix() for p in (root / "tests").glob("test_*.py"))
    hidden = sorted(p.relative_to(root).as_posix() for p in (root / "tests" / "hidden").glob("test_*.py"))
    return visible + hidden


def module_of(test_file, modules):
    """The module a test file grades: the longest `m` with the file named test_<m>.py or test_<m>_*.py."""
    stem = Path(test_file).stem
    matches = [m for m in modules if stem == f"test_{m}" or stem.startswith(f"test_{m}_")]
    return max(matches, key=len) if matches else None


def load_manifest(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build_manifest(root, *, parts=None, settings=None, hidden=True, python=sys.executable, log=None):
    """Collects the graded tests of `root` against its own assignment/ (the reference) and returns the manifest."""
    from grading import config

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
        assemble(work, root, files, found, settings["timeout"])
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
            drop_privileges=False,
            log=log,
        )
        run = runner.run(spec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for f, message in run.collect_errors.items():
        problems.append(f"{f} does not collect against the reference:\n{message[:3000]}")
    problems += run.notes
    tests = []
    for item in run.items:
        f = item["id"].split("::")[0]
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
    part_list = [
        {"module": p.module, "label": p.label, "title": p.title, "points": p.points, "bonus": p.bonus}
        for p in parts
        if p.module in used
    ] + [{"module": m, "label": m, "title": m, "points": None, "bonus": 0} for m in sorted(used - known)]
    order = {p["module"]: i for i, p in enumerate(part_list)}
    file_order = {f: i for i, f in enumerate(files)}
    tests.sort(key=lambda t: (order[t["module"]], t["hidden"], t["bonus"], file_order[t["file"]]))
    manifest = {"format": 1, "parts": part_list, "files": file_modules, "tests": tests, "settings": settings}
    return manifest, problems


# ---------------------------------------------------------------------------------------------------------------
# The submission: find the student's module files wherever the upload put them.


def _candidate_dirs(submission, modules):
    found = {}
    for dirpath, dirnames, filenames in os.walk(submission):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        present = {m for m in modules if f"{m}.py" in filenames}
        if present:
            found[Path(dirpath)] = present
    return found


def _extract_zips(submission, into):
    """Unpacks any .zip at the top of the submission (a student who uploaded a zip inside a zip)."""
    extracted = []
    for archive in sorted(Path(submission).glob("*.zip")):
        target = Path(into) / archive.stem
        try:
            with zipfile.ZipFile(archive) as z:
                for member in z.infolist():
                    name = Path(member.filename)
                    if name.is_absolute() or ".." in name.parts or member.file_size > 20 * 2**20:
                        continue
                    z.extract(member, target)
            extracted.append(target)
        except (zipfile.BadZipFile, OSError):
            continue
    return extracted


def locate_submission(submission, modules, scratch=None, known=()):
    """Returns ({module: path}, notes, helpers): the student's module files, what was noticed, helper modules.

    Prefers the directory holding most of the modules, then one named `assignment`, then the shallowest: a zip of
    the whole repository, of the assignment folder, or the bare files all work. Helpers are the other modules
    beside them, except those in `known` (the bundle's own scaffolding and other graded modules)."""
    submission = Path(submission)
    notes = []
    candidates = _candidate_dirs(submission, modules)
    if not candidates and scratch is not None:
        for target in _extract_zips(submission, scratch):
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
        if p.stem not in modules and p.stem not in known and p.stem not in NEVER_TAKEN and p.stem.isidentifier()
    )
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


def assemble(work, bundle, files, found, timeout, helpers=(), graded=None):
    """Fills `work` with assignment/ (bundle scaffolding + the student's files), the bundle's tests and pytest.ini.

    `graded` names the modules that must come from the submission: the bundle's copy of a graded module the
    student did not submit is left out, never used in its place."""
    work, bundle = Path(work), Path(bundle)
    package = work / "assignment"
    package.mkdir(parents=True, exist_ok=True)
    graded = set(graded if graded is not None else found)
    for src in sorted((bundle / "assignment").glob("*.py")):
        if src.stem not in graded:
            shutil.copy(src, package / src.name)
    if not (package / "__init__.py").exists():
        (package / "__init__.py").write_text("")
    scaffolding = {p.stem for p in package.glob("*.py")}
    for module, path in found.items():
        shutil.copy(path, package / f"{module}.py")
    for path in helpers:
        if path.stem not in scaffolding:
            shutil.copy(path, package / path.name)
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
    runner.write_pytest_ini(work, timeout)


# ---------------------------------------------------------------------------------------------------------------
# results.json and the score table.


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


def build_results(manifest, outcomes, *, notes=(), wall=0.0, extra=None):
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
            output = runner._truncate(outcome.message.strip() or outcome.outcome, MESSAGE_LIMIT)
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


def score_table(entries, show_hidden=True):
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
    submission,
    out=None,
    *,
    bundle=None,
    manifest=None,
    only=None,
    visible_only=False,
    cpu=None,
    maxfail=None,
    total_timeout=None,
    drop_privileges=True,
    keep_workdir=False,
    python=sys.executable,
    log=print,
):
    """Grades one submission and returns (results, run): results.json's content (also written to `out`) and the
    RunResult with timings and memory."""
    started = time.monotonic()
    bundle = Path(bundle or bundle_root()).resolve()
    if manifest is None:
        shipped = bundle / "grading" / "manifest.json"
        if shipped.exists():
            manifest = load_manifest(shipped)
        else:
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

    work = Path(tempfile.mkdtemp(prefix="grading-"))
    os.chmod(work, 0o755)
    notes = []
    try:
        graded = sorted(set(manifest["files"].values()))  # every graded module, even those this run leaves out
        known = {p.stem for p in (bundle / "assignment").glob("*.py")} | set(graded)
        found, located_notes, helpers = locate_submission(submission, graded, scratch=work / ".unzipped", known=known)
        notes += located_notes
        missing = [m for m in modules if m not in found]
        if helpers:
            notes.append("also used your helper module(s): " + ", ".join(p.name for p in helpers))
        files = [f for f in dict.fromkeys(t["file"] for t in tests)]
        file_modules = {f: manifest["files"][f] for f in files}
        assemble(work, bundle, files, found, settings["timeout"], helpers, graded=graded)
        shutil.rmtree(work / ".unzipped", ignore_errors=True)
        outcomes = {}
        for m in missing:
            seen = _python_files(submission)
            message = (
                f"assignment/{m}.py is missing from your submission, so none of the tests of part "
                f"{parts[m]['label']} ({m}) could run. Submit your assignment/*.py files"
                + (f" (found only: {', '.join(seen)})." if seen else " (no .py file was found at all).")
            )
            notes.append(f"missing: assignment/{m}.py")
            for t in tests:
                if t["module"] == m:
                    outcomes[t["id"]] = runner.TestOutcome("missing", message)
        to_run = [t["id"] for t in tests if t["id"] not in outcomes]
        total = total_timeout if total_timeout is not None else settings["total_timeout"]
        spec = runner.RunSpec(
            root=work,
            files=[f for f in files if file_modules[f] not in missing],
            tests=to_run,
            file_modules=file_modules,
            timeouts={t["id"]: t["timeout"] for t in tests},
            timeout=settings["timeout"],
            collect_timeout=settings["collect_timeout"],
            total_timeout=total,
            grace=settings.get("grace", runner.GRACE),
            preimport=tuple(settings["preimport"]),
            python=python,
            cpu=cpu,
            drop_privileges=drop_privileges,
            maxfail=maxfail,
            log=log,
        )
        run = runner.run(spec) if to_run else runner.RunResult()
        outcomes.update(run.outcomes)
        for f, message in sorted(run.collect_errors.items()):
            m = file_modules.get(f)
            if m and not any(n.startswith(f"could not import assignment/{m}.py") for n in notes):
                notes.append(
                    f"could not import assignment/{m}.py: {runner.summary_line(message.split(':', 1)[-1])[:300]}"
                )
        notes += run.notes
        wall = time.monotonic() - started
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
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
            os.replace(tmp, out)
        return results, run
    finally:
        if keep_workdir:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def print_report(results, out=None, show_hidden=True, log=print):
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


def main(args):
    """The `grade` subcommand."""
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
        keep_workdir=args.keep_workdir,
        log=(lambda line: None) if args.quiet else print,
    )
    if not args.quiet:
        print_report(results, out=args.out)
    return 0
