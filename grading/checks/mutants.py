"""`make mutants`: mutation testing of the solution regions with cosmic-ray, each part against its own graded tests.

For each graded part (grading/config.py), in a temporary copy of the repository (the working tree is never mutated):

1. cosmic-ray's `init` lists every mutation of assignment/<module>.py; its line filter (`cr-filter-lines`) keeps only
   the lines between `# BEGIN SOLUTION` and `# END SOLUTION` (grading/build/markers.py finds them); its operator filter
   drops the stillborn operators of STILLBORN (below); the mutants listed as equivalent in
   grading/checks/mutants_equivalent.toml are skipped too, with the reason given there.
2. cosmic-ray's `exec` writes each mutant into the copy's assignment/<module>.py and runs the part's graded tests
   (tests/test_<module>*.py and tests/hidden/test_<module>*.py, stopping at the first failure). The test command
   is a small client of a warm test server: a process of the copy that imported TensorFlow once and forks a fresh
   pytest per mutant, so a mutant costs its tests, not TensorFlow's import. The server never imports `assignment`;
   each forked pytest imports it from the copy's disk, where cosmic-ray has just written the mutant, and so does any
   process a test starts (the copy is first on PYTHONPATH).
3. Before any mutant, two canaries: the copy's tests pass on the reference (the baseline, which also sets the
   per-mutant timeout), and fail with the part's regions stubbed, which proves the tests import the copy's module.

The graded tests run here as under plain pytest (the `student` fixture runs probes in-process): the same tests and
assertions as under the grader, without its sandbox, which cannot change what a mutant computes.

Prints, per part, the surviving mutants (line, function, the original and the mutated line) and the score: killed /
(total - equivalent). `python -m grading mutants --only sampling` runs one part; `--keep DIR` keeps the sessions.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from grading.runtime.schema import GIVEN_PACKAGES

EQUIVALENT_FILE = Path("grading") / "checks" / "mutants_equivalent.toml"
# Operators whose mutants cannot run on this code: every solution region computes on tensors, ints and strings,
# where a bitwise operator in place of an arithmetic one raises at once (TypeError on float tensors and strings),
# so these only inflate the score; `+` for `-` and the like stay.
STILLBORN = [r"core/ReplaceBinaryOperator_\w+_(BitOr|BitAnd|BitXor|LShift|RShift)$"]
COPIED = ("assignment", *GIVEN_PACKAGES, "tests", "grading", "pyproject.toml")  # each copied when present
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=-rf", "-o", "timeout=0"]


@dataclass
class Mutant:
    line: int
    qualname: str
    operator: str
    original: str
    mutated: str
    outcome: str  # killed | survived | equivalent | timeout
    why: str = ""
    output: str = ""


@dataclass
class PartResult:
    module: str
    mutants: list = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    baseline_s: float = 0.0

    def count(self, *outcomes):
        return sum(m.outcome in outcomes for m in self.mutants)

    @property
    def score(self):
        """(killed, total) over the mutants that are not equivalent; a timeout is a kill."""
        total = len(self.mutants) - self.count("equivalent")
        return self.count("killed", "timeout"), total


# ---------------------------------------------------------------------------------------------------------------
# The warm test server and its client (the test command cosmic-ray runs per mutant).


class _KillersFirst:
    """A pytest plugin: runs first the tests that killed earlier mutants of the same function, most kills first
    (with -x, a mutant then usually costs one test), and notes the tests that fail in `failed`."""

    def __init__(self, first, failed):
        self.first = {nodeid: i for i, nodeid in enumerate(first)}
        self.failed = failed

    def pytest_collection_modifyitems(self, items):
        items.sort(key=lambda item: self.first.get(item.nodeid, len(self.first)))  # stable: the rest keep order
        for item in items:  # a test's own time limit would kill mutants on a loaded machine: the run's limit holds
            item.own_markers = [m for m in item.own_markers if m.name != "timeout"]

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.write((report.nodeid + "\n").encode())
            self.failed.flush()


def _mutated_function(target, original, regions):
    """The function whose solution region differs between `original` and the module on disk (or "")."""
    try:
        now = Path(target).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    for row, (a, b) in enumerate(zip(original, now), 1):
        if a != b:
            return _qualname(regions, row)
    return ""


def serve(sock_path, target=None, preimport=("numpy", "tensorflow", "keras", "pytest")):
    """Imports the heavy libraries once, then forks one pytest per request: {"args": [...], "timeout": s}.

    `target` is the module cosmic-ray mutates: the server reads which function a mutant changed and runs first the
    tests that killed that function's earlier mutants (the order of tests never changes which mutants die)."""
    import collections
    import importlib

    from grading.build import markers

    original = Path(target).read_text(encoding="utf-8") if target else ""
    regions = markers.find_regions(original, str(target)) if target else []
    original = original.splitlines()
    killers = collections.defaultdict(collections.Counter)  # function -> {test: mutants it killed}

    for name in preimport:
        importlib.import_module(name)
    assert "assignment" not in sys.modules, "the server must never import the code under test"
    import gc

    gc.freeze()  # what is imported now is never collected: a forked pytest's gc.collect skips TensorFlow's heap
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(4)
    server.settimeout(5)
    parent = os.getppid()
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # `make mutants` was stopped: so is its server
                return 1
            continue
        conn.settimeout(None)
        with conn:
            request = json.loads(_recv_line(conn))
            if request.get("stop"):
                return 0
            function = _mutated_function(target, original, regions) if target else ""
            first = [t for t, _ in killers[function].most_common()]
            code, output, failed = _fork_pytest(conn, request["args"], request.get("timeout", 600), first)
            killers[function].update(failed)
            conn.sendall((json.dumps({"code": code, "output": output}) + "\n").encode())


