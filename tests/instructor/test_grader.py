"""The grader on a small synthetic course: results.json in Gradescope's schema, and every way a submission can go
wrong (syntax error, crash at import, infinite loop at import or in a test, a crash, huge output, a missing file,
a strange upload layout, edited tests) costing only what it breaks, each with a message that says what happened."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from toy_project import ALPHA, BETA, PARTS, SETTINGS, make_toy

from grading.build import manifest as manifest_builder
from grading.runtime import grade
from grading.runtime.results import MESSAGE_LIMIT, headline

REPO = Path(__file__).resolve().parents[2]
ALPHA_TESTS = 7  # visible and hidden
STATUSES = {"passed", "failed"}
VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}


def check_schema(results):
    """Fails unless `results` is a results.json Gradescope accepts (the fields its autograder spec documents)."""
    assert isinstance(results["score"], (int, float))
    assert isinstance(results["execution_time"], int) and results["execution_time"] >= 0
    assert isinstance(results["output"], str)
    assert results.get("stdout_visibility", "hidden") in VISIBILITIES
    assert isinstance(results["tests"], list) and results["tests"]
    for test in results["tests"]:
        assert set(test) <= {
            "score",
            "max_score",
            "status",
            "name",
            "name_format",
            "number",
            "output",
            "output_format",
            "tags",
            "visibility",
            "extra_data",
        }, set(test)
        assert isinstance(test["name"], str) and test["name"]
        assert isinstance(test["score"], float) and isinstance(test["max_score"], float)
        assert 0 <= test["score"] and (test["score"] <= test["max_score"] or "bonus" in test["tags"])
        assert test["status"] in STATUSES
        assert test["visibility"] in VISIBILITIES
        assert isinstance(test["output"], str)
        assert test["status"] == "passed" or test["score"] == 0
    assert abs(results["score"] - sum(t["score"] for t in results["tests"])) < 1e-9
    json.dumps(results)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = make_toy(tmp_path_factory.mktemp("toy") / "course")
    manifest, problems = manifest_builder.build_manifest(root, parts=PARTS, settings=SETTINGS)
    assert problems == []
    return root, manifest


def submit(course, tmp_path, alpha=ALPHA, beta=BETA, layout="assignment", extra=None):
    """Writes a submission (alpha/beta None = left out) in one of the layouts students upload; returns its folder."""
    sub = tmp_path / "submission"
    folder = {"assignment": sub / "assignment", "flat": sub, "nested": sub / "my-work" / "repo" / "assignment"}[layout]
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("alpha", alpha), ("beta", beta)):
        if text is not None:
            (folder / f"{name}.py").write_text(text)
    for name, text in (extra or {}).items():
        (sub / name).parent.mkdir(parents=True, exist_ok=True)
        (sub / name).write_text(text)
    return sub


def run(course, submission, tmp_path, **kwargs):
    root, manifest = course
    out = tmp_path / "results.json"
    kwargs.setdefault("drop_privileges", False)  # the toy course is ours; the sandbox has tests of its own
    results, result = grade.grade(submission, out, bundle=root, manifest=manifest, log=lambda line: None, **kwargs)
    assert json.loads(out.read_text()) == results
    check_schema(results)
    return {t["extra_data"]["nodeid"].split("::")[1]: t for t in results["tests"]}, results


def by_part(tests, module):
    return [t for t in tests.values() if t["tags"][0] == module]


def visible(tests, module):
    """The visible tests of a part: a hidden test that fails says only that it did not pass."""
    return [t for t in by_part(tests, module) if not t["extra_data"]["hidden"]]


def test_reference_scores_full_marks_with_hidden_and_bonus_tests_marked(course, tmp_path):
    tests, results = run(course, course[0], tmp_path)
    assert all(t["status"] == "passed" for t in tests.values())
    assert results["score"] == 11 and results["extra_data"]["core_score"] == 8
    hidden = tests["test_add_floats_hidden"]
    assert hidden["visibility"] == "after_published" and "[hidden]" in hidden["name"]
    assert all(t["visibility"] == "visible" for name, t in tests.items() if "hidden" not in name)
    bonus = tests["test_mean_of_floats_bonus"]
    assert bonus["max_score"] == 0 and bonus["score"] == 3 and "bonus" in bonus["name"]
    assert sum(t["max_score"] for t in tests.values()) == 8, "bonus points stay out of the total"
    assert tests["test_scaler[2]"]["max_score"] == 0.5, "parametrized cases are graded one by one"
    assert "Part A (alpha): test_add" == tests["test_add"]["name"]
    assert "A     alpha" in results["output"] and "test_add_floats_hidden" not in results["output"]


def test_stubs_score_zero_and_each_test_names_the_function_to_write(course, tmp_path):
    stubbed = tmp_path / "stubbed"
    from grading.build import release

    release.stub_package(course[0], stubbed)
    tests, results = run(course, stubbed, tmp_path)
    assert results["score"] == 0
    assert "Accumulator.push: 1. add x to self.total" in tests["test_accumulator"]["output"]
    assert all("NotImplementedError" in t["output"] for t in tests.values() if not t["extra_data"]["hidden"])
    assert tests["test_add_floats_hidden"]["output"] == "This hidden test did not pass."


def test_syntax_error_fails_only_its_part_with_the_error_shown(course, tmp_path):
    tests, results = run(course, submit(course, tmp_path, alpha=ALPHA.replace("return a + b", "return a +")), tmp_path)
    for t in by_part(tests, "alpha"):
        assert t["status"] == "failed"
        if t["extra_data"]["hidden"]:
            continue
        assert "could not import assignment/alpha.py" in t["output"]
        assert "SyntaxError" in t["output"] and "assignment/alpha.py:9" in t["output"]
        assert "/tmp/" not in t["output"] and "_pytest" not in t["output"], "no grader internals in the message"
    assert all(t["status"] == "passed" for t in by_part(tests, "beta"))
    assert "could not import assignment/alpha.py: SyntaxError" in results["output"]


def test_missing_name_and_crash_at_import_fail_only_their_part(course, tmp_path):
    broken = "from math import no_such_function\n" + ALPHA
    tests, _ = run(course, submit(course, tmp_path, alpha=broken), tmp_path)
    assert all("ImportError: cannot import name 'no_such_function'" in t["output"] for t in visible(tests, "alpha"))
    assert all(t["status"] == "passed" for t in by_part(tests, "beta"))

    crash = BETA + "\nraise RuntimeError('setting up went wrong')\n"
    tests, _ = run(course, submit(course, tmp_path / "2", beta=crash), tmp_path)
    assert all("RuntimeError: setting up went wrong" in t["output"] for t in by_part(tests, "beta"))
    assert all(t["status"] == "passed" for t in by_part(tests, "alpha"))


def test_infinite_loop_at_import_costs_only_its_part(course, tmp_path):
    tests, results = run(course, submit(course, tmp_path, alpha=ALPHA + "\nwhile True:\n    pass\n"), tmp_path)
    for t in visible(tests, "alpha"):
        assert "importing assignment/alpha.py took longer than 3 s" in t["output"]
    assert all(t["status"] == "passed" for t in by_part(tests, "beta"))
    assert results["execution_time"] < 30, "the module is imported once per phase, not once per test"


def test_exit_at_import_costs_only_its_part(course, tmp_path):
    tests, _ = run(course, submit(course, tmp_path, beta=BETA + "\nimport os\nos._exit(0)\n"), tmp_path)
    assert all("importing assignment/beta.py crashed its process" in t["output"] for t in by_part(tests, "beta"))
    assert all(t["status"] == "passed" for t in by_part(tests, "alpha"))


def test_infinite_loop_in_a_test_costs_only_that_test(course, tmp_path):
    looping = ALPHA.replace("return 2 * x", "while True:\n            pass")
    tests, _ = run(course, submit(course, tmp_path, alpha=looping), tmp_path)
    assert tests["test_twice"]["status"] == "failed"
    assert tests["test_twice"]["extra_data"]["outcome"] == "timeout"
    assert "ran longer than its time limit of 4 s" in tests["test_twice"]["output"]
    assert [name for name, t in tests.items() if t["status"] == "failed"] == ["test_twice"]


def test_a_hang_that_ignores_the_alarm_is_killed_and_the_run_goes_on(course, tmp_path):
    hang = ALPHA.replace(
        "return 2 * x",
        "import signal\n        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        while True:\n            pass",
    )
    tests, _ = run(course, submit(course, tmp_path, alpha=hang), tmp_path)
    assert tests["test_twice"]["extra_data"]["outcome"] == "timeout"
    assert "ran longer than its time limit of 4 s" in tests["test_twice"]["output"]
    assert [name for name, t in tests.items() if t["status"] == "failed"] == ["test_twice"]


def test_a_crash_in_a_test_costs_only_that_test(course, tmp_path):
    crashing = ALPHA.replace("return k * x", "import os\n        os.kill(os.getpid(), 11)")
    tests, _ = run(course, submit(course, tmp_path, alpha=crashing), tmp_path)
    failed = sorted(name for name, t in tests.items() if t["status"] == "failed")
    assert failed == ["test_scaler[2]", "test_scaler[3]"]
    assert "crashed the process running it (SIGSEGV" in tests["test_scaler[2]"]["output"]


def test_a_test_that_stops_the_session_costs_only_itself(course, tmp_path):
    stopping = ALPHA.replace("return 2 * x", "raise KeyboardInterrupt")
    tests, _ = run(course, submit(course, tmp_path, alpha=stopping), tmp_path)
    assert [name for name, t in tests.items() if t["status"] == "failed"] == ["test_twice"]
    assert "KeyboardInterrupt" in tests["test_twice"]["output"]


def test_huge_output_is_truncated(course, tmp_path):
    noisy = ALPHA.replace("return a + b", "print('spam ' * 2_000_000)\n    return a - b")
    tests, results = run(course, submit(course, tmp_path, alpha=noisy), tmp_path)
    output = tests["test_add"]["output"]
    assert tests["test_add"]["status"] == "failed" and "expected add(2, 3) 5, got -1" in output
    assert "spam" not in output and len(output) <= MESSAGE_LIMIT + 100, "the runner's output never reaches it"
    assert len(json.dumps(results)) < 100_000


def test_missing_file_is_named_and_costs_only_its_part(course, tmp_path):
    tests, results = run(course, submit(course, tmp_path, beta=None), tmp_path)
    for t in by_part(tests, "beta"):
        assert t["status"] == "failed" and "assignment/beta.py is missing from your submission" in t["output"]
        assert "found only: alpha.py" in t["output"]
    assert all(t["status"] == "passed" for t in by_part(tests, "alpha"))
    assert "missing: assignment/beta.py" in results["output"]


def test_an_empty_submission_fails_every_test_and_says_so(course, tmp_path):
    (tmp_path / "empty").mkdir()
    tests, results = run(course, tmp_path / "empty", tmp_path)
    assert results["score"] == 0
    assert all("no .py file was found at all" in t["output"] for t in tests.values())


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_files_are_found_wherever_the_upload_put_them(course, tmp_path, layout):
    tests, results = run(course, submit(course, tmp_path, layout=layout), tmp_path)
    assert results["extra_data"]["core_score"] == 8


def test_a_zip_inside_the_submission_is_opened(course, tmp_path):
    sub = tmp_path / "submission"
    sub.mkdir()
    with zipfile.ZipFile(sub / "work.zip", "w") as z:
        z.writestr("repo/assignment/alpha.py", ALPHA)
        z.writestr("repo/assignment/beta.py", BETA)
    tests, results = run(course, sub, tmp_path)
    assert results["extra_data"]["core_score"] == 8 and "inside a .zip" in results["output"]


def test_edited_tests_conftest_and_init_in_the_submission_change_nothing(course, tmp_path):
    cheat = "import pytest\n\n@pytest.fixture(autouse=True)\ndef _win():\n    pytest.skip('free points')\n"
    always_pass = "import pytest\n\n@pytest.mark.points(1)\ndef test_add():\n    pass\n"
    sub = submit(
        course,
        tmp_path,
        alpha=ALPHA.replace("return a + b", "return 0"),
        extra={
            "conftest.py": cheat,
            "tests/conftest.py": cheat,
            "tests/test_alpha.py": always_pass,
            "assignment/conftest.py": cheat,
            "assignment/__init__.py": "raise SystemExit('no')\n",
        },
    )
    tests, _ = run(course, sub, tmp_path)
    assert tests["test_add"]["status"] == "failed" and tests["test_twice"]["status"] == "passed"


def test_a_helper_module_of_the_student_is_used(course, tmp_path):
    uses_helper = ALPHA.replace("return a + b", "from assignment.mathhelp import plus\n    return plus(a, b)")
    sub = submit(
        course, tmp_path, alpha=uses_helper, extra={"assignment/mathhelp.py": "def plus(a, b):\n    return a + b\n"}
    )
    tests, results = run(course, sub, tmp_path)
    assert tests["test_add"]["status"] == "passed" and "mathhelp.py" in results["output"]


def test_tests_that_never_ran_still_appear_as_failed(course, tmp_path):
    slow = ALPHA.replace("return a + b", "import time\n    time.sleep(1.5)\n    return a + b")
    tests, results = run(course, submit(course, tmp_path, alpha=slow), tmp_path, total_timeout=2.5)
    assert len(tests) == 10, "every graded test is in results.json"
    assert any(t["extra_data"]["outcome"] == "not_run" for t in tests.values())
    for t in tests.values():
        if t["extra_data"]["outcome"] == "not_run":
            assert "whole test run reached its time limit of 2.5 s" in t["output"] and t["status"] == "failed"


def test_the_reference_of_the_repository_never_answers_for_a_missing_module(course, tmp_path):
    """An editable install maps `assignment` to a repository: the runner must not fall back to it."""
    runner = (REPO / "grading" / "runtime" / "probe_runner.py").read_text()
    assert "isolate(root" in runner
    sub = submit(course, tmp_path, beta=None)
    tests, _ = run(course, sub, tmp_path)
    assert all(t["extra_data"]["outcome"] == "missing" for t in by_part(tests, "beta"))


def test_not_root_runs_unsandboxed_and_says_so_and_root_without_a_user_refuses(course, tmp_path, monkeypatch):
    from grading.runtime import sandbox

    (tmp_path / "m.json").write_text(json.dumps(course[1]))

    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    user, note = sandbox.sandbox_policy(True)
    assert user is None and "unsandboxed" in note
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)
    with pytest.raises(sandbox.SandboxRefused, match="never runs it as root"):
        sandbox.sandbox_policy(True, "no-such-user-here")
    monkeypatch.undo()
    if os.geteuid() == 0:
        with pytest.raises(sandbox.SandboxRefused):
            run(course, course[0], tmp_path, drop_privileges=True, runner_user="no-such-user-here")
        _, results = run(
            course, course[0], tmp_path, drop_privileges=True, runner_user="no-such-user-here", sandbox_required=False
        )
        assert results["extra_data"]["core_score"] == 8 and "unsandboxed, as root" in results["output"]
        out = tmp_path / "refused.json"
        proc = subprocess.run(
            [sys.executable, "-m", "grading", "grade", str(course[0]), "--bundle", str(course[0])]
            + ["--manifest", str(tmp_path / "m.json"), "--out", str(out), "--runner-user", "no-such-user-here"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 3 and "never runs a student's code as root" in json.loads(out.read_text())["output"]


def test_as_root_the_tests_run_as_an_unprivileged_user_who_cannot_touch_the_bundle(
    course, tmp_path, unprivileged_python, runner_user
):
    root, manifest = course
    target = root / "tests" / "PWNED"
    evil = ALPHA.replace(
        "return a + b", f"import os\n    open({str(target)!r}, 'w').write(str(os.getuid()))\n    return a + b"
    )
    results, _ = grade.grade(
        submit(course, tmp_path, alpha=evil),
        None,
        bundle=root,
        manifest=manifest,
        python=unprivileged_python,
        runner_user=runner_user,
        log=lambda line: None,
    )
    tests = {t["extra_data"]["nodeid"].split("::")[1]: t for t in results["tests"]}
    assert results["extra_data"]["user"] == runner_user
    assert not target.exists()
    assert "PermissionError" in tests["test_add"]["output"] and tests["test_twice"]["status"] == "passed"


def test_command_line_writes_results_json(course, tmp_path):
    root, manifest = course
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out" / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grading",
            "grade",
            str(root),
            "--bundle",
            str(root),
            "--manifest",
            str(tmp_path / "manifest.json"),
            "--out",
            str(out),
            "--no-drop-privileges",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    check_schema(json.loads(out.read_text()))
    assert "score: 8 / 8  (+ bonus 3 / 3)" in proc.stdout and "total" in proc.stdout


def test_build_commands_are_not_in_a_student_copy(tmp_path):
    pkg = tmp_path / "grading"
    pkg.mkdir()
    for name in ("__init__.py", "__main__.py"):
        shutil.copy(REPO / "grading" / name, pkg / name)
    shutil.copytree(REPO / "grading" / "runtime", pkg / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    # -S: no site-packages, so no editable install of this repository can supply the missing modules
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "grading", "verify"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "instructor tooling" in proc.stderr


def _patch(name, description, path, old, new, text):
    import difflib

    diff = difflib.unified_diff(
        text.splitlines(True), text.replace(old, new).splitlines(True), f"a/{path}", f"b/{path}"
    )
    return name, description + "\n" + "".join(diff)


def test_verify_proves_the_toy_course_and_reports_what_is_wrong(tmp_path):
    """verify on a toy course with a caught bug, a bug no test catches, and a part without hidden tests."""
    from grading.checks import verify

    root = make_toy(tmp_path / "course")
    for module, (name, text) in {
        "alpha": _patch("minus", "add subtracts.", "assignment/alpha.py", "return a + b", "return a - b", ALPHA),
        "beta": _patch(
            "harmless", "mean sums in another order.", "assignment/beta.py", "sum(xs)", "sum(reversed(xs))", BETA
        ),
    }.items():
        (root / "grading" / "checks" / "bugs" / module).mkdir(parents=True)
        (root / "grading" / "checks" / "bugs" / module / f"{name}.patch").write_text(text)
    # The harmless change is also a correct alternative: as one, it must keep full marks.
    alternatives = root / "grading" / "checks" / "alternatives" / "beta"
    alternatives.mkdir(parents=True)
    bug = root / "grading" / "checks" / "bugs" / "beta" / "harmless.patch"
    (alternatives / "harmless.patch").write_text(bug.read_text())
    lines = []
    report = verify.verify(root, parts=PARTS, settings=SETTINGS, min_bugs=2, min_alternatives=1, log=lines.append)
    output = "\n".join(lines)
    failed = {c.name for c in report.checks if not c.ok}
    assert failed == {
        "the points of each part add up to CONVENTIONS.md",  # beta has no hidden test
        "bug beta/harmless is caught by a test of its part",
        # the toy has no grading/checks/clauses.txt: a course without a clause-to-test map is not proven
        "every docstring clause of the graded code is pinned by a graded test (grading/checks/clauses.txt)",
    }, output
    assert "cannot read the clause list" in output
    assert "alternative beta/harmless keeps full marks on its part" in {c.name for c in report.checks if c.ok}, output
    assert "alpha/minus" in output and "test_add (visible)" in output and "NOT CAUGHT" in output
    assert "graded suite on one CPU" in output and "anonymous" in output
    assert lines[-1] == f"verify: {len(report.checks) - 3} passed, 3 failed"
    assert (root / "assignment" / "alpha.py").read_text() == ALPHA, "bugs are never applied to the working tree"


def test_headline_of_an_error_raised_inside_a_tf_function_is_the_exception_not_the_trace_header():
    inside = (
        'NotImplementedError: in user code:\n\n    File "tests/test_train.py", line 106, in None  *\n'
        "        lambda x, y: train.train_step(model, optimizer, x, y)\n\n"
        "    NotImplementedError: train_step: 1. run the model — see the TODO above\n"
        "tests/test_train.py:107: in test_train_step_lowers_the_loss\n"
    )
    assert headline(inside) == "NotImplementedError: train_step: 1. run the model — see the TODO above"
    plain = "\nAssertionError: loss did not decrease: 2.30 -> 2.31\nassert 2.31 < 2.30\n"
    assert headline(plain) == "AssertionError: loss did not decrease: 2.30 -> 2.31"


def test_a_graded_test_without_the_student_fixture_is_refused_by_name(tmp_path):
    root = make_toy(tmp_path / "course")
    legacy = "import pytest\n\nfrom assignment import beta\n\n\n@pytest.mark.points(1)\ndef test_old_style():\n"
    (root / "tests" / "test_beta_old.py").write_text(legacy + "    assert beta.mean([2]) == 2\n")
    with pytest.raises(manifest_builder.ManifestError, match=r"tests/test_beta_old.py::test_old_style") as info:
        manifest_builder.build_manifest(root, parts=PARTS, settings=SETTINGS)
    assert "`student` fixture" in str(info.value) and "test_mean" not in str(info.value)


LMKIT_OPS = "def double(x):\n    return 2 * x\n"
ALPHA_WITH_LMKIT = ALPHA.replace("return 2 * x", "from lmkit.ops import double\n        return double(x)")


def test_the_runner_imports_the_given_packages_from_the_bundle_never_from_the_submission(tmp_path):
    """lmkit/ (a given package) comes from the grader's own copy; a submission's lmkit/ is ignored."""
    root = make_toy(tmp_path / "course")
    (root / "lmkit").mkdir()
    (root / "lmkit" / "__init__.py").write_text("")
    (root / "lmkit" / "ops.py").write_text(LMKIT_OPS)
    (root / "assignment" / "alpha.py").write_text(ALPHA_WITH_LMKIT)
    manifest, problems = manifest_builder.build_manifest(root, parts=PARTS, settings=SETTINGS)
    assert problems == []
    sub = tmp_path / "submission"
    (sub / "assignment").mkdir(parents=True)
    (sub / "assignment" / "alpha.py").write_text(ALPHA_WITH_LMKIT)
    (sub / "assignment" / "beta.py").write_text(BETA)
    (sub / "lmkit").mkdir()
    (sub / "lmkit" / "__init__.py").write_text("")
    (sub / "lmkit" / "ops.py").write_text("def double(x):\n    return 1000\n")
    (sub / "lmkit" / "beta.py").write_text("def mean(xs):\n    return 0\n")  # named like a graded module
    tests, results = run((root, manifest), sub, tmp_path)
    assert tests["test_twice"]["status"] == "passed", tests["test_twice"]["output"]
    assert results["extra_data"]["core_score"] == 8


def test_a_module_that_replaces_the_runners_probe_dispatch_changes_nothing(course, tmp_path):
    """The runner keeps its own references to `probes.execute` and the wire, taken before the student's module is
    imported: a module that swaps them for a forger still gets its own (unwritten) `add` called."""
    forger = (
        "import sys\n"
        "for _name in ('grading.runtime.probes', 'grading.runtime.wire'):\n"
        "    _module = sys.modules.get(_name)\n"
        "    if _module is not None and hasattr(_module, 'execute'):\n"
        "        _module.execute = lambda request: 5  # the answer test_add expects\n"
    )
    unwritten = ALPHA.replace("return a + b", "raise NotImplementedError('add')")
    tests, _ = run(course, submit(course, tmp_path, alpha=forger + unwritten), tmp_path)
    assert tests["test_add"]["status"] == "failed", tests["test_add"]["output"]
    assert "add" in tests["test_add"]["output"]
