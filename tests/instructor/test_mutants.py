"""`make mutants` (grading/checks/mutants.py): its bad inputs and the list of equivalent mutants (no mutant is run
here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from grading.checks import mutants

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
    assert equivalents, "grading/checks/mutants_equivalent.toml lists the equivalent survivors"
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
    assert not stale, f"entries of grading/checks/mutants_equivalent.toml whose line is gone: {stale}"


def test_shards_of_a_part_split_its_mutants_without_overlap(tmp_path):
    """Each shard inits its own cosmic-ray database (random job ids): the shards must still run every mutant once."""
    from cosmic_ray.work_db import WorkDB, use_db

    (tmp_path / "assignment").mkdir()
    (tmp_path / "assignment" / "toy.py").write_text(
        "def f(a, b):\n    return (a + b) * (a - b) if a < b else a // b\n", encoding="utf-8"
    )
    config = tmp_path / "cosmic-ray.toml"
    config.write_text(mutants._config("toy", [], ["true"], 10.0))
    shards = []
    for k in range(3):
        db = tmp_path / f"session{k}.sqlite"
        subprocess.run(
            [str(Path(sys.executable).parent / "cosmic-ray"), "init", str(config), str(db)], cwd=tmp_path, check=True
        )
        with use_db(str(db), WorkDB.Mode.open) as wdb:
            items = list(wdb.pending_work_items)
            mine, others = mutants.shard_items(items, k, 3)
        describe = lambda item: (item.mutations[0].operator_name, item.mutations[0].occurrence)  # noqa: E731
        assert sorted(map(describe, mine + others)) == sorted(map(describe, items))
        shards.append(set(map(describe, mine)))
    every = set(map(describe, items))
    assert len(every) > 10, f"the toy module should give a dozen mutants or more, got {len(every)}"
    assert set.union(*shards) == every, f"mutants no shard ran: {sorted(every - set.union(*shards))}"
    assert sum(map(len, shards)) == len(every), "some mutants ran in two shards"
