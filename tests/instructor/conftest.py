"""Fixtures of the instructor tests that exercise the sandbox: a user to run the student's code as, and an
interpreter that user can run (this machine's venv lives under /root, which other users cannot enter)."""

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

RUNNER_USER = "grader-test-runner"  # a user of the tests' own, so no test shares its runner user with a real grader


@pytest.fixture(scope="session")
def runner_user():
    """The name of a dedicated unprivileged user (created when missing); skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        pwd.getpwnam(RUNNER_USER)
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", RUNNER_USER],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            pytest.skip(f"cannot create user {RUNNER_USER}: {created.stderr.strip()}")
    return RUNNER_USER


@pytest.fixture(scope="session")
def unprivileged_python(runner_user):
    """A Python that `runner_user` can run, with this venv's packages: a venv of the system Python of the same
    version, pointed at our site-packages by a .pth file."""
    system = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
    if not system.exists():
        pytest.skip(f"needs {system}")
    base = Path(tempfile.mkdtemp(prefix="grading-test-venv-"))
    try:
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(base / "venv")], check=True)
        site = next((base / "venv" / "lib").glob("python3*/site-packages"))
        (site / "ours.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        os.chmod(base, 0o755)
        python = str(base / "venv" / "bin" / "python")
        probe = subprocess.run([python, "-c", "import pytest, numpy"], user=runner_user, capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"{runner_user} cannot use our packages: {probe.stderr.decode()[-200:]}")
        yield python
    finally:
        shutil.rmtree(base, ignore_errors=True)
