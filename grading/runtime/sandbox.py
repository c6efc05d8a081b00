"""Starts and stops the runner (probe_runner.py): an unprivileged process, limited, in a scratch folder of its own.

The judge talks to it through two pipes it creates. Under root the runner is started as a dedicated user (created by
the autograder's setup.sh) with no supplementary groups, no network where the kernel allows a new network
namespace, an almost empty environment and resource limits; when grading ends every process of that user is
killed. Root that cannot drop privileges refuses to run the student's code (SandboxRefused); a non-root user (a
student's own `make grade`) runs it as themselves, unsandboxed, and is told so.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from grading.runtime import wire

RUNNER_USER = os.environ.get("GRADER_RUNNER_USER", "student")  # created by setup.sh; never root, never a real user
STARTUP_TIMEOUT = 300.0  # importing TensorFlow on a slow, shared CPU
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Limits:
    """Resource limits of the runner (setrlimit); its processes together are also bounded by the per-user count."""

    memory: int = 4 * 2**30  # bytes of address space: TensorFlow maps ~1.5 GB; a runaway allocation fails fast
    cpu: int = 900  # CPU seconds of one runner process (the judge's clock stops it much earlier)
    processes: int = 512  # processes and threads of the runner's user (TensorFlow's thread pools count)
    open_files: int = 256
    file_size: int = 64 * 2**20  # bytes any one file it writes may reach


@dataclass(frozen=True)
class RunnerUser:
    uid: int
    gid: int
    name: str


class SandboxRefused(Exception):
    """Root could not start the runner as an unprivileged user: grading stops instead of running code as root."""


class RunnerDied(Exception):
    """The runner exited or closed its pipe (a crash, out of memory, os._exit)."""


class RunnerTimeout(Exception):
    """The runner did not answer in time."""


def find_user(name: str = RUNNER_USER) -> RunnerUser | None:
    """The runner's user, or None when there is no such user (or it is root)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        return None
    return RunnerUser(entry.pw_uid, entry.pw_gid, name)


def kill_user_processes(user: RunnerUser | None) -> None:
    """Kills every process of `user` (a forked helper that becomes the user and signals -1), twice."""
    if user is None or os.geteuid() != 0:
        return
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setgroups([])
                os.setgid(user.gid)
                os.setuid(user.uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(pid, 0)


def install_harness(dest: str | os.PathLike) -> Path:
    """Copies the runner's own code, grading/runtime/ whole (probe_runner.py and what it imports), into
    `dest`/grading/runtime, read-only for the runner."""
    pkg = Path(dest) / "grading"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    shutil.copytree(Path(__file__).parent, pkg / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for dirpath, _dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return Path(dest)


def drop_to(user: RunnerUser | None, limits: Limits, cpu: int | None) -> Callable[[], None]:
    """The `preexec_fn` that runs in the forked child before exec: limits, no network, no groups, then the user's
    uid for good."""

    def preexec():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu, limits.cpu))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
        if user is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
            try:
                ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)  # no network, where the kernel allows it
            except Exception:
                pass
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            if os.getuid() == 0 or os.geteuid() == 0:
                os._exit(97)
        try:  # die with the judge, even when it is killed (set after the uid switch, which clears it)
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except Exception:
            pass

    return preexec


@dataclass
class Sandbox:
    """Where and how runners start: one fresh scratch folder per runner, copied from `package` and the `given`
    packages (root-owned)."""

    python: str
    harness: Path  # holds grading/runtime/ with the runner's code (install_harness)
    package: Path  # the student's assignment/ package, as assembled by the grader
    scratch: Path  # parent of each runner's scratch folder
    given: tuple[Path, ...] = ()  # the grader's own given packages (lmkit/, ...), copied beside assignment/
    user: RunnerUser | None = None  # None: run as the current user (unsandboxed)
    limits: Limits = field(default_factory=Limits)
    cpu: int | None = None
    preimport: tuple[str, ...] = ()
    started: int = 0

    def fresh_folder(self) -> Path:
        """A new scratch folder holding a copy of the package and of the given packages, owned by the runner's user
        (before it runs)."""
        self.started += 1
        folder = Path(self.scratch) / f"run-{self.started}"
        folder.mkdir(mode=0o700)
        shutil.copytree(self.package, folder / "assignment", symlinks=False)
        for given in self.given:
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(given, folder / Path(given).name, symlinks=False, ignore=ignore)
        for name in ("home", "tmp"):
            (folder / name).mkdir()
        if self.user is not None:
            for path, dirs, files in os.walk(folder):
                for name in [path, *(os.path.join(path, d) for d in dirs), *(os.path.join(path, f) for f in files)]:
                    os.lchown(name, self.user.uid, self.user.gid)
        return folder


