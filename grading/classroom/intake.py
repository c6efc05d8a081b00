"""The class's submissions read into one entry per student, each either a folder to grade or the reason it is not.

SUBMISSIONS is a folder whose entries are one student each (a folder, or a .zip; the entry's name without .zip is
the student), or a Gradescope "Export Submissions" zip or its extracted folder (one `submission_<id>/` folder per
submission and `submission_metadata.yml` naming the submitters). Bad input never stops the class: a zip that is not
one, an empty folder, a zip bomb, a member escaping the zip, two entries for one student each become an entry with
`error` set, which the gradebook shows. Zips are read with the grader's own limits (grading/runtime/upload.py) and
unpacked under the batch's work folder, never beside the submissions.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from grading.runtime.upload import MAX_FILE_BYTES, MAX_UPLOAD_BYTES, MAX_UPLOAD_FILES, python_files, read_regular

METADATA = "submission_metadata.yml"
MAX_EXPORT_BYTES = 8 * 2**30  # a whole class's export, unpacked
MAX_EXPORT_FILES = 500_000
IGNORED = {"__MACOSX", "__pycache__"}


class IntakeError(Exception):
    """SUBMISSIONS itself cannot be read (the whole class stops before anything runs)."""


class Refused(Exception):
    """One student's entry cannot be graded; the message says why."""


@dataclass
class Entry:
    student: str  # the student's name as the gradebook shows it (also results/<student>.json)
    source: Path | None = None  # the folder `grade` is given; None when refused
    error: str = ""  # why it is not graded ("" when it is)
    origins: list[str] = field(default_factory=list)  # the entries of SUBMISSIONS it came from
    meta: dict[str, str] = field(default_factory=dict)  # Gradescope's submitters: name, email, sid
    note: str = ""  # something noticed that does not stop grading (a name that is not UTF-8)


def shown_name(name: str) -> tuple[str, bool]:
    """(name as text, whether it was valid UTF-8): bytes that are not UTF-8 are written as \\xNN escapes."""
    raw = os.fsencode(name)
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), False


