"""`make mutants` (grading/mutants.py): its bad inputs and the list of equivalent mutants (no mutant is run here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from grading import mutants

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "grading", "mutants", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, named",
    [
        (["--only", "nosuchpart"], "nosuchpart"),
        (["--shards", "0"], "--shards 0"),
    ],
)
def test_bad_arguments_are_one_error_line_naming_the_value(args, named, tmp_path):
    proc = _run(*args, "--keep", str(tmp_path / "kept"))
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], lines
    assert not (tmp_path / "kept").exists(), "a refused run writes nothing"


def test_recheck_of_a_file_that_is_not_an_earlier_run_is_refused(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text('{"not": "a run"}')
    proc = _run("--only", "rnn", "--recheck", str(bad), "--keep", str(tmp_path / "kept"))
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and str(bad) in lines[0], lines
    assert not (tmp_path / "kept").exists()


def test_the_equivalent_mutants_file_parses_and_every_entry_says_why():
    equivalents = mutants.load_equivalents(ROOT)
    assert equivalents, "grading/mutants_equivalent.toml lists the equivalent survivors"
    for (module, line, mutant), why in equivalents.items():
        assert (ROOT / "assignment" / f"{module}.py").exists(), module
        assert line != mutant and why.strip(), (module, line)


def test_an_equivalent_entry_still_matches_a_line_of_its_module():
    # An entry whose original line left the module matches no mutant any more and should go (or be re-keyed).
    stale = [
        (module, line)
        for (module, line, _), _ in mutants.load_equivalents(ROOT).items()
        if line not in {row.strip() for row in (ROOT / "assignment" / f"{module}.py").read_text().splitlines()}
    ]
    assert not stale, f"entries of grading/mutants_equivalent.toml whose line is gone: {stale}"
