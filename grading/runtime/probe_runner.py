"""The runner: the only process that imports the student's code. It runs probes and sends back plain data.

Started by the judge (judge.py) as `python -I HARNESS/grading/runtime/probe_runner.py --root SANDBOX --in FD --out FD`,
as an unprivileged user, in a scratch folder holding the student's package, the grader's copy of the given packages
(lmkit/, ...) and nothing of the tests. It reads requests
from one pipe and answers each on the other (wire.py: no pickle either way):

- {"op": "import", "module": m} -> {"ok": true} or the error: imports `assignment.<m>` (so a module that does not
  import fails its part once, quickly);
- {"op": "run", "name", "sources", "args", "kwargs", "seed"} -> {"ok": true, "value": ...} or {"ok": false, "type",
  "message", "where"}: compiles the probe's own source, calls it, returns what it returned.

Nothing this process says is trusted: the judge checks the types of what comes back and decides every outcome.
"""

import argparse
import errno
import os
import sys
import traceback


def isolate(root: str, packages: tuple[str, ...] = ("assignment",)) -> None:
    """Makes `import assignment` (and each of `packages`) find the scratch folder's copy only (never an editable
    install's, never a repository's on the path)."""
    here = os.path.dirname(os.path.abspath(__file__))  # the harness's grading/runtime/: not a top-level package
    kept = []
    for entry in sys.path:
        full = os.path.abspath(entry or ".")
        if (
            full == here
            or "__editable__" in entry
            or (full != root and any(os.path.exists(os.path.join(full, name)) for name in packages))
        ):
            continue
        kept.append(entry)
    sys.path[:] = [root] + kept
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if "editable" not in (getattr(finder, "__module__", "") or "").lower()
        and "editable" not in getattr(finder, "__name__", type(finder).__name__).lower()
    ]


LIMIT_ERRNOS = {errno.EMFILE: "files", errno.ENFILE: "files", errno.EAGAIN: "processes"}


def limit_of(exc: BaseException) -> str | None:
    """Which of the runner's limits an exception comes from ("memory", "processes", "files"), or None: a
    MemoryError (RLIMIT_DATA), EAGAIN from fork or "can't start new thread" (pids.max, RLIMIT_NPROC), EMFILE
    (RLIMIT_NOFILE), anywhere in the chain of causes. The judge names the limit; a lie costs only this test."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
            return "memory"
        if isinstance(exc, OSError) and exc.errno in LIMIT_ERRNOS:
            return LIMIT_ERRNOS[exc.errno]
        if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
            return "processes"
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--harness", required=True)
    parser.add_argument("--in", dest="fd_in", type=int, required=True)
    parser.add_argument("--out", dest="fd_out", type=int, required=True)
    parser.add_argument("--preimport", default="")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.harness)
    from grading.runtime import probes, wire
    from grading.runtime.schema import GIVEN_PACKAGES

    root = os.path.abspath(args.root)
    os.chdir(root)
    isolate(root, ("assignment", *GIVEN_PACKAGES))
    sys.path.insert(1, args.harness)
    sys.dont_write_bytecode = True
    for name in filter(None, args.preimport.split(",")):
        try:
            __import__(name)
        except Exception:  # the probes that need it fail and say why
            pass
    # Defence in depth: the runner keeps its own references to what it calls, taken before any of the student's code
    # is imported, so a module that replaces `probes.execute` or the wire's functions does not change what runs here.
    # (The fix is the rule the tests follow: every verdict is computed in the judge from raw outputs.)
    execute, seed_everything, where_in_assignment = probes.execute, probes.seed_everything, probes.where_in_assignment
    receive, encode, write_frame = wire.receive, wire.encode, wire.write_frame
    wire.send(args.fd_out, {"ok": True, "uid": os.getuid(), "pid": os.getpid()})
    while True:
        try:
            req = receive(args.fd_in)
        except EOFError:
            break
        try:
            if req.get("seed") is not None:
                seed_everything(req["seed"])
            if req["op"] == "import":
                __import__(f"assignment.{req['module']}")
                reply = {"ok": True}
            else:
                reply = {"ok": True, "value": execute(req)}
            body = encode(reply)
        except BaseException as exc:  # noqa: B036 - SystemExit and KeyboardInterrupt from the student's code too
            where = where_in_assignment(exc.__traceback__)
            if isinstance(exc, SyntaxError) and exc.filename:
                where = f"{os.path.relpath(exc.filename, root)}:{exc.lineno}"
            try:
                message = str(exc) if not isinstance(exc, SyntaxError) else str(exc.msg)
            except Exception:
                message = "(the exception could not be turned into text)"
            if not message and isinstance(exc, AssertionError):
                message = traceback.format_exception_only(type(exc), exc)[-1].strip()
            reply = {"ok": False, "type": type(exc).__name__, "message": message[:4000], "where": where}
            try:
                reply["limit"] = limit_of(exc)
            except Exception:
                pass
            body = encode(reply)
        write_frame(args.fd_out, body)
    os._exit(0)


if __name__ == "__main__":
    main()
