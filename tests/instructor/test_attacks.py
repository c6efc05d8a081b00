"""The attack suite (grading/checks/attacks.py) against the real grader: every hostile submission scores 0 and
leaks nothing; and the forgery that patches pytest, which would win 20 points were the test run in the student's
process, wins nothing from the judge."""

import shutil
from pathlib import Path

import pytest

from grading.build import manifest as manifest_builder
from grading.build import release
from grading.checks import attacks

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


JUDGED_TEST = """
import pytest


@pytest.mark.points(20)
def test_greedy(student):
    assert student.call("sampling.greedy", [[0.0, 1.0], [2.0, 1.0]]).tolist() == [1, 0]
"""


def test_the_judge_stops_a_forgery_of_pytest(stub_root, tmp_path, runner_user, unprivileged_python):
    """A one-test course whose test takes `student`: patching pytest from the student's code forges nothing, since
    the judge, not the student's process, runs the test (a test without `student` is refused when the manifest is
    built: tests/instructor/test_grader.py)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "assignment", bundle / "assignment")
    (bundle / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", bundle / "tests" / "conftest.py")
    (bundle / "tests" / "test_sampling.py").write_text(JUDGED_TEST)
    built, problems = manifest_builder.build_manifest(bundle, log=lambda line: None)
    assert problems == [] and built["judged"] == ["tests/test_sampling.py"]
    attack = next(a for a in attacks.ATTACKS if a.name == "patch_pytest")
    outcome = attacks.run_attack(attack, bundle, built, stub_root, python=unprivileged_python, runner_user=runner_user)
    assert outcome.blocked and outcome.score == 0, outcome.problems
