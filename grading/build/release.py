"""The student release: `python -m grading build-student` -> dist/student/ and dist/student.zip.

What goes in: assignment/ with every solution region stubbed, the visible tests with their conftest and helpers,
the notebooks (outputs cleared), data/, a README, Makefile and pyproject of its own, the grade runner behind
`make grade` with a manifest of the visible tests, and the notebook runner and zipper behind `make notebooks` and
`make submission`. What never goes in: hidden and instructor tests, the bug catalogue, the builder, the verifier,
the reference. The build refuses to finish if a marker is malformed, a stub module does not parse or import,
anything leaks (a marker, a line found only inside solution regions, a hidden test's name), or a file of the release
names a `make` target, a Markdown document, a notebook or a file of bench/ or docs/ the release does not have.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grading.build import manifest as manifest_builder
from grading.build import markers
from grading.runtime.schema import GIVEN_PACKAGES

if TYPE_CHECKING:
    from grading.runtime.schema import Manifest

GRADING = Path(__file__).resolve().parents[1]  # this grading/ package
TEMPLATES = Path(__file__).with_name("templates")
# A release or a bundle carries grading/__main__.py and grading/runtime/ whole (what `python -m grading grade`
# needs), with a manifest.json; the student release adds the tools behind `make notebooks` and `make submission`.
STUDENT_TOOLS = ("build/run_notebooks.py", "build/submission.py")
RUNTIME_INIT = '"""The grader behind `make grade`, the same one Gradescope runs. Nothing to edit here."""\n'
TOOLS_INIT = '"""The tools behind `make notebooks` and `make submission`."""\n'
SKIP_PARTS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "dist", "build", "runs"}
MAX_DATA_FILE = 2 * 2**20  # larger data files (downloaded corpora) stay out of the release
MIN_LEAK_LENGTH = 12  # shorter solution lines (`return x`, `else:`) are too common to count as leaks
MARKER_TEXT = re.compile(r"(BEGIN|END)[ _-]*SOLUTION", re.IGNORECASE)


class BuildError(Exception):
    """The release cannot be built; the message lists every problem, one per line."""


@dataclass
class Build:
    out: Path
    regions: dict[str, list[markers.Region]] = field(default_factory=dict)  # module file -> its regions
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # relative paths written


def project_files(root: str | os.PathLike) -> list[str]:
    """The repository's files (tracked or not ignored by git), relative paths in order; a plain walk without git."""
    root = Path(root)
    if (root / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    else:
        names = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_PARTS and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
    names = [Path(n).as_posix() for n in names if (root / n).is_file()]
    return sorted(n for n in names if not set(Path(n).parts) & SKIP_PARTS and not n.endswith(".pyc"))


def stub_package(root: str | os.PathLike, dest: str | os.PathLike) -> dict[str, list[markers.Region]]:
    """Writes assignment/ of `root` into `dest`/assignment with every region stubbed; returns {path: [Region]}."""
    root, dest = Path(root), Path(dest)
    regions, errors = {}, []
    for path in sorted((root / "assignment").rglob("*")):
        if not path.is_file() or set(path.relative_to(root).parts) & SKIP_PARTS or path.suffix == ".pyc":
            continue
        rel = path.relative_to(root).as_posix()
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix != ".py":
            shutil.copy(path, target)
            continue
        try:
            stubbed, found = markers.stub_source(path.read_text(encoding="utf-8"), rel)
        except markers.MarkerError as exc:
            errors.append(str(exc))
            continue
        target.write_text(stubbed, encoding="utf-8")
        if found:
            regions[rel] = found
    if errors:
        raise BuildError("\n".join(errors))
    return regions


def clear_notebook(text: str) -> str:
    """A notebook's JSON without outputs and execution counts (they came from the reference)."""
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


# Dependencies of the instructor's tooling only (`grade-class`): the student release does not install them.
INSTRUCTOR_ONLY = {"pyyaml", "copydetect"}


def _dependencies(root):
    """The `dependencies = [...]` entries of the repository's pyproject.toml, as written there, less INSTRUCTOR_ONLY."""
    text = (Path(root) / "pyproject.toml").read_text() if (Path(root) / "pyproject.toml").exists() else ""
    match = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
    if not match:
        return ['"tensorflow>=2.16,<3"', '"numpy"', '"tqdm"']
    entries = [
        line.split("#")[0].strip().rstrip(",") for line in match.group(1).splitlines() if line.split("#")[0].strip()
    ]
    return [e for e in entries if re.split(r"[<>=!~\[ ]", e.strip('"'))[0].lower() not in INSTRUCTOR_ONLY]


def _part_rows(manifest):
    rows = []
    for part in manifest["parts"]:
        tests = [t for t in manifest["tests"] if t["module"] == part["module"]]
        visible = sum(t["points"] for t in tests if not t["bonus"])
        bonus = sum(t["points"] for t in tests if t["bonus"])
        files = sorted({t["file"] for t in tests})
        total = f"{part['points']}" if part.get("points") else f"{visible:g}"
        if part.get("bonus"):
            total += f" + {part['bonus']} bonus"
        rows.append(
            f"| {part['label']} | `assignment/{part['module']}.py` | {part['title']} | {total} | "
            f"{visible:g}{f' + {bonus:g} bonus' if bonus else ''} | {', '.join(f'`{f}`' for f in files)} |"
        )
    return "\n".join(rows)


def _todo_list(manifest, regions):
    order = [p["module"] for p in manifest["parts"]]
    lines = []
    by_module = {Path(path).stem: found for path, found in regions.items()}
    for module in order + sorted(set(by_module) - set(order)):
        found = by_module.get(module)
        if not found:
            continue
        label = next((p["label"] for p in manifest["parts"] if p["module"] == module), None)
        lines.append(f"- **assignment/{module}.py**" + (f" (part {label})" if label else ""))
        for region in found:
            todo = region.first_todo or "see the docstring"
            lines.append(f"  - [ ] `{region.qualname}`: {todo}")
    return "\n".join(lines)


def render(template: str, **values: str) -> str:
    """The text of grading/build/templates/`template` with each `{{KEY}}` replaced by `values[KEY]`."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    leftover = re.findall(r"\{\{[A-Z_]+\}\}", text)
    if leftover:
        raise BuildError(f"template {template} has unfilled placeholders: {leftover}")
    return text


def write_runtime(dest: str | os.PathLike, manifest: Manifest, tools: Iterable[str] = ()) -> None:
    """The grader: grading/{__init__,__main__}.py, grading/runtime/ whole, manifest.json, and the `tools` (paths
    under grading/, e.g. STUDENT_TOOLS) with the __init__.py of their folders."""
    pkg = Path(dest) / "grading"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(RUNTIME_INIT)
    shutil.copy(GRADING / "__main__.py", pkg / "__main__.py")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(GRADING / "runtime", pkg / "runtime", ignore=ignore, dirs_exist_ok=True)
    for tool in tools:
        target = pkg / tool
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target.parent / "__init__.py").exists():
            (target.parent / "__init__.py").write_text(TOOLS_INIT)
        shutil.copy(GRADING / tool, target)
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def copy_given_packages(root: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copies each given package of `root` (GIVEN_PACKAGES: lmkit/, lmrun/) whole into `dest`, as it is (they hold
    no solution); skips one the repository does not have. Returns the relative paths written."""
    root, dest = Path(root), Path(dest)
    written = []
    for rel in project_files(root):
        if Path(rel).parts[0] in GIVEN_PACKAGES:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / rel, target)
            written.append(rel)
    return written


