"""`make submission`: zips the graded files, and nothing else, into submission.zip for Gradescope.

    python -m grading.build.submission [--out submission.zip] [--root .]

The graded files are the `assignment/<module>.py` files the tests of the manifest (grading/manifest.json) grade;
the grader takes only those from an upload, so they are all the zip holds: no .venv, no runs/, no tests. Each file
that still raises a TODO's NotImplementedError is named, so a forgotten part is seen before the upload.
"""

import argparse
import json
import os
import re
import sys
import zipfile
from pathlib import Path

STUB = re.compile(r'raise NotImplementedError\("([\w.]+): .*— see the (?:TODO|docstring) above"\)')


def graded_modules(manifest_path: str | os.PathLike) -> list[str]:
    """Returns the modules the manifest's tests grade, sorted: ["lstm", "preprocess", ...]."""
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    return sorted(set(manifest["files"].values()))


def graded_files(root: str | os.PathLike, manifest_path: str | os.PathLike | None = None) -> list[str]:
    """Returns the relative paths of the graded files, `assignment/<module>.py`, in sorted order."""
    root = Path(root)
    manifest_path = Path(manifest_path) if manifest_path else root / "grading" / "manifest.json"
    return [f"assignment/{module}.py" for module in graded_modules(manifest_path)]


def open_todos(path: str | os.PathLike) -> list[str]:
    """Returns the functions of a module that still raise a TODO stub's NotImplementedError."""
    return STUB.findall(Path(path).read_text(encoding="utf-8"))


def write_submission(
    root: str | os.PathLike, out: str | os.PathLike, manifest_path: str | os.PathLike | None = None
) -> list[str]:
    """Writes the graded files of `root` into the zip `out`; returns their relative paths.

    Raises:
        FileNotFoundError: a graded file is missing (the message names it).
    """
    root = Path(root)
    files = graded_files(root, manifest_path)
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"graded file(s) missing: {', '.join(missing)}")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in files:
            z.write(root / name, name)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="the folder holding assignment/ (default: the current folder)")
    parser.add_argument("--out", default="submission.zip", help="the zip to write (default: %(default)s)")
    parser.add_argument("--manifest", help="the list of graded tests (default: ROOT/grading/manifest.json)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        files = write_submission(root, args.out, args.manifest)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"could not write {args.out}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} with the {len(files)} graded files; upload it to Gradescope:")
    for name in files:
        todos = open_todos(root / name)
        print(f"  {name}" + (f"   (TODO not done yet: {', '.join(todos)})" if todos else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
