"""The upload: find the student's module files wherever the submission put them, and assemble the package to grade.

Only regular files are read (never a link, a device or a pipe), each capped (the MAX_* limits); a .zip at the top of
the submission is unpacked when no module file lies outside one. Only the graded modules of assignment/ (and helper
modules beside them) are taken: the rest of assignment/ and the given packages (schema.GIVEN_PACKAGES) always come
from the bundle, whatever the submission holds.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from grading.runtime.schema import GIVEN_PACKAGES

# Never taken from a submission even inside assignment/: they would change how the package or pytest behave.
NEVER_TAKEN = {"__init__", "conftest", "sitecustomize", "usercustomize", "setup", *GIVEN_PACKAGES}
MAX_FILE_BYTES = 2 * 2**20  # one module file of the submission
MAX_UPLOAD_BYTES = 50 * 2**20  # a zip in the submission, and what is unpacked from it
MAX_UPLOAD_FILES = 5_000  # entries of the upload looked at
MAX_HELPERS = 20  # helper modules taken beside the graded ones
# Never searched for the student's files: the given packages come from the bundle (a module of theirs named like a
# graded one must not be taken for it), and the tests are the bundle's.
SKIP_DIRS = {"__MACOSX", "__pycache__", ".git", ".venv", "venv", "env", "site-packages", "node_modules", "tests"}
SKIP_DIRS |= set(GIVEN_PACKAGES)


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


def python_files(submission, limit=20):
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
    """Fills `work`/assignment with the bundle's scaffolding (every non-graded .py of its assignment/, whatever
    they are) and the student's module files (regular files only).

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


def given_packages(bundle: str | os.PathLike) -> list[Path]:
    """The bundle's given packages (schema.GIVEN_PACKAGES) that it has: folders the runner gets whole, beside the
    assembled assignment/. A package the course does not have (yet) is skipped."""
    return [Path(bundle) / name for name in GIVEN_PACKAGES if (Path(bundle) / name).is_dir()]
