"""The attack suite (grading/attacks.py) against the real grader: every hostile submission scores 0 and leaks
nothing; and the suite itself sees a forgery when the tests run in the student's process (the legacy mode)."""

import shutil
from pathlib import Path

import pytest

from grading import attacks, release
from grading import manifest as manifest_builder

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stub")
    release.stub_package(REPO, root)
    return root


@pytest.fixture(scope="module")
def manifest():
    built, problems = manifest_builder.build_manifest(REPO, log=lambda line: None)
    assert problems == []
    assert any(f.startswith(f"tests/test_{attacks.TARGET}") for f in built["judged"]), "the target must be judged"
    return built


@pytest.mark.timeout(600)  # grades a submission end to end: seconds on a quiet machine, minutes on a loaded one
@pytest.mark.parametrize("attack", attacks.ATTACKS, ids=[a.name for a in attacks.ATTACKS])
def test_attack_is_blocked(attack, manifest, stub_root, runner_user, unprivileged_python):
    attacks.make_canary()
    outcome = attacks.run_attack(attack, REPO, manifest, stub_root, python=unprivileged_python, runner_user=runner_user)
    assert outcome.blocked, f"{attack.name} ({attack.what}): {outcome.problems}"


LEGACY_TEST = """
import numpy as np
import pytest

from assignment import sampling


@pytest.mark.points(20)
def test_greedy():
    assert np.asarray(sampling.greedy(np.array([[0.0, 1.0], [2.0, 1.0]]))).tolist() == [1, 0]
"""

JUDGED_TEST = """
import pytest


@pytest.mark.points(20)
def test_greedy(student):
    assert student.call("sampling.greedy", [[0.0, 1.0], [2.0, 1.0]]).tolist() == [1, 0]
"""


@pytest.mark.parametrize("style", ["legacy", "judged"])
def test_the_suite_sees_a_forgery_and_the_judge_stops_it(style, stub_root, tmp_path, runner_user, unprivileged_python):
    """The same one-test course, its test written both ways: patching pytest forges 20 points when the test runs in
    the student's process, and nothing when the judge runs it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "assignment", bundle / "assignment")
    (bundle / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", bundle / "tests" / "conftest.py")
    (bundle / "tests" / "test_sampling.py").write_text(LEGACY_TEST if style == "legacy" else JUDGED_TEST)
    built, problems = manifest_builder.build_manifest(bundle, log=lambda line: None)
    assert problems == [] and (built["judged"] == []) == (style == "legacy")
    attack = next(a for a in attacks.ATTACKS if a.name == "patch_pytest")
    outcome = attacks.run_attack(attack, bundle, built, stub_root, python=unprivileged_python, runner_user=runner_user)
    if style == "legacy":
        assert not outcome.blocked and outcome.score == 20, outcome.problems
    else:
        assert outcome.blocked, outcome.problems
