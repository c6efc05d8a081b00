"""The release builder: markers become stubs in every place a region can sit, bad markers are refused with
file:line, and nothing that must stay with the instructor reaches the student release or the autograder bundle."""

import json
import os
import shutil
import stat
import subprocess
import textwrap
import zipfile
from pathlib import Path

import pytest
from toy_project import PARTS, SETTINGS, make_toy

from grading.build import autograder, markers, release
from grading.build import manifest as manifest_builder
from grading.runtime import grade

REPO = Path(__file__).resolve().parents[2]
# grading/runtime/ ships whole, in the release and in the bundle
RUNTIME_FILES = {
    p.relative_to(REPO).as_posix() for p in (REPO / "grading" / "runtime").rglob("*.py") if "__pycache__" not in p.parts
}


def stub(source):
    return markers.stub_source(textwrap.dedent(source), "mod.py")


def run_stub(source, call):
    """Executes the stubbed module and returns the NotImplementedError message of `call` (a lambda of the namespace)."""
    stubbed, _ = stub(source)
    namespace = {}
    exec(compile(stubbed, "mod.py", "exec"), namespace)
    with pytest.raises(NotImplementedError) as info:
        call(namespace)
    return str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# Markers and stubs


def test_function_region_becomes_a_stub_keeping_signature_docstring_todo_and_scaffolding():
    source = '''
    def causal_mask(seq_len, *, dtype=bool):
        """Returns the (T, T) mask."""
        if seq_len < 1:
            raise ValueError("seq_len must be positive")
        # TODO: allow position i to attend to positions j <= i (~1 line)
        # BEGIN SOLUTION
        mask = make(seq_len)
        mask = mask & mask
        # END SOLUTION
        return mask
    '''
    stubbed, regions = stub(source)
    assert stubbed == textwrap.dedent('''
    def causal_mask(seq_len, *, dtype=bool):
        """Returns the (T, T) mask."""
        if seq_len < 1:
            raise ValueError("seq_len must be positive")
        # TODO: allow position i to attend to positions j <= i (~1 line)
        raise NotImplementedError("causal_mask: allow position i to attend to positions j <= i (~1 line) — see the TODO above")
        return mask
    ''')
    assert [(r.begin, r.end, r.qualname) for r in regions] == [(7, 10, "causal_mask")]


def test_methods_decorators_nested_functions_and_blocks_get_qualified_names_and_their_indentation():
    source = '''
    import functools

    class Model:
        def call(self, x):
            """Forward pass."""
            # TODO: 1. project x
            #       2. return it (~2 lines)
            # BEGIN SOLUTION
            y = x * 2
            return y
            # END SOLUTION

        @staticmethod
        @functools.lru_cache(maxsize=None)
        def helper(n):
            # TODO: square n
            # BEGIN SOLUTION
            return n * n
            # END SOLUTION

        def branch(self, flag):
            if flag:
                # TODO: the true branch
                # BEGIN SOLUTION
                return 1
                # END SOLUTION
            return 0


    def outer(k):
        def inner(x):
            # TODO: scale by k
            # BEGIN SOLUTION
            return k * x
            # END SOLUTION
        return inner


    async def fetch():
        # TODO: wait
        # BEGIN SOLUTION
        return 3
        # END SOLUTION
    '''
    stubbed, regions = stub(source)
    assert [r.qualname for r in regions] == ["Model.call", "Model.helper", "Model.branch", "outer.inner", "fetch"]
    assert [r.indent for r in regions] == [" " * 8, " " * 8, " " * 12, " " * 8, " " * 4]
    assert "BEGIN" not in stubbed and "y = x * 2" not in stubbed
    assert "        #       2. return it (~2 lines)\n" in stubbed  # every TODO line stays
    assert "        return 0\n" in stubbed  # scaffolding after a region stays
    # The stubbed module runs, and each stub names its function and the first TODO line.
    assert run_stub(source, lambda ns: ns["Model"]().call(1)) == "Model.call: 1. project x … — see the TODO above"
    assert run_stub(source, lambda ns: ns["Model"].helper(2)).startswith("Model.helper: square n")
    assert run_stub(source, lambda ns: ns["Model"]().branch(True)).startswith("Model.branch: the true branch")
    assert run_stub(source, lambda ns: ns["outer"](2)(3)).startswith("outer.inner: scale by k")
    namespace = {}
    exec(stubbed, namespace)
    assert namespace["Model"]().branch(False) == 0, "code outside the region still runs"


