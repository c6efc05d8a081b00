"""A cgroup of its own for each runner, when the grader can make one: memory and process limits that cover every
process the runner starts (detached ones too), counters that say which limit was hit, and a way to kill them all.

cgroup v2 (one folder: memory.max, pids.max, memory.events, pids.events, cgroup.kill) is used when the grader's own
cgroup offers the memory and pids controllers to its children; else cgroup v1 (a folder in the memory hierarchy and
one in the pids hierarchy: memory.limit_in_bytes, memory.oom_control, pids.max, pids.events). Both need root and a
writable /sys/fs/cgroup; `RunnerCgroup.create` returns None (with the reason in `why_not`) otherwise, and the
sandbox falls back to rlimits (sandbox.py). Each runner's cgroup sits under the grader's own cgroup, so whatever
limits the grader still holds the runners, and is named after the judge's pid: two graders never share one.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PREFIX = "grader-runner"


def _mounts() -> tuple[Path | None, dict[str, Path]]:
    """(the cgroup2 mount, {v1 controller: its mount}) from /proc/self/mountinfo."""
    v2, v1 = None, {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None, {}
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or fields[3] != "/":
            continue
        if tail[0] == "cgroup2" and v2 is None:
            v2 = Path(fields[4])
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in ("memory", "pids"):
                    v1.setdefault(option, Path(fields[4]))
    return v2, v1


def _own_paths() -> dict[str, str]:
    """{controller or "": this process's cgroup path} from /proc/self/cgroup ("" is the v2 hierarchy)."""
    paths = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    except (OSError, ValueError):
        pass
    return paths


def _read_counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class RunnerCgroup:
    """The cgroup folder(s) of one runner: `memory` and `pids` (the same folder under v2)."""

    why_not = ""  # why the last create() returned None

    def __init__(self, version: int, memory: Path, pids: Path):
        self.version = version
        self.memory = memory
        self.pids = pids

    @classmethod
    def create(cls, name: str, memory_bytes: int, processes: int) -> RunnerCgroup | None:
        """A new cgroup `name` with these limits, or None (`RunnerCgroup.why_not` says why) when none can be made."""
        if os.geteuid() != 0:
            cls.why_not = "not root"
            return None
        v2, v1 = _mounts()
        own = _own_paths()
        reasons = []
        if v2 is not None and "" in own:
            parent = v2 / own[""].lstrip("/")
            try:
                offered = (parent / "cgroup.controllers").read_text().split()
                if "memory" not in offered or "pids" not in offered:
                    raise OSError(f"{parent} offers no memory and pids controllers ({' '.join(offered) or 'none'})")
                enabled = (parent / "cgroup.subtree_control").read_text().split()
                if "memory" not in enabled or "pids" not in enabled:
                    (parent / "cgroup.subtree_control").write_text("+memory +pids")
                folder = parent / name
                folder.mkdir()
                group = cls(2, folder, folder)
                try:
                    (folder / "memory.max").write_text(str(memory_bytes))
                    (folder / "pids.max").write_text(str(processes))
                    for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                        if (folder / optional).exists():
                            (folder / optional).write_text(value)
                except OSError:
                    group.remove()
                    raise
                return group
            except OSError as exc:
                reasons.append(f"cgroup v2: {exc}")
        if "memory" in v1 and "pids" in v1:
            made = []
            try:
                for controller in ("memory", "pids"):
                    folder = v1[controller] / own.get(controller, "/").lstrip("/") / name
                    folder.mkdir()
                    made.append(folder)
                group = cls(1, made[0], made[1])
                (group.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                if (group.memory / "memory.memsw.limit_in_bytes").exists():
                    try:
                        (group.memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                    except OSError:
                        pass
                (group.pids / "pids.max").write_text(str(processes))
                return group
            except OSError as exc:
                for folder in made:
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
                reasons.append(f"cgroup v1: {exc}")
        else:
            reasons.append("no cgroup v1 memory and pids hierarchies")
        cls.why_not = "; ".join(reasons)
        return None

    def join_fds(self) -> list[int]:
        """File descriptors of the cgroup.procs files, opened before fork: the child writes its pid to each
        (`join`) before it drops privileges."""
        folders = [self.memory] if self.memory == self.pids else [self.memory, self.pids]
        return [os.open(folder / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for folder in folders]

    @staticmethod
    def join(fds: list[int]) -> None:
        """Moves the calling process into the cgroup (in the forked child)."""
        pid = str(os.getpid()).encode()
        for fd in fds:
            os.write(fd, pid)

    def pids_in(self) -> list[int]:
        found = set()
        for folder in {self.memory, self.pids}:
            try:
                found |= {int(p) for p in (folder / "cgroup.procs").read_text().split()}
            except (OSError, ValueError):
                pass
        return sorted(found)

    def kill(self) -> None:
        """SIGKILLs every process in the cgroup (cgroup.kill under v2, else until none is left)."""
        if self.version == 2 and (self.memory / "cgroup.kill").exists():
            try:
                (self.memory / "cgroup.kill").write_text("1")
            except OSError:
                pass
        for _ in range(200):
            pids = self.pids_in()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def memory_events(self) -> int:
        """How many times the kernel's OOM killer killed a process of this cgroup."""
        if self.version == 2:
            return _read_counter(self.memory / "memory.events", "oom_kill")
        return _read_counter(self.memory / "memory.oom_control", "oom_kill")

    def pids_events(self) -> int:
        """How many forks or thread creations pids.max refused."""
        return _read_counter(self.pids / "pids.events", "max")

    def peak(self) -> dict[str, float]:
        """The cgroup's peak memory (MB, page cache included) and peak number of tasks, where the kernel says."""
        if self.version == 2:
            memory = _read_int(self.memory / "memory.peak")
        else:
            memory = _read_int(self.memory / "memory.max_usage_in_bytes")
        return {"cgroup_mb": memory / 2**20, "tasks": float(_read_int(self.pids / "pids.peak"))}

    def remove(self) -> None:
        """Kills what is left and removes the folder(s) (retrying while the kernel releases the dead)."""
        self.kill()
        for folder in {self.memory, self.pids}:
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def remove_leftovers(tag: str) -> None:
    """Kills and removes every runner cgroup whose name starts with `PREFIX-tag-` under this process's cgroups (what a
    judge that was killed left behind)."""
    v2, v1 = _mounts()
    own = _own_paths()
    parents = []
    if v2 is not None and "" in own:
        parents.append((2, v2 / own[""].lstrip("/")))
    for controller, mount in v1.items():
        parents.append((1, mount / own.get(controller, "/").lstrip("/")))
    for version, parent in parents:
        try:
            children = [p for p in parent.iterdir() if p.is_dir() and p.name.startswith(f"{PREFIX}-{tag}-")]
        except OSError:
            continue
        for folder in children:
            RunnerCgroup(version, folder, folder).remove()
