"""The clause-to-test map (`python -m grading clauses`): it holds today, and it fails on each way it could rot."""

import shutil
from pathlib import Path

import pytest

from grading.checks import clauses

ROOT = Path(__file__).resolve().parents[2]
CLAUSE = "a token tied with the k-th one is kept too"


@pytest.fixture
def copy(tmp_path):
    """A copy of what the map reads: assignment/, the graded tests and grading/checks/clauses.txt."""
    shutil.copytree(ROOT / "assignment", tmp_path / "assignment", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__", "instructor"))
    (tmp_path / "grading" / "checks").mkdir(parents=True)
    shutil.copy(ROOT / "grading" / "checks" / "clauses.txt", tmp_path / "grading" / "checks" / "clauses.txt")
    return tmp_path


def _edit(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _problems(root):
    return clauses.load_map(root)[1]


def test_every_listed_clause_is_in_its_docstring_and_pinned():
    found, problems = clauses.load_map(ROOT)
    assert not problems, "\n".join(problems)
    assert len(found) > 100 and all(c.tests for c in found)


def test_a_clause_gone_from_its_docstring_is_reported(copy):
    _edit(copy / "assignment" / "sampling.py", "a token tied with the\n    k-th one is kept too", "ties are kept")
    problems = _problems(copy)
    assert any(CLAUSE in p and "no longer in the docstring" in p for p in problems), problems


def test_a_clause_without_a_test_is_reported(copy):
    _edit(copy / "tests" / "test_sampling.py", f'"sampling.top_k_filter: {CLAUSE}"', '"sampling.greedy: When a row"')
    problems = _problems(copy)
    assert any(CLAUSE in p and "no graded test pins" in p for p in problems), problems


def test_a_marker_naming_no_clause_is_reported(copy):
    _edit(copy / "tests" / "test_sampling.py", f'"sampling.top_k_filter: {CLAUSE}"', '"sampling.top_k_filter: ties"')
    problems = _problems(copy)
    assert any("names an unknown clause 'sampling.top_k_filter: ties'" in p for p in problems), problems


def test_a_graded_function_without_clauses_is_reported(copy):
    _edit(copy / "grading" / "checks" / "clauses.txt", "sampling.greedy\n", "sampling.greedy_renamed\n")
    problems = _problems(copy)
    assert any(p.startswith("sampling.greedy: graded, but") for p in problems), problems
    assert any("sampling.greedy_renamed: listed" in p for p in problems), problems


def test_the_clauses_command_is_listed_and_help_prints():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "grading", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]  # a help string with "100%" once broke argparse's formatting
    assert "clauses" in out.stdout and "verify" in out.stdout
