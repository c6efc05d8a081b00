"""A generated class for the benchmark and the tests: one folder per student holding assignment/<module>.py.

The students: `reference` (the repository's solution), `stubs` (the student release: 0 points), `copy` (the reference
disguised: comments and docstrings removed, local variables renamed, the code laid out anew by `ast.unparse`),
`alternatives` (the reference with every alternative-but-correct patch of grading/checks/alternatives/ that applies
on top of the others: an independent correct solution), then one student per bug of grading/checks/bugs/ and per
alternative, taken in turn from each part.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from grading import config
from grading.build.release import stub_package
from grading.classroom.similarity import strip_docstrings


def graded_modules() -> list[str]:
    return [p.module for p in config.PARTS]


class _Renamer(ast.NodeTransformer):
    """Renames the local variables of every function without nested scopes (no inner function, lambda or class)
    to v0, v1, ...: the names it assigns that are not its parameters (callers may pass them by keyword) nor declared
    global or nonlocal."""

    def __init__(self):
        self.count = 0

    def visit_FunctionDef(self, node):
        self.generic_visit(node)
        inner = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.Global, ast.Nonlocal)
        if any(isinstance(n, inner) for n in ast.walk(node) if n is not node):
            return node
        params = {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
        params |= {a.arg for a in (node.args.vararg, node.args.kwarg) if a is not None}
        stored = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        mapping = {}
        for name in sorted(stored - params):
            mapping[name] = f"v{self.count}"
            self.count += 1
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id in mapping:
                n.id = mapping[n.id]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef


def _reorder(body):
    """The module's function definitions in reverse order within each run of consecutive ones, every other
    statement where it was (so module-level code still finds the functions it names)."""
    run = []
    for i, node in enumerate([*body, None]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            run.append(i)
            continue
        functions = [body[j] for j in run][::-1]
        for j, function in zip(run, functions):
            body[j] = function
        run = []


def disguise(source: str) -> str:
    """`source` as a student hiding a copy would make it: no comments, no docstrings, local variables renamed,
    the module's functions in another order, every line laid out anew (quotes, spacing, parentheses, line breaks);
    it computes the same."""
    tree = strip_docstrings(ast.parse(source))
    _reorder(tree.body)
    tree = _Renamer().visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def patches(root: str | os.PathLike, folder: str) -> list[Path]:
    """grading/checks/<folder>/<module>/*.patch of `root`, in order."""
    return sorted((Path(root).resolve() / "grading" / "checks" / folder).glob("*/*.patch"))


def apply_patches(root: str | os.PathLike, dest: str | os.PathLike, patch_files: list[Path]) -> list[Path]:
    """Writes the reference's assignment/ into `dest`/assignment with `patch_files` applied in turn (one that does
    not apply on top of the others is left out); returns the patches applied."""
    dest = Path(dest)
    (dest / "assignment").mkdir(parents=True, exist_ok=True)
    for src in sorted((Path(root) / "assignment").glob("*.py")):
        shutil.copyfile(src, dest / "assignment" / src.name)
    applied = []
    for patch in patch_files:
        ok = True
        for args in (["--dry-run"], []):
            proc = subprocess.run(
                ["patch", "-p1", "--batch", "--forward", "--silent", *args, "-i", str(patch)],
                cwd=dest,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                ok = False
                break
        if ok:
            applied.append(patch)
    for leftover in list((dest / "assignment").glob("*.orig")) + list((dest / "assignment").glob("*.rej")):
        leftover.unlink()
    return applied


def _keep_graded(folder: Path) -> None:
    """Leaves only the graded files (what a student uploads) in `folder`/assignment."""
    keep = {f"{m}.py" for m in graded_modules()}
    for path in (folder / "assignment").iterdir():
        if path.name not in keep:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def make_class(root: str | os.PathLike, dest: str | os.PathLike, size: int | None = None) -> dict[str, str]:
    """Writes a generated class of `size` students (all of them when None) into `dest`; returns {student: what it
    is}."""
    root, dest = Path(root), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    made = {}

    def add(name, what):
        made[name] = what
        _keep_graded(dest / name)

    apply_patches(root, dest / "reference", [])
    add("reference", "the reference solution")
    with tempfile.TemporaryDirectory() as tmp:
        stub_package(root, tmp)
        (dest / "stubs" / "assignment").mkdir(parents=True)
        for m in graded_modules():
            shutil.copyfile(Path(tmp) / "assignment" / f"{m}.py", dest / "stubs" / "assignment" / f"{m}.py")
    add("stubs", "the student release, nothing written (0 points)")
    (dest / "copy" / "assignment").mkdir(parents=True)
    for m in graded_modules():
        text = (root / "assignment" / f"{m}.py").read_text(encoding="utf-8")
        (dest / "copy" / "assignment" / f"{m}.py").write_text(disguise(text), encoding="utf-8")
    add("copy", "the reference disguised: no comments or docstrings, locals renamed, laid out anew")
    applied = apply_patches(root, dest / "alternatives", patches(root, "alternatives"))
    add("alternatives", f"the reference with {len(applied)} alternative-but-correct patches applied")

    # The bugs and the single alternatives, one part after the other in turn, so a small class still has some of each.
    by_module = {}
    for kind in ("bugs", "alternatives"):
        for patch in patches(root, kind):
            by_module.setdefault(patch.parent.name, []).append((kind, patch))
    queue = []
    while any(by_module.values()):
        for m in list(by_module):
            if by_module[m]:
                queue.append(by_module[m].pop(0))
    for kind, patch in queue:
        if size is not None and len(made) >= size:
            break
        name = f"{'bug' if kind == 'bugs' else 'alt'}-{patch.parent.name}-{patch.stem}"
        if apply_patches(root, dest / name, [patch]):
            add(name, f"{'bug' if kind == 'bugs' else 'alternative'} {patch.parent.name}/{patch.stem}")
        else:
            shutil.rmtree(dest / name)
    if size is not None:
        for name in list(made)[size:]:
            shutil.rmtree(dest / name)
            del made[name]
    return made