def shipped_packages(dest: str | os.PathLike) -> list[str]:
    """The importable packages of a release, for its pyproject.toml: assignment and the given packages, with their
    subpackages (folders holding an __init__.py)."""
    dest = Path(dest)
    names = []
    for top in ("assignment", *GIVEN_PACKAGES):
        for init in sorted((dest / top).rglob("__init__.py")):
            names.append(".".join(init.parent.relative_to(dest).parts))
    return names


def allowed_grading_files(tools: Iterable[str] = ()) -> set[str]:
    """The files under grading/ a release or a bundle may hold (relative to grading/): what write_runtime writes."""
    allowed = {"__init__.py", "__main__.py", "manifest.json"}
    allowed |= {p.relative_to(GRADING).as_posix() for p in (GRADING / "runtime").rglob("*") if p.is_file()}
    for tool in tools:
        allowed |= {tool, (Path(tool).parent / "__init__.py").as_posix()}
    return {a for a in allowed if "__pycache__" not in a}


def solution_only_lines(
    root: str | os.PathLike, regions: Mapping[str, list[markers.Region]], shipped_tests: Iterable[str] = ()
) -> set[str]:
    """Non-trivial lines found inside solution regions and nowhere else in the package, the given packages (they
    ship as they are) or the shipped tests."""
    root = Path(root)
    inside, outside = set(), set()
    for package in GIVEN_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            outside |= {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
    for path in sorted((root / "assignment").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        source = path.read_text(encoding="utf-8")
        found = regions.get(rel, [])
        inside |= markers.solution_lines(source, found)
        outside |= markers.outside_lines(source, found)
        outside |= {r.stub_line().strip() for r in found}
    for rel in shipped_tests:  # a test may legitimately spell a line the same way as the solution
        outside |= {line.strip() for line in (root / rel).read_text(encoding="utf-8").splitlines()}
    return {line for line in inside - outside if len(line) >= MIN_LEAK_LENGTH and any(c.isalnum() for c in line)}


def _text_lines(path):
    """The lines of a text file (a notebook: of its cells and outputs); [] for binary files."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    if path.suffix == ".ipynb":
        try:
            nb = json.loads(text)
        except ValueError:
            return text.splitlines()
        lines = []
        for cell in nb.get("cells", []):
            source = cell.get("source", "")
            lines += ("".join(source) if isinstance(source, list) else source).splitlines()
            for output in cell.get("outputs", []):
                out = output.get("text", "")
                lines += ("".join(out) if isinstance(out, list) else out).splitlines()
        return lines
    return text.splitlines()


def hidden_test_names(root: str | os.PathLike) -> set[str]:
    """Names of hidden test functions that no visible test shares (they must not appear in a release)."""
    root = Path(root)

    def names(paths):
        found = set()
        for path in paths:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
        return found

    hidden = names((root / "tests" / "hidden").glob("*.py")) if (root / "tests" / "hidden").exists() else set()
    return hidden - names((root / "tests").glob("*.py"))


def leak_scan(
    dest: str | os.PathLike,
    solution_only: Iterable[str],
    *,
    hidden_names: Iterable[str] = (),
    allow_hidden: bool = False,
    tools: Iterable[str] = (),
) -> list[str]:
    """Returns the leaks found in `dest`, one `path:line: what` string each (`tools`: the files under grading/ it
    may hold beside grading/runtime/, as write_runtime got them)."""
    dest = Path(dest)
    leaks = []
    allowed_grading = allowed_grading_files(tools)
    hidden_re = re.compile(r"\b(" + "|".join(map(re.escape, sorted(hidden_names))) + r")\b") if hidden_names else None
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        rel = path.relative_to(dest).as_posix()
        parts = Path(rel).parts
        if parts[:2] == ("tests", "instructor"):
            leaks.append(f"{rel}: instructor tests must not ship")
        if not allow_hidden and (parts[:2] == ("tests", "hidden") or path.stem.endswith("_hidden")):
            leaks.append(f"{rel}: hidden tests must not ship")
        if parts[0] == "grading" and Path(*parts[1:]).as_posix() not in allowed_grading:
            leaks.append(f"{rel}: grading internals must not ship (only __main__.py, runtime/, manifest.json, tools)")
        if path.suffix in (".patch", ".diff") or "__pycache__" in parts:
            leaks.append(f"{rel}: must not ship")
        for number, line in enumerate(_text_lines(path), 1):
            if MARKER_TEXT.search(line):
                leaks.append(f"{rel}:{number}: solution marker text: {line.strip()[:80]}")
            elif line.strip() in solution_only:
                leaks.append(f"{rel}:{number}: a line of the reference solution: {line.strip()[:80]}")
            elif hidden_re is not None and not allow_hidden and hidden_re.search(line):
                leaks.append(f"{rel}:{number}: names a hidden test: {line.strip()[:80]}")
    return leaks


# What a release's files tell the student to open or run; each must exist in the release.
MAKE_IN_BACKTICKS = re.compile(r"`make ([a-z][\w-]*)")
MAKE_COMMAND_LINE = re.compile(r"^\s*make ([a-z][\w-]*)")  # a command line in a Markdown code block
DOC_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[A-Z][A-Z0-9_-]*\.md)\b")  # README.md, CONVENTIONS.md, ../x/DESIGN.md
UNSHIPPED_PATH = re.compile(r"(?<![\w/.-])((?:bench|docs)/[\w./-]*\w\.\w+)\b")  # folders a release never has
NOTEBOOK_NAME = re.compile(r"(?<![\w/.-])((?:notebooks/)?[\w-]+\.ipynb)\b")


def make_targets(makefile: str | os.PathLike) -> set[str]:
    """Returns the targets a Makefile defines (`name:` at the start of a line)."""
    text = Path(makefile).read_text(encoding="utf-8") if Path(makefile).exists() else ""
    return set(re.findall(r"^([a-z][\w-]*)\s*:(?!=)", text, re.M))


def reference_scan(dest: str | os.PathLike) -> list[str]:
    """Returns `path:line: what` for every `make X`, Markdown document, notebook, or file of bench/ or docs/ that a
    file of the release names and the release does not have: a student must be able to run and open everything its
    files tell them to."""
    dest = Path(dest)
    targets = make_targets(dest / "Makefile")
    problems = []
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        rel = path.relative_to(dest).as_posix()
        markdown = path.suffix == ".md" or path.name == "Makefile"
        for number, line in enumerate(_text_lines(path), 1):
            named = set(MAKE_IN_BACKTICKS.findall(line))
            if markdown:
                named |= set(MAKE_COMMAND_LINE.findall(line))
            for target in sorted(named - targets):
                problems.append(f"{rel}:{number}: names `make {target}`, which the release's Makefile does not have")
            names = set(DOC_NAME.findall(line)) | set(UNSHIPPED_PATH.findall(line)) | set(NOTEBOOK_NAME.findall(line))
            for name in sorted(names):
                places = (dest / name, path.parent / name, dest / "notebooks" / Path(name).name)
                if not any(place.is_file() for place in places):
                    problems.append(f"{rel}:{number}: names {name}, which the release does not ship")
    return problems


IMPORT_CHECK = r"""
import importlib, json, os, sys, traceback
root = os.path.abspath(sys.argv[1])
sys.path[:] = [root] + [p for p in sys.path if p and "__editable__" not in p
                        and not os.path.exists(os.path.join(p, "assignment", "__init__.py"))]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") or "").lower()]
out = {}
for name in sys.argv[2:]:
    try:
        module = importlib.import_module(name)
        where = os.path.abspath(module.__file__)
        out[name] = None if where.startswith(root + os.sep) else f"imported from {where}, not from the release"
    except BaseException:
        out[name] = traceback.format_exc(limit=6)
print("RESULT " + json.dumps(out))
"""


def import_check(dest: str | os.PathLike, python: str = sys.executable, timeout: float = 300) -> dict[str, str]:
    """Imports every module of dest/assignment in a fresh interpreter; returns {module: error} for failures."""
    dest = Path(dest).resolve()
    names = sorted(
        ".".join(
            p.relative_to(dest).with_suffix("").parts[:-1]
            if p.name == "__init__.py"
            else p.relative_to(dest).with_suffix("").parts
        )
        for p in (dest / "assignment").rglob("*.py")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.run(
            [python, "-I", "-B", "-c", IMPORT_CHECK, str(dest), *names],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=dest,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"assignment": f"importing the stub modules took longer than {timeout} s"}
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        return {"assignment": f"the import check crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"}
    return {name: error for name, error in json.loads(line[7:]).items() if error}


def check_parses(dest: str | os.PathLike) -> list[str]:
    """Returns `path: error` for every .py file under `dest` that does not parse."""
    errors = []
    for path in sorted(Path(dest).rglob("*.py")):
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as exc:
            errors.append(f"{path.relative_to(dest)}:{exc.lineno}: does not parse: {exc.msg}")
    return errors


def write_zip(src: str | os.PathLike, zip_path: str | os.PathLike, prefix: str = "") -> Path:
    """Zips `src` deterministically (sorted, fixed timestamps); executables keep their mode."""
    src, zip_path = Path(src), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            info = zipfile.ZipInfo(prefix + path.relative_to(src).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = ((0o755 if os.access(path, os.X_OK) else 0o644) | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, path.read_bytes())
    return zip_path


def fresh_folder(out: str | os.PathLike) -> Path:
    """`out`, emptied (or created)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def build_student(
    root: str | os.PathLike = ".",
    out: str | os.PathLike = "dist/student",
    *,
    zip_path: str | os.PathLike | None = None,
    manifest: Manifest | None = None,
    check_import: bool = True,
    python: str = sys.executable,
    log: Callable[[str], object] = print,
) -> Build:
    """Builds the student release into `out` (and `zip_path`); returns a Build or raises BuildError."""
    root = Path(root).resolve()
    out = fresh_folder(out)
    build = Build(out)
    build.regions = stub_package(root, out)
    copy_given_packages(root, out)
    problems = []
    for path, found in build.regions.items():
        for region in found:
            if region.first_todo is None:
                build.warnings.append(
                    f"{path}:{region.begin}: {region.qualname} has no `# TODO:` line above its region"
                )
    if manifest is None:
        manifest, manifest_problems = manifest_builder.build_manifest(root, hidden=False, python=python, log=log)
        problems += manifest_problems
    else:
        manifest = dict(
            manifest,
            tests=[t for t in manifest["tests"] if not t["hidden"]],
            files={f: m for f, m in manifest["files"].items() if not f.startswith("tests/hidden/")},
        )
    shipped_tests = []
    for rel in project_files(root):
        parts = Path(rel).parts
        src = root / rel
        if parts[0] == "tests":
            if parts[1:2] in (("hidden",), ("instructor",)):
                continue
            if src.suffix == ".py":
                shipped_tests.append(rel)
            target = out / rel
        elif parts[0] == "notebooks":
            target = out / rel
            if src.suffix == ".ipynb":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(clear_notebook(src.read_text(encoding="utf-8")), encoding="utf-8")
                continue
        elif parts[0] == "data":
            if src.stat().st_size > MAX_DATA_FILE:
                build.warnings.append(f"{rel}: left out of the release ({src.stat().st_size / 2**20:.1f} MB)")
                continue
            target = out / rel
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)
    write_runtime(out, manifest, STUDENT_TOOLS)
    deps = _dependencies(root)
    (out / "README.md").write_text(
        render(
            "student/README.md",
            PARTS=_part_rows(manifest),
            TODOS=_todo_list(manifest, build.regions),
            TIMEOUT=f"{manifest['settings']['timeout']:g}",
            GRADED_FILES=", ".join(f"`assignment/{m}.py`" for m in sorted(set(manifest["files"].values()))),
        )
    )
    (out / "Makefile").write_text(render("student/Makefile"))
    (out / "pyproject.toml").write_text(
        render(
            "student/pyproject.toml",
            DEPENDENCIES="\n".join(f"    {d}," for d in deps),
            PACKAGES=", ".join(f'"{name}"' for name in shipped_packages(out)),
            TIMEOUT=f"{manifest['settings']['timeout']:g}",
        )
    )
    (out / ".gitignore").write_text(render("student/gitignore"))
    problems += check_parses(out)
    solution = solution_only_lines(root, build.regions, shipped_tests)
    problems += leak_scan(out, solution, hidden_names=hidden_test_names(root), tools=STUDENT_TOOLS)
    problems += reference_scan(out)
    if check_import:
        for name, error in import_check(out, python).items():
            problems.append(f"{name} does not import in the release:\n{error}")
    if problems:
        raise BuildError("\n".join(problems))
    build.files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    if zip_path:
        write_zip(out, zip_path, prefix=out.name + "/")
    return build


def main(args: argparse.Namespace) -> int:
    """The `build-student` subcommand."""
    root = Path(args.root)
    out = Path(args.out)
    if not out.is_absolute():
        out = root / out
    zip_path = None if args.no_zip else out.with_suffix(".zip")
    try:
        build = build_student(root, out, zip_path=zip_path, check_import=not args.no_import_check)
    except (BuildError, markers.MarkerError, manifest_builder.ManifestError) as exc:
        print(f"build-student failed:\n{exc}", file=sys.stderr)
        return 1
    for warning in build.warnings:
        print(f"warning: {warning}")
    count = sum(len(r) for r in build.regions.values())
    print(f"stubbed {count} solution regions in {len(build.regions)} modules:")
    for path, found in build.regions.items():
        print(f"  {path}: {', '.join(r.qualname for r in found)}")
    print(
        f"checked: markers, every module parses{'' if args.no_import_check else ' and imports'}, no leaks, "
        "every `make` target and file the release names exists"
    )
    print(f"wrote {out} ({len(build.files)} files)" + (f" and {zip_path}" if zip_path else ""))
    return 0