def test_region_without_todo_points_to_the_docstring():
    stubbed, regions = stub('''
    def f():
        """Does f."""
        # BEGIN SOLUTION
        return 1
        # END SOLUTION
    ''')
    assert regions[0].first_todo is None
    assert 'raise NotImplementedError("f: not implemented yet — see the docstring above")' in stubbed


def test_quotes_and_backslashes_in_the_todo_make_a_valid_string():
    source = """
    def f():
        # TODO: write "\\ufffd" for 'unknown' ids
        # BEGIN SOLUTION
        return 1
        # END SOLUTION
    """
    assert run_stub(source, lambda ns: ns["f"]()) == "f: write \"\\ufffd\" for 'unknown' ids — see the TODO above"


@pytest.mark.parametrize(
    "source, line, words",
    [
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n", 2, "never closed"),
        ("def f():\n    return 1\n    # END SOLUTION\n", 3, "without a matching"),
        (
            "def f():\n    # BEGIN SOLUTION\n    x = 1\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n",
            4,
            "nested",
        ),
        ("# BEGIN SOLUTION\nX = 1\n# END SOLUTION\n", 1, "module level"),
        ("class A:\n    # BEGIN SOLUTION\n    x = 1\n    # END SOLUTION\n", 2, "class A"),
        (
            "def f():\n    class B:\n        # BEGIN SOLUTION\n        y = 2\n        # END SOLUTION\n    return B\n",
            3,
            "class B",
        ),
        ("def f():\n    x = 1  # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n", 2, "whole-line"),
        ("def f():\n    #BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n", 2, "malformed"),
        ("def f():\n    # end solution\n    return 1\n", 2, "malformed"),
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n  # END SOLUTION\n", 4, "indented differently"),
        (
            "def f():\n    x = g(\n        # BEGIN SOLUTION\n        1,\n        # END SOLUTION\n    )\n    return x\n",
            3,
            "cuts a statement",
        ),
        ("def f():\n    # BEGIN SOLUTION\n    # END SOLUTION\n    return 1\n", 2, "empty"),
        (
            "def f():\n    if True:\n        # BEGIN SOLUTION\n        x = 1\n    # END SOLUTION\n    return x\n",
            5,
            "indented differently",
        ),
    ],
    ids=[
        "unclosed",
        "unopened",
        "nested",
        "module",
        "class",
        "class-in-function",
        "trailing",
        "no-space",
        "lowercase",
        "end-indent",
        "inside-call",
        "empty",
        "dedented-end",
    ],
)
def test_bad_markers_are_refused_naming_file_and_line(source, line, words):
    with pytest.raises(markers.MarkerError) as info:
        markers.stub_source(source, "assignment/bad.py")
    assert str(info.value).startswith(f"assignment/bad.py:{line}: "), str(info.value)
    assert words in str(info.value)


def test_marker_text_in_a_string_is_not_a_marker_but_is_caught_as_a_leak(tmp_path):
    source = 'def f():\n    """Write # BEGIN SOLUTION yourself."""\n    return 1\n'
    stubbed, regions = markers.stub_source(source, "m.py")
    assert regions == [] and stubbed == source
    (tmp_path / "m.py").write_text(stubbed)
    assert any("marker text" in leak for leak in release.leak_scan(tmp_path, set()))


# ----------------------------------------------------------------------------------------------------------------
# The release of a small synthetic course


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = make_toy(tmp_path_factory.mktemp("toy") / "course")
    manifest, problems = manifest_builder.build_manifest(root, parts=PARTS, settings=SETTINGS)
    assert problems == []
    return root, manifest


@pytest.fixture(scope="module")
def toy_release(toy, tmp_path_factory):
    root, manifest = toy
    out = tmp_path_factory.mktemp("release") / "student"
    build = release.build_student(root, out, zip_path=out.with_suffix(".zip"), manifest=manifest)
    return build


