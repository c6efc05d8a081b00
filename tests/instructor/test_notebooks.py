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

from grading import markers, run_notebooks

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
        [sys.executable, "-m", "grading.run_notebooks"], cwd=ROOT, capture_output=True, text=True, timeout=880
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
