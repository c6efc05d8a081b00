"""Imports go one way: lmkit <- assignment <- lmrun, and grading's runtime <- build <- checks; no circle anywhere.

Every `import` of the project's packages is read from the source with `ast`, wherever it stands: at the top of a
module, inside a function, under `if TYPE_CHECKING:`, and `importlib.import_module("...")` / `__import__("...")`
with a literal name. An import moved inside a function to dodge a circle is still a circle here.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lmkit", "assignment", "lmrun", "grading")
# The layers of the course code, lowest first: a module may import its own layer and those below, never above.
LAYERS = {"lmkit": 0, "assignment": 1, "lmrun": 2}
# grading's layers: runtime (shipped whole: it can import nothing else) <- the course config and build <- checks <-
# the verbs of `python -m grading`
GRADING_LAYERS = {"runtime": 0, "config": 1, "build": 1, "checks": 2}
GRADED = {"__init__", "preprocess", "rnn", "lstm", "sampling", "transformer", "train"}


def module_name_under(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name_under(ROOT, p): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if "templates" not in p.parts and "__pycache__" not in p.parts
    }


def resolve(name: str, modules) -> str | None:
    """The most specific project module `name` refers to (`lmkit.loop.train` -> `lmkit.loop`), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules) -> list[tuple[str, int]]:
    """Returns `(imported project module, line)` for every import in `path`, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        for name in names:
            target = resolve(name, modules)
            if target is not None and target != module:
                found.append((target, node.lineno))
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    modules = project_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph) -> list[str] | None:
    """Returns one circle of modules `[a, b, ..., a]`, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target, _ in graph.get(node, ()):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layer(module: str) -> tuple[str, int] | None:
    top, _, rest = module.partition(".")
    if top in LAYERS:
        return "course", LAYERS[top]
    if top == "grading":
        sub = rest.partition(".")[0]
        return "grading", GRADING_LAYERS.get(sub, len(GRADING_LAYERS))
    return None


def upward_imports(graph) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        here = layer(module)
        for target, line in targets:
            there = layer(target)
            if here is None or there is None:
                continue
            if here[0] != there[0]:
                problems.append(f"{module} (line {line}) imports {target}: the course code and grading never mix")
            elif there[1] > here[1]:
                problems.append(f"{module} (line {line}) imports {target}, a layer above it")
    return problems


def test_no_import_circle_counting_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_only_go_down_the_layers():
    problems = upward_imports(import_graph())
    assert not problems, "imports that go up a layer:\n" + "\n".join(problems)


def test_assignment_holds_the_six_graded_files_and_nothing_else_of_python():
    found = {p.relative_to(ROOT / "assignment").with_suffix("").as_posix() for p in (ROOT / "assignment").rglob("*.py")}
    assert found == GRADED, f"assignment/ must hold only the graded files; also found {sorted(found - GRADED)}"


@pytest.mark.parametrize(
    "sources, expected",
    [
        # a circle hidden inside a function and under TYPE_CHECKING
        (
            {
                "lmkit/__init__.py": "",
                "lmkit/a.py": "def f():\n    from lmkit import b\n",
                "lmkit/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lmkit.a import f\n",
            },
            "circle",
        ),
        # a building block reaching up into a graded file, by importlib
        (
            {
                "lmkit/__init__.py": "",
                "lmkit/a.py": "import importlib\nm = importlib.import_module('assignment.rnn')\n",
                "assignment/__init__.py": "",
                "assignment/rnn.py": "",
            },
            "upward",
        ),
        # a relative import of a program from a graded file
        (
            {"assignment/__init__.py": "", "assignment/rnn.py": "from ..lmrun import cli\n", "lmrun/cli.py": ""},
            "upward",
        ),
        # grading's runtime importing its build side
        (
            {"grading/runtime/grade.py": "from grading.build import manifest\n", "grading/build/manifest.py": ""},
            "upward",
        ),
        # downward imports only: clean
        (
            {"lmkit/a.py": "", "assignment/rnn.py": "from lmkit import a\n", "lmrun/cli.py": "import assignment.rnn\n"},
            None,
        ),
    ],
)
def test_the_checks_catch_what_they_promise(sources, expected, tmp_path):
    for name, text in sources.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    modules = {module_name_under(tmp_path, tmp_path / n): tmp_path / n for n in sources}
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    found = "circle" if find_cycle(graph) else "upward" if upward_imports(graph) else None
    assert found == expected