def _recv_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _fork_pytest(conn, args, timeout, first=()):
    """Runs pytest in a forked child; kills it on timeout or when the client goes away (cosmic-ray's timeout).
    Returns (exit status, the tail of its output, the tests that failed)."""
    out = tempfile.TemporaryFile()
    failed = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: a fresh pytest that imports the code under test from disk
        code = 3
        try:
            os.setpgid(0, 0)
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.dont_write_bytecode = True
            import pytest

            code = int(pytest.main(list(args), plugins=[_KillersFirst(first, failed)]))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    conn.setblocking(False)
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        gone = False
        try:
            gone = conn.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            pass
        except OSError:
            gone = True
        if gone or time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = -9
            break
        time.sleep(0.02)
    conn.setblocking(True)
    out.seek(0)
    text = out.read().decode(errors="replace")
    out.close()
    failed.seek(0)
    names = failed.read().decode(errors="replace").split()
    failed.close()
    return status, text[-4000:], names


def client(sock_path, args, timeout):
    """The test command: asks the server for one pytest run; exits with its code and prints its output."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock_path)
    conn.sendall((json.dumps({"args": args, "timeout": timeout}) + "\n").encode())
    reply = json.loads(_recv_line(conn))
    sys.stdout.write(reply["output"])
    code = reply["code"]
    return code if 0 <= code < 256 else 1


class Server:
    """A warm test server in `root` (cwd and first on PYTHONPATH), stopped on exit."""

    def __init__(self, root, target=None):
        self.root = Path(root)
        self.sock = str(self.root / "pytest.sock")
        env = dict(os.environ, PYTHONPATH=str(self.root), PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grading.checks.mutants", "serve", self.sock, *([str(target)] if target else [])],
            cwd=self.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(1200):
            if os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the test server exited with {self.proc.returncode} before listening")
            time.sleep(0.1)
        raise RuntimeError("the test server did not start listening within 120 s")

    def command(self, tests, timeout):
        return [
            sys.executable,
            "-m",
            "grading.checks.mutants",
            "client",
            self.sock,
            "--timeout",
            f"{timeout:.0f}",
            "--",
        ] + [
            *PYTEST_ARGS,
            *tests,
        ]

    def run(self, tests, timeout):
        start = time.monotonic()
        proc = subprocess.run(self.command(tests, timeout), cwd=self.root, capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------------------------
# Equivalent mutants: grading/checks/mutants_equivalent.toml, keyed by module, original line and mutated line
# (stripped).


def load_equivalents(root):
    path = Path(root) / EQUIVALENT_FILE
    if not path.exists():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: cosmic-ray brings the `toml` package
        import toml as tomllib

        data = tomllib.loads(path.read_text(encoding="utf-8"))
    else:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = {}
    for entry in data.get("equivalent", []):
        out[(entry["module"], entry["line"].strip(), entry["mutant"].strip())] = entry["why"]
    return out


def _mutated_line(source, spec):
    """The mutated text of the mutation's first line (cosmic-ray applied to `source`), stripped."""
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    operator = get_operator(spec.operator_name)(**(getattr(spec, "operator_args", None) or {}))
    mutated = mutate_code(source, operator, spec.occurrence)
    if mutated is None:
        return ""
    old, new = source.splitlines(), mutated.splitlines()
    first, last = spec.start_pos[0], spec.start_pos[0] + len(new) - len(old) + spec.end_pos[0] - spec.start_pos[0]
    return " ".join(line.strip() for line in new[first - 1 : max(first, last)])


