"""The runner's limits on the toy course: a submission past the memory, process or open-file limit loses that test with
a message naming the limit, and the next test passes in a fresh runner; detached processes die with their runner;
two graders on one machine, with the same runner user, never stop each other's runners.

Each limit is tried with a cgroup per runner (skipped where the grader cannot make one: not root, or a read-only
/sys/fs/cgroup) and with rlimits alone (`Limits(cgroup=False)`)."""

import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_grader import course, run, submit  # noqa: F401 - `course` is a fixture
from toy_project import ALPHA, BETA

from grading import config
from grading.runtime import grade, sandbox
from grading.runtime.cgroups import RunnerCgroup

REPO = Path(__file__).resolve().parents[2]
LIMITS_USER = "grader-limits-runner"  # only these tests run as it: no other grader shares its process count
MARKER = "4242.5"  # the argument of the detached `sleep` processes a submission leaves behind

pytestmark = pytest.mark.timeout(300)


def can_make_cgroup():
    group = RunnerCgroup.create(f"grader-runner-probe-{os.getpid()}", 64 * 2**20, 16)
    if group is None:
        return RunnerCgroup.why_not
    group.remove()
    return ""


@pytest.fixture(params=["cgroup", "rlimits"])
def mode(request):
    if request.param == "cgroup":
        why = can_make_cgroup()
        if why:
            pytest.skip(f"the grader cannot make a cgroup here: {why}")
    return request.param


def limits(mode, **values):
    return sandbox.Limits(cgroup=mode == "cgroup", **values)


def in_twice(code):
    """ALPHA with Accumulator.twice (test_twice's function) running `code` first."""
    body = "\n".join("        " + line for line in code.strip().splitlines())
    return ALPHA.replace("        return 2 * x", body + "\n        return 2 * x")


def failed(tests):
    return sorted(name for name, t in tests.items() if t["status"] == "failed")


def sleepers():
    """pids of the `sleep MARKER` processes still alive (zombies are dead)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if cmdline[:2] == [b"sleep", MARKER.encode()] and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="session")
def limits_user():
    """A runner user of these tests alone (created when missing); skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        pwd.getpwnam(LIMITS_USER)
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", LIMITS_USER],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            pytest.skip(f"cannot create user {LIMITS_USER}: {created.stderr.strip()}")
    return LIMITS_USER


def test_the_limits_defaults_are_the_course_config():
    assert sandbox.Limits() == sandbox.Limits.from_settings(config.RUNNER_LIMITS)


ALLOCATE = """
chunks = []
for _ in range(40):
    chunks.append(bytearray(b"x") * (10 * 2**20))  # 400 MB, every page touched
"""


def test_too_much_memory_loses_the_test_with_the_limit_named(course, tmp_path, mode):  # noqa: F811
    tests, _ = run(
        course,
        submit(course, tmp_path, alpha=in_twice(ALLOCATE)),
        tmp_path,
        limits=limits(mode, memory_mb=150, data_mb=300),
    )
    assert failed(tests) == ["test_twice"], {n: tests[n]["output"] for n in failed(tests)}
    limit = "limit 150 MB)" if mode == "cgroup" else "limit 300 MB per process)"
    assert "the runner ran out of memory (" + limit in tests["test_twice"]["output"]
    assert tests["test_twice"]["extra_data"]["outcome"] == "crashed"


FORK_AND_THREADS = f"""
import subprocess, threading
for _ in range(32):
    subprocess.Popen(["sleep", "{MARKER}"], start_new_session=True)
for _ in range(64):
    threading.Thread(target=lambda: sum(range(10**9)), daemon=True).start()
"""


def test_too_many_processes_loses_the_test_and_leaves_no_process_behind(
    course,  # noqa: F811
    tmp_path,
    mode,
    limits_user,
    limits_python,
):
    """32 detached processes and 64 busy threads, past a limit of 24: as the runner user (RLIMIT_NPROC never binds
    root), and the detached ones must be gone when grading ends."""
    root, manifest = course
    python = limits_python
    results, _ = grade.grade(
        submit(course, tmp_path, alpha=in_twice(FORK_AND_THREADS)),
        None,
        bundle=root,
        manifest=manifest,
        python=python,
        runner_user=limits_user,
        limits=limits(mode, processes=24),
        log=lambda line: None,
    )
    tests = {t["extra_data"]["nodeid"].split("::")[1]: t for t in results["tests"]}
    assert failed(tests) == ["test_twice"], {n: tests[n]["output"] for n in failed(tests)}
    assert "the runner started more than 24 processes or threads" in tests["test_twice"]["output"]
    assert sleepers() == [], "a detached process of the runner outlived the grading"


