"""Runs every notebook in notebooks/ top to bottom in a fresh kernel, and exits non-zero when one fails.

    python -m grading.build.run_notebooks [--root DIR] [--timeout SECONDS] [--executed-dir DIR] [NOTEBOOK ...]

Each notebook runs on a copy in memory: the stored file is never written (notebooks are kept without outputs;
`--executed-dir` writes the executed copies elsewhere, to look at the plots). The kernel starts in notebooks/, as
Jupyter would, imports the assignment/ of the root (by default the repository that holds this file: the reference
solution; `--root dist/student` runs a built release's notebooks against its stubs) and writes its training runs to
a temporary directory.

A notebook wraps the cells that call the student's code in `with todo(...)`, which turns a stub's
NotImplementedError into "Not implemented yet: ..." (and a cell left without its inputs into "Skipped: ...").
On the reference solution every function is implemented, so such a message means the notebook hid a real
failure, and it fails the run; on a release they are expected, and each notebook lists the TODOs it waits for.
On the reference a notebook also fails when its outputs show TensorFlow's C++ start-up lines.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import nbformat

ROOT = Path(__file__).resolve().parents[2]
ANSI_COLOR = re.compile(r"\x1b\[[0-9;]*m")
TODO_MESSAGES = ("Not implemented yet:", "Skipped:")  # printed by the `todo` helper in each notebook's first cell
TODO_LOCATION = re.compile(r"Not implemented yet: finish the TODO in (.+?), then re-run")
# TensorFlow's C++ start-up lines (absl: "I0000 00:00:1796024212.169594   14583 port.cc:153] oneDNN custom ...",
# "E0000 ... cuda_platform.cc:52] failed call to cuInit ..."), which importing `assignment` first filters out.
TF_STARTUP_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\]|WARNING: All log messages before absl::InitializeLog)"
)
# A solution region's opening marker, spelled as a pattern: this file ships with the student release, whose leak
# scan refuses the marker's literal text anywhere.
SOLUTION_BEGIN = re.compile(r"^[ \t]*#[ \t]*BEGIN[ \t]+SOLUTION[ \t]*$", re.M)


def find_notebooks(root: str | os.PathLike = ROOT) -> list[Path]:
    """Returns the notebooks of `root`/notebooks, in the order a student opens them."""
    return sorted(p for p in (Path(root) / "notebooks").glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def is_reference(root: str | os.PathLike = ROOT) -> bool:
    """Returns whether `root`/assignment is the reference solution (it still holds solution markers)."""
    return any(SOLUTION_BEGIN.search(p.read_text(encoding="utf-8")) for p in (Path(root) / "assignment").glob("*.py"))


def todo_messages(nb: nbformat.NotebookNode) -> list[str]:
    """Returns the lines of a notebook's outputs printed by its `todo` helper."""
    lines = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines += [line for line in output.get("text", "").splitlines() if line.startswith(TODO_MESSAGES)]
    return lines


def startup_noise(nb: nbformat.NotebookNode) -> list[str]:
    """Returns the lines of TensorFlow's C++ start-up logging in a notebook's outputs (none when it starts quietly)."""
    lines = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines += [line for line in output.get("text", "").splitlines() if TF_STARTUP_LINE.match(line)]
    return lines


def missing_todos(messages: Iterable[str]) -> list[str]:
    """Returns the TODOs the `todo` messages name, in order, each once: ["assignment/rnn.py: RNNCell.call", ...]."""
    return list(dict.fromkeys(m.group(1) for m in map(TODO_LOCATION.match, messages) if m))


def kernel_env(root: str | os.PathLike, runs_dir: str | os.PathLike) -> dict[str, str]:
    """Returns the environment of a notebook's kernel: `root`/assignment imported first, runs written to `runs_dir`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["LM_NOTEBOOK_RUNS"] = str(runs_dir)  # where the notebooks write checkpoints and TensorBoard logs
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # as in Jupyter, whatever CI sets
    return env


def run_notebook(
    path: str | os.PathLike, root: str | os.PathLike = ROOT, timeout: float = 300
) -> tuple[nbformat.NotebookNode, float]:
    """Returns `(executed_notebook, seconds)` after running the notebook at `path` in a fresh kernel.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised; the message holds the cell and its traceback.
        nbclient.exceptions.CellTimeoutError: a cell ran longer than `timeout` seconds.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(str(path), as_version=4)  # a copy in memory: nothing is written back to `path`
    with tempfile.TemporaryDirectory(prefix="notebook-runs-") as runs_dir:
        client = NotebookClient(
            nb,
            timeout=timeout,
            startup_timeout=120,
            kernel_name="python3",
            resources={"metadata": {"path": str(Path(path).parent)}},  # the kernel's working directory
        )
        # The kernel process's own stderr (C++ logs, ipykernel's start-up warnings) is not part of the notebook:
        # keep it out of the report, and show its end only when the kernel dies.
        stderr_path = Path(runs_dir) / "kernel-stderr.log"
        start = time.perf_counter()
        with open(stderr_path, "w") as stderr:
            try:
                client.execute(env=kernel_env(root, runs_dir), stderr=stderr)
            except DeadKernelError as error:
                tail = stderr_path.read_text(errors="replace").splitlines()[-20:]
                raise DeadKernelError(f"{error}\nlast lines of the kernel's stderr:\n" + "\n".join(tail)) from None
        return nb, time.perf_counter() - start