def _qualname(regions, line):
    return next((r.qualname for r in regions if r.begin < line < r.end), "?")


# ---------------------------------------------------------------------------------------------------------------
# One part.


def part_tests(root, module):
    from grading.build import manifest

    modules = sorted(p.stem for p in (Path(root) / "assignment").glob("*.py") if p.stem != "__init__")
    return [f for f in manifest.graded_test_files(root) if manifest.module_of(f, modules) == module]


def _copy_repo(root, dest):
    dest.mkdir(parents=True)
    for name in COPIED:
        src = Path(root) / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        elif src.exists():
            shutil.copy(src, dest / name)


def _config(module, regions, test_command, timeout):
    import toml

    lines = [f"{r.begin + 1}-{r.end - 1}" for r in regions]
    return toml.dumps(
        {
            "cosmic-ray": {
                "module-path": f"assignment/{module}.py",
                "timeout": float(timeout),
                "excluded-modules": [],
                "test-command": " ".join(_quote(a) for a in test_command),
                "distributor": {"name": "local"},
                "filters": {
                    "line-filter": {"lines": {f"assignment/{module}.py": lines}},
                    "operators-filter": {"exclude-operators": STILLBORN},
                },
            }
        }
    )


def _quote(arg):
    import shlex

    return shlex.quote(str(arg))


def shard_items(items, k, n):
    """Splits cosmic-ray's work items into (shard k's, the others') by every n-th of them in the order of their
    mutations (line, column, operator, occurrence). Each shard inits a database of its own, whose job ids are random
    and whose order is not the same from one database to the next: that order would split the same mutants
    differently in each shard, running some twice and others never."""

    def key(item):
        spec = item.mutations[0]
        return (str(spec.module_path), tuple(spec.start_pos), tuple(spec.end_pos), spec.operator_name, spec.occurrence)

    ordered = sorted(items, key=key)
    return [it for i, it in enumerate(ordered) if i % n == k], [it for i, it in enumerate(ordered) if i % n != k]


