"""grade-class on a generated class: submissions per hour and peak memory, for 1 and 2 workers.

The class (grading/classroom/synthetic.py): the reference, the stub release, a disguised copy, the reference with
every alternative applied, then the bug catalogue and the single alternatives in turn, `--size` students in all.
The manifest is collected once, before the clock starts; each worker count grades the whole class into a fresh
OUT with `python -m grading grade-class` (similarity and report included), while a sampler sums the resident
memory of the whole process tree (the batch, each `grade`, its judge and runner) every 0.25 s. Prints figures;
nothing passes or fails.

As root the student's code runs as the runner users given (one per worker: without a cgroup a process limit counts
per user); without any, as root itself (--no-drop-privileges: the generated class is the repository's
own code).

    python bench/bench_grade_class.py [--size 40] [--workers 1,2] [--quick] [--runner-user U ...] [--keep DIR]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grading.build.manifest import collect_for_grading  # noqa: E402
from grading.classroom import synthetic  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root_pid):
    """Resident bytes of `root_pid` and all its descendants."""
    children, rss = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(name)] = int(Path(f"/proc/{name}/statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def run(class_dir, out, manifest, workers, users, python):
    cmd = [sys.executable, "-m", "grading", "grade-class", str(class_dir), "--out", str(out), "--workers", str(workers)]
    cmd += ["--manifest", str(manifest)]
    if users:
        cmd += ["--runner-user", ",".join(users[:workers])]
        if python:
            cmd += ["--runner-python", python]
    elif os.geteuid() == 0:
        cmd += ["--no-drop-privileges"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output = proc.communicate()[0]
    finally:
        done.set()
        sampler.join()
        if proc.poll() is None:  # interrupted: grade-class ends its own grading runs on SIGTERM
            proc.terminate()
            proc.wait()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        print(output[-3000:])
        raise SystemExit(f"grade-class failed (exit {proc.returncode})")
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.startswith("similarity:")]
    return wall, peak[0], lines


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups below
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=40, help="students in the class (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a class of 6 (the reference, stubs, copy, ...)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure (default: %(default)s)")
    parser.add_argument("--runner-user", action="append", default=[], help="a runner user per worker (as root)")
    parser.add_argument("--runner-python", help="an interpreter the runner users can run")
    parser.add_argument("--keep", help="keep the class and the outputs in this new folder")
    args = parser.parse_args()
    size = 6 if args.quick else args.size
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-grade-class-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        made = synthetic.make_class(ROOT, base / "class", size=size)
        started = time.monotonic()
        manifest = collect_for_grading(ROOT, log=lambda line: None)
        (base / "manifest.json").write_text(json.dumps(manifest))
        print(
            f"class: {len(made)} students ({base / 'class'}); manifest collected in {time.monotonic() - started:.0f} s"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        rows = []
        for workers in [int(w) for w in args.workers.split(",")]:
            out = base / f"out-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            wall, peak, similarity = run(
                base / "class", out, base / "manifest.json", workers, args.runner_user, args.runner_python
            )
            rows.append((workers, wall, len(made) * 3600 / wall, peak / 2**20))
            print(f"  {workers} worker(s): {wall:.0f} s; {' '.join(similarity)}")
        print()
        print(f"{'workers':>7} {'students':>8} {'wall s':>8} {'per hour':>9} {'peak MB':>8}")
        for workers, wall, per_hour, peak in rows:
            print(f"{workers:>7} {len(made):>8} {wall:>8.0f} {per_hour:>9.0f} {peak:>8.0f}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