def run_all(
    paths: Iterable[str | os.PathLike] | None = None,
    root: str | os.PathLike = ROOT,
    timeout: float = 300,
    executed_dir: str | os.PathLike | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Runs the notebooks (all of `root`/notebooks by default) and returns the number that failed."""
    import nbformat

    root = Path(root).resolve()
    paths = [Path(p).resolve() for p in paths] if paths else find_notebooks(root)
    if not paths:
        print(f"no notebooks in {root / 'notebooks'}", file=out)
        return 1
    if executed_dir is not None:
        executed_dir = Path(executed_dir).resolve()
        if any(executed_dir == path.parent for path in paths):
            raise ValueError("--executed-dir must not be the notebooks' own folder: they are stored without outputs")
    reference = is_reference(root)
    print(
        f"running {len(paths)} notebooks against {root / 'assignment'} "
        f"({'reference solution' if reference else 'release: TODO messages expected'}), "
        f"timeout {timeout} s per cell",
        file=out,
        flush=True,
    )
    failed, total, waiting = 0, time.perf_counter(), []
    for path in paths:
        name = path.relative_to(root) if path.is_relative_to(root) else path
        start = time.perf_counter()
        try:
            nb, seconds = run_notebook(path, root, timeout)
        except Exception as error:  # CellExecutionError, CellTimeoutError, a kernel that died
            failed += 1
            message = ANSI_COLOR.sub("", str(error))  # IPython colours its tracebacks
            print(f"FAIL {name} after {time.perf_counter() - start:.1f} s\n{message}", file=out, flush=True)
            continue
        if executed_dir is not None:
            executed_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(executed_dir / path.name))
        messages = todo_messages(nb)
        noise = startup_noise(nb)
        if reference and noise:  # on a student's machine another TensorFlow may log other lines: only CI checks
            failed += 1
            print(
                f"FAIL {name} in {seconds:.1f} s: its outputs show TensorFlow's start-up logging: the notebook "
                f"must import `assignment` (which imports TensorFlow quietly) before tensorflow or keras:\n  "
                + "\n  ".join(line[:160] for line in noise[:5]),
                file=out,
                flush=True,
            )
            continue
        if reference and messages:
            failed += 1
            print(
                f"FAIL {name} in {seconds:.1f} s: on the reference solution the todo helper caught an error, "
                f"so the notebook hides a real failure:\n  " + "\n  ".join(messages),
                file=out,
                flush=True,
            )
            continue
        todos = missing_todos(messages)
        waiting += todos
        if todos:
            print(f"ok   {name} in {seconds:.1f} s, waiting for {len(todos)} TODO(s):", file=out)
            print("".join(f"       {todo}\n" for todo in todos), end="", file=out, flush=True)
        else:
            note = f" ({len(messages)} TODO messages)" if messages else ""
            print(f"ok   {name} in {seconds:.1f} s{note}", file=out, flush=True)
    print(f"{len(paths) - failed} of {len(paths)} notebooks ran in {time.perf_counter() - total:.1f} s", file=out)
    if waiting:
        print(f"next: finish the TODO in {waiting[0]} (the first one a notebook reached), then run again", file=out)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: every ROOT/notebooks/*.ipynb)")
    parser.add_argument(
        "--root", default=str(ROOT), help="the folder holding assignment/ and notebooks/ (default: this repository)"
    )
    parser.add_argument("--timeout", type=int, default=300, help="seconds a single cell may run (default 300)")
    parser.add_argument("--executed-dir", help="also write the executed notebooks, with outputs, to this folder")
    args = parser.parse_args(argv)
    try:
        failed = run_all(args.notebooks, root=args.root, timeout=args.timeout, executed_dir=args.executed_dir)
    except ValueError as error:
        parser.error(str(error))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