def test_release_holds_the_stubbed_package_visible_tests_and_its_own_tooling(toy_release):
    out = toy_release.out
    files = set(toy_release.files)
    assert {
        "assignment/__init__.py",
        "assignment/alpha.py",
        "assignment/beta.py",
        "tests/conftest.py",
        "tests/checks.py",
        "tests/reference_beta.py",
        "tests/test_alpha.py",
        "tests/test_beta.py",
        "tests/test_beta_extensions.py",
        "notebooks/walkthrough.ipynb",
        "data/corpora.json",
        "README.md",
        "Makefile",
        "pyproject.toml",
        ".gitignore",
        "grading/__init__.py",
        "grading/__main__.py",
        "grading/build/__init__.py",
        "grading/build/run_notebooks.py",
        "grading/build/submission.py",
        "grading/manifest.json",
    } | RUNTIME_FILES == files
    alpha = (out / "assignment" / "alpha.py").read_text()
    assert "return a + b" not in alpha and "SOLUTION" not in alpha
    assert 'raise NotImplementedError("add: add the two numbers (~1 line) — see the TODO above")' in alpha
    manifest = json.loads((out / "grading" / "manifest.json").read_text())
    assert manifest["tests"] and not any(t["hidden"] for t in manifest["tests"])
    notebook = json.loads((out / "notebooks" / "walkthrough.ipynb").read_text())
    assert notebook["cells"][0]["outputs"] == [] and notebook["cells"][0]["execution_count"] is None
    readme = (out / "README.md").read_text()
    assert "`Accumulator.push`: 1. add x to self.total" in readme and "| A | `assignment/alpha.py` |" in readme
    assert "make grade" in (out / "Makefile").read_text() and "make test" in (out / "Makefile").read_text()
    with zipfile.ZipFile(out.with_suffix(".zip")) as z:
        assert sorted(n.split("/", 1)[1] for n in z.namelist()) == sorted(files)


def test_release_grades_itself_with_make_grade_path(toy_release, tmp_path):
    out = toy_release.out
    manifest = grade.shipped_manifest(bundle=out)
    results, _ = grade.grade(
        out, tmp_path / "r.json", manifest=manifest, bundle=out, drop_privileges=False, log=lambda line: None
    )
    assert results["score"] == 0 and len(results["tests"]) == 9
    assert all("NotImplementedError" in e["output"] for e in results["tests"])
    assert all(e["visibility"] == "visible" for e in results["tests"])


# Every command the release's files tell a student to run: its Makefile must have them all.
STUDENT_TARGETS = {"install", "test", "grade", "submission", "train", "generate", "tensorboard", "compare", "data"}
STUDENT_TARGETS |= {"notebooks", "lab", "help", "clean"}


def test_release_makefile_has_every_target_its_files_name(toy_release):
    out = toy_release.out
    targets = release.make_targets(out / "Makefile")
    assert STUDENT_TARGETS <= targets, f"the release's Makefile lacks {sorted(STUDENT_TARGETS - targets)}"
    named = set()
    for path in (p for p in out.rglob("*") if p.is_file()):
        for line in release._text_lines(path):
            named |= set(release.MAKE_IN_BACKTICKS.findall(line))
    named |= set(release.MAKE_COMMAND_LINE.findall((out / "README.md").read_text()))
    assert {"test", "grade", "submission", "notebooks", "lab", "train"} <= named, "the README names its commands"
    assert named <= targets, f"the release names make targets its Makefile lacks: {sorted(named - targets)}"
    assert release.reference_scan(out) == []


