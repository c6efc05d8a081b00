"""The notebooks: stored without outputs, and run top to bottom on the reference and on a fully stubbed release.

The two runs take about two minutes on two cores; skip them with `pytest -m "not slow"`.
"""

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grading.build import markers, run_notebooks

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = run_notebooks.find_notebooks(ROOT)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not cell.outputs, (
            f"{path.name}: cell {i} is stored with outputs; clear them before committing "
            f"(Jupyter: Edit > Clear Outputs of All Cells, or `jupyter nbconvert --clear-output --inplace {path.name}`)"
        )
        assert cell.execution_count is None, f"{path.name}: cell {i} is stored with an execution count; clear it"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_the_todo_helper(path):
    """The first code cell defines `todo`, so every later cell can turn a stub into a message."""
    nb = nbformat.read(str(path), as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "def todo(" in first.source, f"{path.name}: the first code cell must define the `todo` helper"
    helpers = {
        cell.source
        for cell in (
            next(c for c in nbformat.read(str(p), as_version=4).cells if c.cell_type == "code") for p in NOTEBOOKS
        )
    }
    assert len(helpers) == 1, "every notebook must start with the same setup cell (copy it from 01_tokenization)"


TENSORFLOW_IMPORT = re.compile(r"^\s*(?:import|from)\s+(?:tensorflow|keras)\b", re.M)
ASSIGNMENT_IMPORT = re.compile(r"^\s*(?:import|from)\s+assignment\b", re.M)


def first_imports(nb):
    """Returns (cell, line) of the notebook's first import of `assignment` and of tensorflow/keras (None: none)."""
    found = {}
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for name, pattern in (("assignment", ASSIGNMENT_IMPORT), ("tensorflow", TENSORFLOW_IMPORT)):
            match = pattern.search(cell.source)
            if match and name not in found:
                found[name] = (index, cell.source[: match.start()].count("\n"))
    return found.get("assignment"), found.get("tensorflow")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_assignment_before_tensorflow(path):
    """Importing `assignment` imports TensorFlow with its C++ start-up lines filtered out; importing TensorFlow (or
    Keras) first would print them into the notebook."""
    assignment_at, tensorflow_at = first_imports(nbformat.read(str(path), as_version=4))
    assert assignment_at is not None, f"{path.name} never imports assignment"
    assert tensorflow_at is None or assignment_at < tensorflow_at, (
        f"{path.name} imports tensorflow or keras (code cell {tensorflow_at[0]}, line {tensorflow_at[1] + 1}) before "
        f"assignment (code cell {assignment_at[0]}, line {assignment_at[1] + 1}): import assignment first"
    )


def test_first_imports_sees_tensorflow_imported_before_assignment():
    early = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import os\nimport keras"), nbformat.v4.new_code_cell("import assignment")]
    )
    assert first_imports(early) == ((1, 0), (0, 1))
    late = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("from assignment import rnn\nimport tensorflow")])
    assert first_imports(late) == ((0, 0), (0, 1))


def stubbed_copy(root, dest):
    """Copies what the notebooks need (assignment/, notebooks/, data/) to `dest`, every solution region stubbed."""
    for name in ("notebooks", "data"):
        shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("*.txt", ".ipynb_checkpoints"))
    (dest / "assignment").mkdir(parents=True)
    for path in sorted((root / "assignment").glob("*.py")):
        stubbed, _ = markers.stub_source(path.read_text(encoding="utf-8"), f"assignment/{path.name}")
        (dest / "assignment" / path.name).write_text(stubbed, encoding="utf-8")
    return dest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebooks_run_on_the_reference():
    """`make notebooks`: every notebook runs to the end, and no cell's error is hidden by the todo helper."""
    result = subprocess.run(
        [sys.executable, "-m", "grading.build.run_notebooks"], cwd=ROOT, capture_output=True, text=True, timeout=880
    )
    assert result.returncode == 0, f"make notebooks failed:\n{result.stdout[-8000:]}\n{result.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_notebooks_run_on_stubs_and_name_the_todo(tmp_path):
    """On the release (every function a stub) every notebook still runs to the end, saying which TODO to do."""
    copy = stubbed_copy(ROOT, tmp_path / "release")
    assert not run_notebooks.is_reference(copy)
    said = re.compile(r"Not implemented yet: finish the TODO in assignment/(\w+\.py): ([\w.]+), then re-run")
    for path in run_notebooks.find_notebooks(copy):
        nb, _ = run_notebooks.run_notebook(path, root=copy, timeout=300)  # raises on any error
        messages = run_notebooks.todo_messages(nb)
        named = [said.match(m) for m in messages if m.startswith("Not implemented yet")]
        assert named, f"{path.name}: on the stubs no cell said which TODO to do; messages: {messages}"
        for match in named:
            assert match, f"{path.name}: a TODO message names no function: {messages}"
            module, function = match.groups()
            source = (copy / "assignment" / module).read_text(encoding="utf-8")
            assert f"def {function.split('.')[-1]}(" in source, (
                f"{path.name}: the message names {function} in assignment/{module}, which has no such function"
            )


