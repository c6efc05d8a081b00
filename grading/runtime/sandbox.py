"""Starts and stops the runner (probe_runner.py): an unprivileged process, limited, in a scratch folder of its own.

The judge talks to it through two pipes it creates. Under root the runner is started as a dedicated user (created by
the autograder's setup.sh) with no supplementary groups, no network where the kernel allows a new network
namespace, an almost empty environment and resource limits (Limits: a cgroup of its own when the grader can make
one, cgroups.py, else rlimits). Root that cannot drop privileges refuses to run the student's code (SandboxRefused);
a non-root user (a student's own `make grade`) runs it as themselves, unsandboxed, and is told so.

The grader tracks the processes it started, never a user's: each runner leads a session and process group of its
own (setsid), sits in a cgroup of its own when there is one, and the judge is a child subreaper, so a process that
leaves the group (a detached daemon) is re-parented to the judge instead of init. Stopping a runner kills its cgroup,
its process group and every descendant of the judge; two graders running as the same runner user never stop each
other's runners.
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
from grading.runtime.cgroups import PREFIX, RunnerCgroup

RUNNER_USER = os.environ.get("GRADER_RUNNER_USER", "student")  # created by setup.sh; never root, never a real user
STARTUP_TIMEOUT = 300.0  # importing TensorFlow on a slow, shared CPU
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Limits:
    """Resource limits of the runner. The course's values live in grading/config.py (RUNNER_LIMITS), which the
    manifest carries (settings["limits"]); these defaults are the same values, for a manifest built before it did."""

    memory_mb: int = 600  # cgroup memory.max: the runner and every process it starts, resident and page cache
    data_mb: int = 2048  # RLIMIT_DATA of each runner process (private writable memory, mapped or touched)
    processes: int = 160  # processes and threads: cgroup pids.max; without a cgroup, RLIMIT_NPROC of the runner user
    open_files: int = 256  # RLIMIT_NOFILE of each runner process
    cpu_seconds: int = 600  # RLIMIT_CPU of each runner process (the judge's clock stops it much earlier)
    file_size_mb: int = 64  # RLIMIT_FSIZE: how large any one file it writes may grow
    cgroup: bool = True  # use a cgroup of its own when the grader can make one (root, writable /sys/fs/cgroup)

    @classmethod
    def from_settings(cls, values: dict | None) -> Limits:
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


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


def become_subreaper() -> None:
    """Makes this process (the judge) the one that inherits the orphans of its descendants, so a runner's detached
    child can still be found (and killed) when the runner is gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:
        pass


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo += children.get(child, [])
    return found


def kill_descendants(keep: tuple[int, ...] = ()) -> None:
    """SIGKILLs every descendant of this process (but those in `keep`), until none is left, and reaps the orphans
    this subreaper inherited."""
    for _ in range(50):
        pids = [p for p in descendants(os.getpid()) if p not in keep]
        alive = False
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                alive = True
            except OSError:
                pass
        reap(keep)
        if not alive:
            return
        time.sleep(0.01)


def reap(keep: tuple[int, ...] = ()) -> None:
    """Collects the exit status of dead children other than `keep` (orphans inherited as subreaper)."""
    for pid in descendants(os.getpid()):
        if pid in keep:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


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


def drop_to(
    user: RunnerUser | None, limits: Limits, cpu: int | None, cgroup_fds: list[int] | None = None
) -> Callable[[], None]:
    """The `preexec_fn` that runs in the forked child before exec: its cgroup, limits, no network, no groups, then
    the user's uid for good."""
    per_process = (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_DATA, limits.data_mb * 2**20),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * 2**20),
    )

    def preexec():
        if cgroup_fds:
            RunnerCgroup.join(cgroup_fds)
        for which, value in per_process:
            resource.setrlimit(which, (value, value))
        # SIGXCPU at the soft limit (the judge names it), SIGKILL a few seconds later
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
        if user is not None:
            if not cgroup_fds:  # counts every process of the user: only when there is no cgroup's pids.max
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
    subreaper: bool = False  # this process inherits orphans (become_subreaper): stop() kills all its descendants
    cgroup_note: str = ""  # how the limits were enforced, for the judge's notes (set when the first runner starts)

    def new_cgroup(self) -> RunnerCgroup | None:
        """A cgroup for the next runner, or None (rlimits only) when the limits say so or none can be made."""
        if not self.limits.cgroup:
            self.cgroup_note = "no cgroup (as asked): rlimits only"
            return None
        name = f"{PREFIX}-{os.getpid()}-{self.started}"
        group = RunnerCgroup.create(name, self.limits.memory_mb * 2**20, self.limits.processes)
        if group is None:
            self.cgroup_note = f"no cgroup ({RunnerCgroup.why_not}): rlimits only"
        else:
            self.cgroup_note = f"a cgroup v{group.version} per runner"
        return group

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
        self.cgroup = sandbox.new_cgroup()
        self.oom_kills = self.refused_forks = 0
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
        cgroup_fds = self.cgroup.join_fds() if self.cgroup is not None else []
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(to_runner_r, from_runner_w),
                start_new_session=True,  # setsid: a process group of its own, which stop() kills
                preexec_fn=drop_to(sandbox.user, sandbox.limits, sandbox.cpu, cgroup_fds),
            )
        finally:
            for fd in cgroup_fds:
                os.close(fd)
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

    def limit_exceeded(self, reply: object = None) -> str | None:
        """What limit this runner went past since the last call (a sentence naming it), or None: from its cgroup's
        counters, its exit signal, or the kind of error its reply carries (MemoryError, EMFILE, EAGAIN)."""
        limits = self.sandbox.limits
        memory = f"the runner ran out of memory (limit {limits.memory_mb} MB)"
        processes = f"the runner started more than {limits.processes} processes or threads"
        if self.cgroup is not None:
            oom_kills, refused = self.cgroup.memory_events(), self.cgroup.pids_events()
            hit_memory, hit_pids = oom_kills > self.oom_kills, refused > self.refused_forks
            self.oom_kills, self.refused_forks = oom_kills, refused
            if hit_memory:
                return memory
            if hit_pids:
                return processes
        if self.proc.poll() is not None and self.proc.returncode == -signal.SIGXCPU:
            return f"the runner used more than {limits.cpu_seconds} s of CPU time"
        kind = reply.get("limit") if isinstance(reply, dict) and reply.get("ok") is False else None
        if kind == "memory":  # an allocation refused by RLIMIT_DATA (a cgroup's limit kills instead)
            return f"the runner ran out of memory (limit {limits.data_mb} MB per process)"
        if kind == "processes":
            return processes
        if kind == "files":
            return f"the runner opened more than {limits.open_files} files"
        return None

    def peak(self) -> dict[str, float]:
        return self.cgroup.peak() if self.cgroup is not None else {}

    def stop(self) -> None:
        """Kills the runner and everything it started (its cgroup, its process group, every descendant of the judge,
        orphans included) and removes its folder. Never a process this grader did not start."""
        if self.cgroup is not None:
            self.cgroup.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.sandbox.subreaper:
            kill_descendants()
        if self.cgroup is not None:
            self.cgroup.remove()
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