def test_make_submission_zips_exactly_the_graded_files(toy_release, tmp_path):
    """`make submission` in a student's folder full of other things: the zip holds the graded modules only."""
    import shutil
    import sys

    folder = tmp_path / "student"
    shutil.copytree(toy_release.out, folder)
    (folder / ".venv").mkdir()
    (folder / ".venv" / ".installed").touch()  # `make install` done: make must not build a venv here
    (folder / ".venv" / "big.bin").write_bytes(b"0" * 1000)
    (folder / "runs" / "main").mkdir(parents=True)
    (folder / "runs" / "main" / "ckpt").write_text("weights")
    (folder / "assignment" / "helpers_scratch.py").write_text("x = 1\n")
    (folder / "notes.md").write_text("my notes\n")
    run = subprocess.run(
        ["make", "submission", f"PY={sys.executable}"], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"make submission failed:\n{run.stdout}\n{run.stderr}"
    with zipfile.ZipFile(folder / "submission.zip") as z:
        names = sorted(z.namelist())
        assert names == ["assignment/alpha.py", "assignment/beta.py"], f"submission.zip holds {names}"
        assert z.read("assignment/alpha.py") == (folder / "assignment" / "alpha.py").read_bytes()
    assert "assignment/alpha.py" in run.stdout and "TODO not done yet: add" in run.stdout, run.stdout
    assert "submission.zip" in (folder / ".gitignore").read_text()


def _broken_course(toy, tmp_path, edit):
    """A copy of the toy course with one edit applied by `edit(root)`."""
    import shutil

    root = tmp_path / "course"
    shutil.copytree(toy[0], root)
    edit(root)
    return root


@pytest.mark.parametrize(
    "where, text, expected",
    [
        ("notebooks/walkthrough.ipynb", None, "a line of the reference solution"),
        ("data/notes.txt", "total_of_values = sum(xs)\n", "a line of the reference solution"),
        ("data/notes.txt", "see # END SOLUTION\n", "marker text"),
        ("tests/checks.py", "# like test_add_floats_hidden\n", "names a hidden test"),
    ],
    ids=["solution-in-notebook", "solution-in-data", "marker-text", "hidden-name"],
)
def test_leaks_stop_the_build(toy, tmp_path, where, text, expected):
    def edit(root):
        path = root / where
        if text is None:  # a notebook cell that spells out the solution
            nb = json.loads(path.read_text())
            nb["cells"][0]["source"].append("\nresult = total_of_values / len(xs)")
            path.write_text(json.dumps(nb))
        else:
            path.write_text(path.read_text() + text if path.exists() else text)

    root = _broken_course(toy, tmp_path, edit)
    with pytest.raises(release.BuildError) as info:
        release.build_student(root, tmp_path / "out", manifest=toy[1], check_import=False)
    assert f"{where}:" in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(
    "where, text, expected",
    [
        ("data/notes.txt", "then run `make frobnicate`\n", "names `make frobnicate`, which the release's Makefile"),
        ("tests/checks.py", "# see CONVENTIONS.md for the rules\n", "names CONVENTIONS.md, which the release does not"),
        (
            "tests/checks.py",
            "# as in ../course-notes/DESIGN.md\n",
            "names ../course-notes/DESIGN.md, which the release does not",
        ),
        ("tests/checks.py", "# bench/bench_x.py measures it\n", "names bench/bench_x.py, which the release does not"),
        ("notebooks/walkthrough.ipynb", None, "names `make train-all`, which the release's Makefile does not have"),
    ],
    ids=["make-target", "document", "outside-the-repository", "unshipped-script", "target-in-notebook"],
)
def test_a_release_naming_what_it_does_not_ship_is_refused(toy, tmp_path, where, text, expected):
    def edit(root):
        path = root / where
        if text is None:
            nb = json.loads(path.read_text())
            nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["Then `make train-all`."]})
            path.write_text(json.dumps(nb))
        else:
            path.write_text(path.read_text() + text if path.exists() else text)

    root = _broken_course(toy, tmp_path, edit)
    with pytest.raises(release.BuildError) as info:
        release.build_student(root, tmp_path / "out", manifest=toy[1], check_import=False)
    assert f"{where}:" in str(info.value) and expected in str(info.value), str(info.value)