def run_part(root, module, work, equivalents, log=print, shard=(0, 1), recheck=None):
    """Runs cosmic-ray on one part in `work`; returns a PartResult. With shard=(k, n), only every n-th mutant from
    the k-th (see shard_items) runs here, in a copy of its own: n shards of a part run at once. With
    `recheck` ({(module, original, mutated): outcome} of an earlier run), a mutant killed then is not run again (tests
    are only ever added) and counts as killed; survivors and mutants new since then run."""
    k, n = shard
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    from grading.build import markers

    started = time.monotonic()
    result = PartResult(module)
    copy = Path(work) / (module if n == 1 else f"{module}-{k + 1}of{n}")
    _copy_repo(root, copy)
    target = copy / "assignment" / f"{module}.py"
    source = target.read_text(encoding="utf-8")
    regions = markers.find_regions(source, str(target))
    tests = part_tests(copy, module)
    if not tests:
        result.error = f"no graded tests for {module}"
        return result
    server = Server(copy, target)
    try:
        code, out, baseline = server.run(tests, 1800)
        if code != 0:
            result.error = f"the reference fails its own tests in the copy:\n{out[-1500:]}"
            return result
        stubbed, _ = markers.stub_source(source, str(target))
        target.write_text(stubbed, encoding="utf-8")
        code, out, _ = server.run(tests, 1800)
        target.write_text(source, encoding="utf-8")
        if code == 0:
            result.error = "the tests pass with the part stubbed: they do not import the copy's module"
            return result
        result.baseline_s = baseline
        timeout = max(120.0, 5 * baseline + 60)  # generous: a timeout counts as a kill
        cfg = copy / "cosmic-ray.toml"
        db = copy / "session.sqlite"
        cfg.write_text(_config(module, regions, server.command(tests, timeout), timeout + 30), encoding="utf-8")
        bindir = Path(sys.executable).parent

        def tool(name, *args):
            proc = subprocess.run([str(bindir / name), *map(str, args)], cwd=copy, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")

        tool("cosmic-ray", "init", cfg, db)
        tool("cr-filter-lines", db, "--config", cfg)
        tool("cr-filter-operators", db, cfg)
        described = {}
        with use_db(str(db), WorkDB.Mode.open) as wdb:
            pending, others = shard_items(wdb.pending_work_items, k, n)
            if others:
                wdb.set_multiple_results(
                    [item.job_id for item in others],
                    WorkResult(output="another shard", worker_outcome=WorkerOutcome.SKIPPED),
                )
            for item in pending:
                spec = item.mutations[0]
                line = spec.start_pos[0]
                original = " ".join(l.strip() for l in source.splitlines()[line - 1 : spec.end_pos[0]])
                mutated = _mutated_line(source, spec)
                described[item.job_id] = (line, spec.operator_name, original, mutated)
                why = equivalents.get((module, original, mutated))
                if why:
                    wdb.set_result(
                        item.job_id, WorkResult(output=f"equivalent: {why}", worker_outcome=WorkerOutcome.SKIPPED)
                    )
                elif recheck is not None and recheck.get((module, original, mutated)) in ("killed", "timeout"):
                    wdb.set_result(
                        item.job_id, WorkResult(output="killed before", worker_outcome=WorkerOutcome.SKIPPED)
                    )
        part = module if n == 1 else f"{module} (shard {k + 1} of {n})"
        log(f"  {part}: {len(pending)} mutants in the solution regions, baseline {baseline:.0f} s; running ...")
        tool("cosmic-ray", "exec", cfg, db)
        with use_db(str(db), WorkDB.Mode.open) as wdb:
            for item, res in wdb.completed_work_items:
                if item.job_id not in described:
                    continue  # outside the regions or a stillborn operator
                line, op, original, mutated = described[item.job_id]
                if res.worker_outcome == WorkerOutcome.SKIPPED and res.output == "killed before":
                    outcome, why = "killed", "killed in the run rechecked"
                elif res.worker_outcome == WorkerOutcome.SKIPPED:
                    outcome, why = "equivalent", (res.output or "")[len("equivalent: ") :]
                elif res.output == "timeout":
                    outcome, why = "timeout", ""
                elif res.is_killed:
                    outcome, why = "killed", ""
                else:
                    outcome, why = "survived", ""
                result.mutants.append(
                    Mutant(line, _qualname(regions, line), op, original, mutated, outcome, why, res.output or "")
                )
        result.mutants.sort(key=lambda m: (m.line, m.operator))
    except Exception as exc:  # a part that breaks is reported, the others go on
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
        target.write_text(source, encoding="utf-8")
        result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------------------------
# All parts.


def run(root=".", only=None, jobs=None, keep=None, shards=1, recheck=None, log=print):
    from grading import config

    root = Path(root).resolve()
    modules = [p.module for p in config.PARTS if not only or p.module in only]
    unknown = sorted(set(only or ()) - {p.module for p in config.PARTS})
    if unknown:
        log(f"error: no graded part {', '.join(unknown)}; the parts are {', '.join(p.module for p in config.PARTS)}")
        return None
    if shards < 1:
        log(f"error: --shards {shards}: give a number of shards >= 1")
        return None
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="grading-mutants-"))
    if keep and work.exists() and any(work.iterdir()):
        log(f"error: --keep {work} is not empty; name a new or empty folder")
        return None
    work.mkdir(parents=True, exist_ok=True)
    snapshot = work / "source"  # every part starts from this one copy: the tree may change while the run goes on
    _copy_repo(root, snapshot)
    equivalents = load_equivalents(root)
    workers = max(1, min(jobs or os.cpu_count() or 1, len(modules) * shards))
    log(f"mutation testing of the solution regions: {', '.join(modules)} on {workers} worker(s), in {work}")
    size = {m: len((root / "assignment" / f"{m}.py").read_text(encoding="utf-8")) for m in modules}
    queue = [(m, k) for m in sorted(modules, key=lambda m: -size[m]) for k in range(shards)]  # longest first
    results = {}
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                module, k = queue.pop(0)
            res = run_part(snapshot, module, work, equivalents, log, (k, shards), recheck)
            with lock:
                if module in results:  # another shard of the part: one result per part
                    whole = results[module]
                    whole.mutants = sorted(whole.mutants + res.mutants, key=lambda m: (m.line, m.operator))
                    whole.error = "; ".join(e for e in (whole.error, res.error) if e)
                    whole.seconds = max(whole.seconds, res.seconds)
                else:
                    results[module] = res
                killed, total = res.score
                log(
                    f"  {module}{f' (shard {k + 1} of {shards})' if shards > 1 else ''}: done in {res.seconds:.0f} s:"
                    f" {killed}/{total} killed" + (f" ERROR {res.error}" if res.error else "")
                )

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        return [results[m] for m in modules]
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def report(results, log=print):
    """Prints the survivors of each part, then the table of scores."""
    for res in results:
        log("")
        survivors = [m for m in res.mutants if m.outcome == "survived"]
        log(f"== {res.module}: {len(survivors)} survivor(s)")
        if res.error:
            log(f"   ERROR: {res.error}")
        for m in survivors:
            log(f"   {res.module}.py:{m.line} in {m.qualname} [{m.operator.split('/')[-1]}]")
            log(f"       - {m.original}")
            log(f"       + {m.mutated}")
    log("")
    header = f"{'Part':<12} {'Mutants':>8} {'Equivalent':>11} {'Killed':>7} {'Survived':>9} {'Score':>14} {'Time':>7}"
    log(header)
    log("-" * len(header))
    for res in results:
        killed, total = res.score
        pct = f"{100 * killed / total:.0f}%" if total else "-"
        log(
            f"{res.module:<12} {len(res.mutants):>8} {res.count('equivalent'):>11} {killed:>7} "
            f"{res.count('survived'):>9} {f'{killed}/{total} {pct}':>14} {res.seconds:>6.0f}s"
        )
    k = sum(r.score[0] for r in results)
    t = sum(r.score[1] for r in results)
    log(
        f"{'all':<12} {sum(len(r.mutants) for r in results):>8} {sum(r.count('equivalent') for r in results):>11} "
        f"{k:>7} {sum(r.count('survived') for r in results):>9} {f'{k}/{t}':>14}"
    )