def test_run_all_reports_a_hidden_failure_on_the_reference(tmp_path, monkeypatch):
    """On the reference, a `todo` message means a notebook hid an error: the run fails and says so."""
    (tmp_path / "assignment").mkdir()
    (tmp_path / "assignment" / "m.py").write_text("def f():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('Not implemented yet: finish the TODO')")])
    nbformat.write(nb, str(tmp_path / "notebooks" / "x.ipynb"))
    stored = (tmp_path / "notebooks" / "x.ipynb").read_bytes()

    def fake_run(path, root, timeout):  # no kernel: the outputs a kernel would have produced
        ran = nbformat.read(str(path), as_version=4)
        ran.cells[0].outputs = [nbformat.v4.new_output("stream", text="Not implemented yet: finish the TODO\n")]
        return ran, 0.1

    monkeypatch.setattr(run_notebooks, "run_notebook", fake_run)
    out = io.StringIO()
    assert run_notebooks.run_all(root=tmp_path, out=out) == 1
    assert "FAIL notebooks/x.ipynb" in out.getvalue() and "hides a real failure" in out.getvalue()
    assert (tmp_path / "notebooks" / "x.ipynb").read_bytes() == stored, "the stored notebook must not be rewritten"


def _course_with_outputs(tmp_path, monkeypatch, module_source, outputs):
    """A one-notebook course whose kernel run (faked) prints `outputs`, one stream text per cell."""
    (tmp_path / "assignment").mkdir()
    (tmp_path / "assignment" / "m.py").write_text(module_source)
    (tmp_path / "notebooks").mkdir()
    cells = [nbformat.v4.new_code_cell(f"# cell {i}") for i in range(len(outputs))]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(tmp_path / "notebooks" / "x.ipynb"))

    def fake_run(path, root, timeout):
        ran = nbformat.read(str(path), as_version=4)
        for cell, (name, text) in zip(ran.cells, outputs):
            cell.outputs = [nbformat.v4.new_output("stream", name=name, text=text)]
        return ran, 0.1

    monkeypatch.setattr(run_notebooks, "run_notebook", fake_run)


REFERENCE = "def f():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n"
STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796024212.169594   14583 port.cc:153] oneDNN custom operations are on.\n"
    "E0000 00:00:1796024214.851918   14583 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
)


def test_run_all_fails_the_reference_when_tensorflow_start_up_lines_show(tmp_path, monkeypatch):
    _course_with_outputs(tmp_path, monkeypatch, REFERENCE, [("stderr", STARTUP), ("stdout", "ok\n")])
    out = io.StringIO()
    assert run_notebooks.run_all(root=tmp_path, out=out) == 1
    assert "FAIL notebooks/x.ipynb" in out.getvalue() and "start-up logging" in out.getvalue(), out.getvalue()
    assert "cuInit" in out.getvalue()


def test_run_all_passes_a_quiet_reference(tmp_path, monkeypatch):
    _course_with_outputs(tmp_path, monkeypatch, REFERENCE, [("stdout", "I0000 is a fine variable name\n")])
    out = io.StringIO()
    assert run_notebooks.run_all(root=tmp_path, out=out) == 0, out.getvalue()


def test_run_all_on_a_release_lists_the_todos_each_notebook_waits_for(tmp_path, monkeypatch):
    said = "Not implemented yet: finish the TODO in assignment/{}, then re-run this cell.\n"
    outputs = [
        ("stdout", said.format("rnn.py: RNNCell.call")),
        ("stdout", said.format("rnn.py: RNNCell.call") + "Skipped: this cell needs `x` from a cell above\n"),
        ("stdout", said.format("lstm.py: lstm_forward")),
    ]
    stub = 'def f():\n    raise NotImplementedError("f: do it (~1 line) — see the TODO above")\n'
    _course_with_outputs(tmp_path, monkeypatch, stub, outputs)
    out = io.StringIO()
    assert run_notebooks.run_all(root=tmp_path, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "release: TODO messages expected" in text
    assert (
        "waiting for 2 TODO(s):\n       assignment/rnn.py: RNNCell.call\n       assignment/lstm.py: lstm_forward\n"
        in text
    )
    assert "next: finish the TODO in assignment/rnn.py: RNNCell.call" in text