def test_leak_scan_flags_files_that_must_not_ship(tmp_path):
    for name in (
        "tests/hidden/test_x_hidden.py",
        "tests/instructor/test_y.py",
        "grading/checks/verify.py",
        "grading/checks/bugs/x/y.patch",
        "grading/build/release.py",
        "grading/config.py",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    leaks = "\n".join(release.leak_scan(tmp_path, set()))
    for name in (
        "tests/hidden/test_x_hidden.py: hidden",
        "tests/instructor/test_y.py: instructor",
        "grading/checks/verify.py: grading internals",
        "grading/checks/bugs/x/y.patch",
        "grading/build/release.py: grading internals",
        "grading/config.py: grading internals",
    ):
        assert name in leaks


def test_unbalanced_marker_stops_the_build_naming_file_and_line(toy, tmp_path):
    def edit(root):
        path = root / "assignment" / "beta.py"
        path.write_text(path.read_text().replace("min(xs)\n    # END SOLUTION\n", "min(xs)\n"))

    root = _broken_course(toy, tmp_path, edit)
    with pytest.raises(release.BuildError, match=r"assignment/beta.py:19: '# BEGIN SOLUTION' is never closed"):
        release.build_student(root, tmp_path / "out", manifest=toy[1], check_import=False)


def test_a_stub_module_that_does_not_import_stops_the_build(toy, tmp_path):
    def edit(root):
        path = root / "assignment" / "beta.py"
        path.write_text(path.read_text() + "\nDEFAULT = spread([1, 2])  # runs a region at import time\n")

    root = _broken_course(toy, tmp_path, edit)
    with pytest.raises(release.BuildError) as info:
        release.build_student(root, tmp_path / "out", manifest=toy[1])
    assert "assignment.beta does not import" in str(info.value) and "NotImplementedError: spread" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# The autograder bundle


def test_autograder_bundle_has_gradescope_scripts_all_tests_and_no_reference(toy, tmp_path):
    root, manifest = toy
    out = tmp_path / "autograder"
    autograder.build_autograder(root, out, zip_path=tmp_path / "autograder.zip", manifest=manifest)
    with zipfile.ZipFile(tmp_path / "autograder.zip") as z:
        names = set(z.namelist())
        modes = {i.filename: (i.external_attr >> 16) for i in z.infolist()}
    assert {
        "setup.sh",
        "run_autograder",
        "requirements.txt",
        "tests/hidden/test_alpha_hidden.py",
        "tests/test_alpha.py",
        "grading/manifest.json",
        "grading/__main__.py",
        "assignment/alpha.py",
    } | RUNTIME_FILES <= names
    assert not any(
        n.startswith(("tests/instructor", "grading/checks", "grading/build")) or n.endswith(("verify.py", "release.py"))
        for n in names
    )
    for script in ("setup.sh", "run_autograder"):
        assert modes[script] & stat.S_IXUSR, f"{script} must be executable in the zip"
        check = subprocess.run(["bash", "-n", str(out / script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script} is not valid bash: {check.stderr}"
    assert "return a + b" not in (out / "assignment" / "alpha.py").read_text()
    assert any(t["hidden"] for t in json.loads((out / "grading" / "manifest.json").read_text())["tests"])
    requirements = (out / "requirements.txt").read_text()
    assert "tensorflow-cpu==" in requirements and "pytest-timeout" in requirements
    run = (out / "run_autograder").read_text()
    assert "grading grade /autograder/submission --out /autograder/results/results.json" in run
    setup = (out / "setup.sh").read_text()
    assert "python3 -m venv /autograder/venv" in setup and "useradd" in setup


# ----------------------------------------------------------------------------------------------------------------
# The real course


@pytest.mark.slow
def test_the_real_course_builds_a_release_and_a_bundle(tmp_path):
    """Every module of the repository stubs, parses and imports, and nothing leaks (what `make student` checks)."""
    if not any("BEGIN SOLUTION" in p.read_text() for p in (REPO / "assignment").glob("*.py")):
        pytest.skip("no solution regions in the repository yet")
    manifest, problems = manifest_builder.build_manifest(REPO)
    build = release.build_student(REPO, tmp_path / "student", manifest=manifest)
    assert sum(len(r) for r in build.regions.values()) > 0
    assert not any(name.startswith("tests/hidden") for name in build.files)
    shared = {"tests/checks.py", "tests/reference_transformer.py", "tests/reference_recurrent.py"}
    assert shared <= set(build.files), f"the visible tests import them; missing: {sorted(shared - set(build.files))}"
    package = {
        p.relative_to(REPO).as_posix() for p in (REPO / "assignment").rglob("*.py") if "__pycache__" not in p.parts
    }
    assert package <= set(build.files), f"subpackages ship whole; missing: {sorted(package - set(build.files))}"
    autograder.build_autograder(REPO, tmp_path / "autograder", manifest=manifest, check_import=False)
    assert os.access(tmp_path / "autograder" / "run_autograder", os.X_OK)
    assert all((tmp_path / "autograder" / name).is_file() for name in shared)


def test_the_given_packages_ship_whole_in_the_release_and_the_bundle(toy, tmp_path):
    root = tmp_path / "course"
    shutil.copytree(toy[0], root)
    (root / "lmkit" / "layers").mkdir(parents=True)
    (root / "lmkit" / "__init__.py").write_text('"""Given building blocks."""\n')
    (root / "lmkit" / "layers" / "__init__.py").write_text("def dense(x):\n    return x\n")
    build = release.build_student(root, tmp_path / "student", manifest=toy[1], check_import=False)
    assert {"lmkit/__init__.py", "lmkit/layers/__init__.py"} <= set(build.files)
    assert '"lmkit", "lmkit.layers"' in (tmp_path / "student" / "pyproject.toml").read_text()
    autograder.build_autograder(root, tmp_path / "autograder", manifest=toy[1], check_import=False)
    assert (tmp_path / "autograder" / "lmkit" / "layers" / "__init__.py").exists()
    assert not (tmp_path / "autograder" / "lmrun").exists(), "a given package the course lacks is skipped"
