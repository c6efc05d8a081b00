"""The Gradescope bundle: `python -m grading build-autograder` -> dist/autograder/ and dist/autograder.zip.

At the root of the zip, as Gradescope wants: `setup.sh` (installs Python and the test dependencies into
/autograder/venv), `run_autograder` (grades /autograder/submission into /autograder/results/results.json) and
`requirements.txt`; beside them the grader (grading/ with a manifest of every graded test, hidden ones included),
the tests (visible and hidden, with their conftest and helpers), the package scaffolding with every solution
region stubbed, never the reference, and the given packages (lmkit/, lmrun/) whole.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from grading.build import manifest as manifest_builder
from grading.build import markers, release

if TYPE_CHECKING:
    from grading.runtime.schema import Manifest

RECEIPT = """\
# What the graded tests need, with TensorFlow and Keras pinned to the versions `make verify` ran them with.
# The CPU build of TensorFlow: Gradescope's containers have no GPU, so the CUDA-enabled wheel would be dead weight.
tensorflow-cpu=={tensorflow}
keras=={keras}
numpy
pytest>=8
pytest-timeout>=2.3
tqdm
regex  # the BPE bonus: GPT-2's pre-tokenizer needs Unicode letter and number classes
"""


def requirements() -> str:
    """The bundle's requirements.txt: the versions of TensorFlow and Keras installed here."""

    def version(name, default):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return default

    return RECEIPT.format(tensorflow=version("tensorflow", "2.21.0"), keras=version("keras", "3.15.1"))


def build_autograder(
    root: str | os.PathLike = ".",
    out: str | os.PathLike = "dist/autograder",
    *,
    zip_path: str | os.PathLike | None = None,
    manifest: Manifest | None = None,
    check_import: bool = True,
    python: str = sys.executable,
    log: Callable[[str], object] = print,
) -> Manifest:
    """Builds the bundle into `out` (and `zip_path`); returns the manifest used. Raises release.BuildError."""
    root = Path(root).resolve()
    out = release.fresh_folder(out)
    regions = release.stub_package(root, out)
    release.copy_given_packages(root, out)
    problems = []
    if manifest is None:
        manifest, problems = manifest_builder.build_manifest(root, python=python, log=log)
    shipped_tests = []
    for rel in release.project_files(root):
        parts = Path(rel).parts
        if parts[0] != "tests" or parts[1:2] == ("instructor",):
            continue
        if rel.endswith(".py"):
            shipped_tests.append(rel)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, target)
    release.write_runtime(out, manifest)
    for name in ("setup.sh", "run_autograder"):
        shutil.copy(release.TEMPLATES / "autograder" / name, out / name)
        (out / name).chmod(0o755)
    (out / "requirements.txt").write_text(requirements())
    problems += release.check_parses(out)
    solution = release.solution_only_lines(root, regions, shipped_tests)
    problems += release.leak_scan(out, solution, allow_hidden=True)
    if check_import:
        for name, error in release.import_check(out, python).items():
            problems.append(f"{name} does not import in the bundle:\n{error}")
    if problems:
        raise release.BuildError("\n".join(problems))
    if zip_path:
        release.write_zip(out, zip_path)
    return manifest


def main(args: argparse.Namespace) -> int:
    """The `build-autograder` subcommand."""
    root = Path(args.root)
    out = Path(args.out)
    if not out.is_absolute():
        out = root / out
    zip_path = out.with_suffix(".zip")
    try:
        manifest = build_autograder(root, out, zip_path=zip_path, check_import=not args.no_import_check)
    except (release.BuildError, markers.MarkerError, manifest_builder.ManifestError) as exc:
        print(f"build-autograder failed:\n{exc}", file=sys.stderr)
        return 1
    tests = manifest["tests"]
    core = sum(t["points"] for t in tests if not t["bonus"])
    bonus = sum(t["points"] for t in tests if t["bonus"])
    hidden = sum(1 for t in tests if t["hidden"])
    print(f"{len(tests)} graded tests ({hidden} hidden): {core:g} points + {bonus:g} bonus")
    print(f"wrote {out} and {zip_path}: upload the zip as the autograder of a Gradescope programming assignment")
    return 0