def _member_path(name: str) -> PurePosixPath:
    """The relative path a zip member would be written to; Refused when it would land outside the folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise Refused(f"refused: the zip member {name!r} would be written outside the submission")
    return path


def safe_unzip(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_files: int = MAX_UPLOAD_FILES,
    max_file_bytes: int | None = MAX_FILE_BYTES,
    suffixes: tuple[str, ...] | None = (".py",),
) -> int:
    """Unpacks the regular files of `archive` (those ending in `suffixes`; all when None) into `dest` and returns
    how many. Raises Refused: not a zip, a member escaping it, more members or bytes than the limits (a zip bomb;
    declared and actual sizes are both checked), encrypted or unsupported. Links and devices are skipped; a file
    larger than `max_file_bytes` is skipped (the grader would refuse it)."""
    archive, dest = Path(archive), Path(dest)
    try:
        info = os.lstat(archive)
    except OSError as exc:
        raise Refused(f"error: cannot read {archive.name}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"refused: {archive.name} is not a regular file")
    if max_bytes <= MAX_UPLOAD_BYTES:  # one student's zip: read it whole, with the grader's own checks
        data, reason = read_regular(archive, max_bytes)
        if data is None:
            raise Refused(f"refused: {archive.name}: {reason}")
        source = io.BytesIO(data)
    else:
        source = archive
    written = total = 0
    try:
        with zipfile.ZipFile(source) as z:
            members = z.infolist()
            if len(members) > max_files:
                raise Refused(f"refused: {archive.name} holds {len(members)} entries, more than the limit {max_files}")
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:
                raise Refused(
                    f"refused: {archive.name} unpacks to {declared} bytes, more than the limit {max_bytes} "
                    "(a zip bomb?)"
                )
            for member in members:
                rel = _member_path(member.filename)
                mode = member.external_attr >> 16
                if member.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    continue
                if suffixes is not None and not rel.name.endswith(suffixes):
                    continue
                if set(rel.parts) & IGNORED:
                    continue
                cap = max_file_bytes if max_file_bytes is not None else max_bytes
                with z.open(member) as f:
                    content = f.read(cap + 1)
                if len(content) > cap:
                    if max_file_bytes is not None and len(content) <= max_bytes:
                        continue
                    raise Refused(f"refused: {archive.name}: {member.filename!r} unpacks past the limit (a zip bomb?)")
                total += len(content)
                if total > max_bytes:
                    raise Refused(
                        f"refused: {archive.name} unpacks to more than the limit {max_bytes} bytes (a zip bomb?)"
                    )
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                written += 1
    except Refused:
        raise
    except zipfile.BadZipFile as exc:
        raise Refused(f"error: {archive.name} is not a valid zip file ({exc})") from None
    except (RuntimeError, NotImplementedError, zlib.error, EOFError, OSError, ValueError) as exc:
        raise Refused(f"error: {archive.name} cannot be unpacked ({exc})") from None
    return written


def _check_folder(folder: Path, what: str) -> None:
    """Refused when `folder` holds no file at all, or no .py file (nor a .zip the grader would open)."""
    files = []
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in IGNORED]
        files += filenames
        if len(files) > 50:
            break
    if not files:
        raise Refused(f"error: {what} is empty")
    if not python_files(folder) and not list(folder.glob("*.zip")):
        shown = ", ".join(sorted(shown_name(f)[0] for f in files)[:5])
        raise Refused(f"error: {what} holds no .py file (found: {shown})")


def _resolve(entry: Entry, path: Path, work: Path, index: int) -> None:
    """Sets `entry.source` to the folder to grade, or `entry.error`."""
    what = entry.origins[0]
    try:
        if path.is_dir() and not path.is_symlink():
            _check_folder(path, f"the folder {what}")
            entry.source = path
        elif path.name.endswith(".zip") and not path.is_symlink():
            dest = work / "unzipped" / f"{index:05d}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            if safe_unzip(path, dest) == 0:
                raise Refused(f"error: {what} holds no .py file")
            entry.source = dest
        elif path.is_symlink():
            raise Refused(f"refused: {what} is a symbolic link (only folders and .zip files are taken)")
        else:
            raise Refused(f"error: {what} is neither a folder nor a .zip")
    except Refused as exc:
        entry.error = str(exc)


def folder_entries(submissions: Path, work: Path) -> list[Entry]:
    """One entry per student of a plain submissions folder; two entries for one student refuse both."""
    groups: dict[str, list[tuple[str, Path]]] = {}
    notes = {}
    for item in sorted(os.scandir(submissions), key=lambda d: os.fsencode(d.name)):
        if item.name.startswith(".") or item.name in IGNORED:
            continue
        stem = item.name[: -len(".zip")] if item.name.endswith(".zip") else item.name
        student, utf8 = shown_name(stem)
        if not utf8:
            notes[student] = f"the name is not UTF-8: shown as {student}"
        groups.setdefault(student, []).append((shown_name(item.name)[0], Path(item.path)))
    entries = []
    for index, (student, items) in enumerate(sorted(groups.items())):
        entry = Entry(student, origins=[name for name, _ in items], note=notes.get(student, ""))
        if len(items) > 1:
            entry.error = f"error: {len(items)} entries for this student ({', '.join(entry.origins)}): keep one"
        else:
            _resolve(entry, items[0][1], work, index)
        entries.append(entry)
    return entries


def _load_yaml(path: Path):
    """submission_metadata.yml as plain data; Ruby tags (!ruby/...) read as their plain values."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def plain(loader, _suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("!", plain)
    with open(path, encoding="utf-8", errors="replace") as f:
        return yaml.load(f, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _key(d, name):
    """d[":name"] or d["name"] (Gradescope writes Ruby symbols as keys)."""
    if not isinstance(d, dict):
        return None
    return d.get(f":{name}", d.get(name))


def submitters(record) -> dict[str, str]:
    """{name, email, sid} of a metadata record, several submitters (a group) joined by "; "."""
    people = _key(record, "submitters") or []
    if not isinstance(people, list):
        people = [people]
    out = {}
    for column in ("name", "email", "sid"):
        values = [str(_key(p, column)) for p in people if _key(p, column) not in (None, "")]
        out[column] = "; ".join(values)
    return out


def find_metadata(folder: Path) -> Path | None:
    """submission_metadata.yml at the top of `folder` or of its only subfolder (the export's own top folder)."""
    if (folder / METADATA).is_file():
        return folder / METADATA
    subs = [p for p in folder.iterdir() if p.is_dir() and p.name not in IGNORED and not p.name.startswith(".")]
    if len(subs) == 1 and (subs[0] / METADATA).is_file():
        return subs[0] / METADATA
    return None


def gradescope_entries(metadata: Path, work: Path) -> list[Entry]:
    """One entry per `submission_<id>` of a Gradescope export, with its submitters from the metadata."""
    root = metadata.parent
    try:
        data = _load_yaml(metadata) or {}
    except Exception as exc:  # a metadata file that does not parse: the folders still grade, without names
        data = {}
        print(f"grade-class: warning: cannot read {metadata}: {exc}")
    records = {str(k).lstrip(":"): v for k, v in data.items()} if isinstance(data, dict) else {}
    entries = []
    folders = sorted(
        p for p in root.iterdir() if p.name not in IGNORED and not p.name.startswith(".") and p.name != METADATA
    )
    seen = set()
    for index, path in enumerate(folders):
        student, utf8 = shown_name(path.name[: -len(".zip")] if path.name.endswith(".zip") else path.name)
        entry = Entry(student, origins=[shown_name(path.name)[0]], meta=submitters(records.get(student, {})))
        if not utf8:
            entry.note = f"the name is not UTF-8: shown as {student}"
        if student in seen:
            entry.error = f"error: two entries for {student}"
        seen.add(student)
        _resolve(entry, path, work, index)
        entries.append(entry)
    for student in sorted(set(records) - seen):
        entries.append(
            Entry(
                student,
                error=f"error: listed in {METADATA} but there is no folder {student}/",
                meta=submitters(records[student]),
            )
        )
    return entries


def discover(submissions: str | os.PathLike, work: str | os.PathLike) -> tuple[list[Entry], bool]:
    """(entries sorted by student, whether SUBMISSIONS is a Gradescope export). Raises IntakeError when
    SUBMISSIONS cannot be read at all."""
    submissions, work = Path(submissions), Path(work)
    if submissions.is_file():
        if not zipfile.is_zipfile(submissions):
            raise IntakeError(f"{submissions} is neither a folder nor a zip")
        export = work / "export"
        shutil.rmtree(export, ignore_errors=True)
        export.mkdir(parents=True)
        try:
            safe_unzip(
                submissions,
                export,
                max_bytes=MAX_EXPORT_BYTES,
                max_files=MAX_EXPORT_FILES,
                max_file_bytes=None,
                suffixes=None,
            )
        except Refused as exc:
            raise IntakeError(str(exc).split(": ", 1)[-1]) from None
        submissions = export
    elif not submissions.is_dir():
        raise IntakeError(f"{submissions} does not exist")
    metadata = find_metadata(submissions)
    if metadata is not None:
        entries = gradescope_entries(metadata, work)
    else:
        entries = folder_entries(submissions, work)
    return sorted(entries, key=lambda e: e.student), metadata is not None