class Runner:
    """One runner process and its two pipes."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        folder = sandbox.fresh_folder()
        to_runner_r, self.to_runner = os.pipe()
        self.from_runner, from_runner_w = os.pipe()
        env = {
            "HOME": str(folder / "home"),
            "TMPDIR": str(folder / "tmp"),
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "MPLBACKEND": "Agg",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "",
        }
        cmd = [
            sandbox.python,
            "-I",
            "-B",
            str(Path(sandbox.harness) / "grading" / "runtime" / "probe_runner.py"),
            "--root",
            str(folder),
            "--harness",
            str(sandbox.harness),
            "--in",
            str(to_runner_r),
            "--out",
            str(from_runner_w),
            "--preimport",
            ",".join(sandbox.preimport),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_runner_r, from_runner_w),
            start_new_session=True,
            preexec_fn=drop_to(sandbox.user, sandbox.limits, sandbox.cpu),
        )
        os.close(to_runner_r)
        os.close(from_runner_w)
        self.folder = folder
        hello = self._receive(time.monotonic() + STARTUP_TIMEOUT)
        expected_uid = sandbox.user.uid if sandbox.user is not None else os.getuid()
        if not isinstance(hello, dict) or hello.get("uid") != expected_uid:
            self.stop()
            raise SandboxRefused(f"the runner reported uid {hello.get('uid')!r}, expected {expected_uid}")

    def _receive(self, deadline):
        def wait(fd):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RunnerTimeout()

        try:
            return wire.receive(self.from_runner, wait)
        except (EOFError, OSError, wire.WireError) as exc:
            raise RunnerDied(self.exit_reason(), str(exc)) from None

    def exit_reason(self) -> str:
        """How the runner ended: `SIGKILL`, `exit status 1`, ... (waits a moment for it)."""
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit status {code}"

    def call(self, message: object, deadline: float) -> object:
        """Sends `message`, returns the reply; RunnerTimeout past `deadline`, RunnerDied if the runner is gone."""
        try:
            wire.send(self.to_runner, message)
        except OSError:
            raise RunnerDied(self.exit_reason(), "the pipe closed") from None
        return self._receive(deadline)

    def stop(self) -> None:
        """Kills the runner, its process group and every process of the runner's user; removes its folder."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        kill_user_processes(self.sandbox.user)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for fd in (self.to_runner, self.from_runner):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def sandbox_policy(drop_privileges: bool, user_name: str = RUNNER_USER) -> tuple[RunnerUser | None, str]:
    """Returns (user or None, note): who runs the student's code. Raises SandboxRefused when root cannot drop."""
    if not drop_privileges:
        return None, "the student's code ran unsandboxed, as asked (--no-drop-privileges)"
    if os.geteuid() != 0:
        return None, (
            "the student's code ran as you, unsandboxed: fine on your own machine; the autograder runs it as an "
            "unprivileged user"
        )
    user = find_user(user_name)
    if user is None:
        raise SandboxRefused(
            f"there is no unprivileged user {user_name!r} to run the student's code as, and the grader never runs it "
            "as root. Staff: run the bundle's setup.sh (it creates the user), or `useradd --system " + user_name + "`."
        )
    return user, f"the student's code ran as the unprivileged user {user_name!r}"


def python_for(user: RunnerUser | None, python: str = sys.executable) -> str:
    """Fails (SandboxRefused) unless `user` can run `python`: unreadable interpreters would otherwise look like a
    crash of every test."""
    if user is None:
        return python
    try:
        probe = subprocess.run(
            [python, "-I", "-c", "import numpy"],
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=drop_to(user, Limits(), None),
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxRefused(f"the unprivileged user {user.name!r} cannot run {python}: {exc}") from None
    if probe.returncode != 0:
        reason = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        raise SandboxRefused(f"the unprivileged user {user.name!r} cannot run {python}: {reason[0]}")
    return python