@pytest.fixture(scope="module")
def limits_python(tmp_path_factory):
    """A Python the runner user can run (this machine's venv may live where other users cannot enter): this one,
    or a venv of the system Python pointed at our packages, removed at the end."""
    if not str(Path(sys.executable).resolve()).startswith("/root/"):
        return sys.executable
    system = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
    if not system.exists():
        pytest.skip(f"needs {system}")
    import sysconfig

    base = tmp_path_factory.mktemp("venv")
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(base / "venv")], check=True)
    site = next((base / "venv" / "lib").glob("python3*/site-packages"))
    (site / "ours.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for folder in [base, *base.parents]:
        if folder == Path(tempfile.gettempdir()):
            break
        os.chmod(folder, 0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return str(base / "venv" / "bin" / "python")


OPEN_FILES = """
kept = [open("/dev/null") for _ in range(100)]
"""


def test_too_many_open_files_loses_the_test(course, tmp_path, mode):  # noqa: F811
    tests, _ = run(
        course,
        submit(course, tmp_path, alpha=in_twice(OPEN_FILES)),
        tmp_path,
        limits=limits(mode, open_files=32),
    )
    assert failed(tests) == ["test_twice"], {n: tests[n]["output"] for n in failed(tests)}
    assert "the runner opened more than 32 files" in tests["test_twice"]["output"]


SLOW_ALPHA = ALPHA.replace("    return a + b", "    import time\n    time.sleep(0.4)\n    return a + b").replace(
    "        return 2 * x", "        import time\n        time.sleep(0.4)\n        return 2 * x"
)
SLOW_BETA = BETA.replace("    return max(xs)", "    import time\n    time.sleep(0.4)\n    return max(xs)")
CRASHING_ALPHA = ALPHA.replace("    return a + b", "    import os\n    os._exit(1)").replace(
    "        return k * x", "        import os\n        os._exit(1)"
)


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "rlimits"])
def test_two_graders_at_once_never_stop_each_others_runners(course, tmp_path, cgroup, request):  # noqa: F811
    """Two `python -m grading grade` at once, with the same runner user where the machine allows (root): one
    submission is slow, the other crashes its runner five times (each crash stops a runner). The slow one keeps
    full marks; the crashing one loses exactly its crashed tests."""
    root, manifest = course
    if cgroup and can_make_cgroup():
        pytest.skip(f"the grader cannot make a cgroup here: {can_make_cgroup()}")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    command = [sys.executable]
    user_args = ["--no-drop-privileges"]
    if os.geteuid() == 0:
        request.getfixturevalue("limits_user")
        command = [request.getfixturevalue("limits_python")]
        user_args = ["--runner-user", LIMITS_USER]
    procs = {}
    for name, alpha, beta in (("slow", SLOW_ALPHA, SLOW_BETA), ("crashing", CRASHING_ALPHA, BETA)):
        sub = submit(course, tmp_path / name, alpha=alpha, beta=beta)
        out = tmp_path / f"{name}.json"
        args = [
            "-m",
            "grading",
            "grade",
            str(sub),
            "--bundle",
            str(root),
            "--manifest",
            str(tmp_path / "manifest.json"),
        ]
        args += ["--out", str(out), "--quiet", *user_args] + ([] if cgroup else ["--no-cgroup"])
        procs[name] = (subprocess.Popen(command + args, cwd=REPO, stderr=subprocess.PIPE, text=True), out)
        time.sleep(0.5 if name == "slow" else 0)
    scores = {}
    for name, (proc, out) in procs.items():
        assert proc.wait(timeout=240) == 0, proc.stderr.read()
        results = json.loads(out.read_text())
        tests = {t["extra_data"]["nodeid"].split("::")[1]: t for t in results["tests"]}
        scores[name] = (results["score"], failed(tests))
        assert ("--no-cgroup" in proc.args) == ("no cgroup" in results["output"])
    expected_crashes = ["test_add", "test_add_floats_hidden", "test_add_negative", "test_scaler[2]", "test_scaler[3]"]
    assert scores == {"slow": (11, []), "crashing": (7, expected_crashes)}
