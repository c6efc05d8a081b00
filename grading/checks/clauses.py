"""`python -m grading clauses`: the clause-to-test map, every promise of a graded docstring and the tests that pin it.

A graded function or class is one with a solution region (a class counts when one of its methods has one). Its
promises (shapes, dtypes, values, edge cases, errors, determinism, training versus inference) are listed in
grading/checks/clauses.txt, each as a verbatim fragment of its docstring (whitespace and line breaks do not matter):

    sampling.top_k_filter
        a token tied with the k-th one is kept too

A graded test (tests/test_*.py, tests/hidden/test_*.py) names the clauses it pins with a marker quoting each one,
or a part of it that no other clause of the same function holds:

    @pytest.mark.clause("sampling.top_k_filter: a token tied with the k-th one")

The check fails, naming each problem, when a graded function or class has no entry, a listed clause no longer
appears in its docstring, a clause has no test, a test names a clause that is not listed (or a function that is not
graded) or quotes words found in several of its clauses, or a clause marker sits on a test without points or in a
file that grades another module. A test may
name several clauses (several arguments, or several markers). Tests are read with `ast`: nothing is imported.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grading import config
from grading.build import manifest as manifest_builder
from grading.build import markers

DATA = Path(__file__).with_name("clauses.txt")
MARKER = "clause"


@dataclass
class Clause:
    module: str
    owner: str  # the function or class, e.g. "top_k_filter" or "CharTokenizer.encode"
    text: str
    tests: list[str] = field(default_factory=list)  # "tests/test_x.py::test_y"

    @property
    def key(self) -> str:
        return f"{self.module}.{self.owner}: {_norm(self.text)}"


def _norm(text):
    return " ".join(text.split())


def graded_docstrings(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """{module: {qualname: docstring}} for every function with a solution region and every class holding one."""
    out = {}
    for part in config.PARTS:
        path = Path(root) / "assignment" / f"{part.module}.py"
        source = path.read_text(encoding="utf-8")
        names = {r.qualname for r in markers.find_regions(source, str(path))}
        owners = names | {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
        docs = {}

        def visit(node, prefix, owners=owners, docs=docs):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = prefix + child.name
                    if name in owners:
                        docs[name] = ast.get_docstring(child) or ""
                    if isinstance(child, ast.ClassDef):
                        visit(child, name + ".")

        visit(ast.parse(source), "")
        # A method without a docstring of its own (`call`) is described by its class's docstring.
        out[part.module] = {name: doc for name, doc in docs.items() if doc}
    return out


def _test_markers(root):
    """Yields (test id, module graded by its file, has points, [clause strings]) for every test of the graded files."""
    modules = [p.module for p in config.PARTS]
    for rel in manifest_builder.graded_test_files(root):
        module = manifest_builder.module_of(rel, modules)
        tree = ast.parse((Path(root) / rel).read_text(encoding="utf-8"), filename=rel)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
                continue
            points, cited = False, []
            for deco in node.decorator_list:
                call = deco if isinstance(deco, ast.Call) else None
                target = ast.unparse(call.func if call else deco)
                if target == "pytest.mark.points":
                    points = True
                elif target == f"pytest.mark.{MARKER}":
                    args = call.args if call else []
                    bad = [a for a in args if not (isinstance(a, ast.Constant) and isinstance(a.value, str))]
                    cited += [a.value for a in args if a not in bad]
                    if bad or not args:
                        cited.append(None)  # reported: a clause marker must quote its clauses as string literals
            yield f"{rel}::{node.name}", module, points, cited


def read_list(path: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """{module: {owner: [clause texts]}} from clauses.txt, or raises ValueError naming the bad line."""
    listed, owner = {}, None
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            module, _, name = line.strip().partition(".")
            if not name:
                raise ValueError(f"{path}:{number}: expected `module.Function` or `module.Class.method`, got {line!r}")
            owner = listed.setdefault(module, {}).setdefault(name, [])
        elif owner is None:
            raise ValueError(f"{path}:{number}: a clause before any `module.Function` line")
        else:
            owner.append(_norm(line))
    return listed


def _resolve(cited, clauses_of):
    """The clause a marker names ("module.Function: words"): the one whose text is, or holds, the words."""
    owner, sep, words = cited.partition(":")
    mine = clauses_of.get(owner.strip(), [])
    words = _norm(words)
    if not sep or not words:
        return None, "write it as 'module.Function: words of the clause'"
    if not mine:
        return None, "no graded function or class of that name lists clauses"
    exact = [c for c in mine if c.text == words]
    found = exact or [c for c in mine if words in c.text]
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"no clause of {owner.strip()} holds these words; its clauses are: " + " | ".join(
            c.text for c in mine
        )
    return None, "these words are in several clauses: " + " | ".join(c.text for c in found)


def load_map(root: str | os.PathLike, data: str | os.PathLike | None = None) -> tuple[list[Clause], list[str]]:
    """Returns (clauses in the data file's order, problems)."""
    data = Path(data or Path(root) / "grading" / "checks" / DATA.name)
    problems = []
    try:
        listed = read_list(data)
    except (OSError, ValueError) as exc:
        return [], [f"cannot read the clause list: {exc}"]
    docs = graded_docstrings(root)
    clauses, keys, clauses_of = [], set(), {}
    for module, owners in docs.items():
        entries = listed.get(module, {})
        for owner, doc in owners.items():
            if owner not in entries:
                problems.append(f"{module}.{owner}: graded, but {data.name} lists none of its clauses")
                continue
            flat = _norm(doc)
            for text in entries[owner]:
                clause = Clause(module, owner, text)
                if clause.text not in flat:
                    problems.append(f"{clause.key}: this text is no longer in the docstring of {module}.{owner}")
                if clause.key in keys:
                    problems.append(f"{clause.key}: listed twice")
                keys.add(clause.key)
                clauses.append(clause)
                clauses_of.setdefault(f"{module}.{owner}", []).append(clause)
        for owner in sorted(set(entries) - set(owners)):
            problems.append(f"{module}.{owner}: listed in {data.name}, but not a graded function or class")
    for module in sorted(set(listed) - set(docs)):
        problems.append(f"{module}: listed in {data.name}, but not a graded module (grading/config.py)")

    for test, module, points, cited in _test_markers(root):
        for key in cited:
            if key is None:
                problems.append(f"{test}: @pytest.mark.{MARKER}(...) takes one or more string literals")
                continue
            clause, why = _resolve(key, clauses_of)
            if clause is None:
                problems.append(f"{test}: names an unknown clause {key!r}: {why}")
            elif not points:
                problems.append(f"{test}: pins {clause.key!r} but is not graded (no @pytest.mark.points)")
            elif clause.module != module:
                problems.append(f"{test}: pins {clause.key!r}, but its file grades {module}")
            elif test not in clause.tests:
                clause.tests.append(test)
    for clause in clauses:
        if not clause.tests:
            problems.append(f"{clause.key}: no graded test pins this clause")
    return clauses, problems


def table(clauses: list[Clause], width: int = 100) -> list[str]:
    """The clause -> tests table, one section per part."""
    lines = []
    labels = {p.module: p.label for p in config.PARTS}
    for module in dict.fromkeys(c.module for c in clauses):
        mine = [c for c in clauses if c.module == module]
        pinned = sum(bool(c.tests) for c in mine)
        lines.append(f"part {labels[module]} ({module}): {pinned}/{len(mine)} clauses pinned")
        owner = None
        for c in mine:
            if c.owner != owner:
                owner = c.owner
                lines.append(f"  {module}.{owner}")
            text = c.text if len(c.text) <= width else c.text[: width - 1] + "…"
            lines.append(f"    - {text}")
            for test in c.tests or ["NO TEST"]:
                short = test.replace("tests/hidden/", "hidden/").replace("tests/", "")
                lines.append(f"        {short}")
        lines.append("")
    return lines


def summary(clauses: list[Clause]) -> list[tuple[str, str, int, int]]:
    """Per part: (module, label, clauses, pinned)."""
    labels = {p.module: p.label for p in config.PARTS}
    rows = []
    for module in dict.fromkeys(c.module for c in clauses):
        mine = [c for c in clauses if c.module == module]
        rows.append((module, labels[module], len(mine), sum(bool(c.tests) for c in mine)))
    return rows


def check(root: str | os.PathLike = ".") -> tuple[bool, str]:
    """(ok, detail) for `make verify`: every listed clause is in its docstring and pinned, every marker is known."""
    clauses, problems = load_map(root)
    counts = ", ".join(f"{m} {p}/{n}" for m, _, n, p in summary(clauses))
    return not problems, "\n".join(problems) if problems else f"clauses pinned: {counts}"


def main(args: argparse.Namespace) -> int:
    """The `clauses` subcommand."""
    root = Path(args.root).resolve()
    clauses, problems = load_map(root)
    out = sys.stdout
    if not args.summary:
        for line in table(clauses):
            print(line, file=out)
    print(f"{'Part':<5} {'Module':<12} {'Clauses':>8} {'Pinned':>7}", file=out)
    for module, label, n, pinned in summary(clauses):
        print(f"{label:<5} {module:<12} {n:>8} {pinned:>7}", file=out)
    total = len(clauses)
    print(f"{sum(bool(c.tests) for c in clauses)}/{total} clauses pinned by a graded test", file=out)
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    return 0