def main(args):
    """The `mutants` subcommand; exits 1 when a part could not be run (survivors alone do not fail it)."""
    recheck = None
    if args.recheck:
        try:
            earlier = json.loads(Path(args.recheck).read_text(encoding="utf-8"))
            recheck = {(r["module"], m["original"], m["mutated"]): m["outcome"] for r in earlier for m in r["mutants"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: --recheck {args.recheck}: not the --json file of an earlier run ({exc})", file=sys.stderr)
            return 2
    results = run(args.root, only=args.only, jobs=args.jobs, keep=args.keep, shards=args.shards, recheck=recheck)
    if results is None:
        return 2
    report(results)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "module": r.module,
                        "error": r.error,
                        "seconds": r.seconds,
                        "mutants": [m.__dict__ for m in r.mutants],
                    }
                    for r in results
                ],
                indent=1,
            )
        )
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
    if len(sys.argv) >= 3 and sys.argv[1] == "client":
        argv = sys.argv[2:]
        sock = argv[0]
        timeout = 600.0
        if len(argv) > 2 and argv[1] == "--timeout":
            timeout = float(argv[2])
        rest = argv[argv.index("--") + 1 :] if "--" in argv else []
        sys.exit(client(sock, rest, timeout))
    sys.exit("usage: python -m grading.checks.mutants serve SOCKET | client SOCKET [--timeout S] -- PYTEST_ARGS")
