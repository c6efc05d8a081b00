"""The `student` a graded test talks to: `out = student.run(probe, *args)` calls the student's code through a probe.

A probe is a self-contained top-level function of a test module: it imports what it needs (`from assignment import
sampling`) inside its body, calls the student's code on its arguments and returns plain data (arrays, numbers,
strings, lists, dicts). Only its source crosses to the process that runs it, never the test module (which holds
the expected values), so a probe may use no global of its module; helpers it needs are passed as `uses=(...)`,
also top-level functions or classes, sent with it.

Two modes, one test source:
- in-process (plain pytest: `make test`, the release, CI): the probe runs here, its arguments and result go through
  the same encoding as in the grader (so a test that passes here sees the same types there), and an exception of
  the student's code comes back as a StudentError chained to the original traceback;
- graded (`python -m grading grade`): the judge sends the probe to the runner, an unprivileged process that alone
  imports the student's code (see judge.py and probe_runner.py).
"""

import inspect
import random
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypedDict

from grading.runtime import wire

SEED = 1234  # every test starts from this seed (Python, NumPy, TensorFlow), before its first probe
STUDENT_TEXT_LIMIT = 300  # characters of an exception message from the student's code shown in a failure


class StudentError(Exception):
    """The student's code raised `type_name(message)` inside a probe (`where`: its last line in assignment/)."""

    def __init__(self, type_name, message, where=""):
        self.type_name = str(type_name)[:100]
        self.message = cap(message, STUDENT_TEXT_LIMIT)
        self.where = cap(where, 200)
        super().__init__(f"{self.type_name}: {self.message}" + (f"\n  (raised at {self.where})" if self.where else ""))


class ProbeTimeout(Exception):
    """The student's code did not answer within the test's time limit; its process was stopped."""


class ProbeCrashed(Exception):
    """The process running the student's code died (a crash, out of memory, os._exit) during a probe."""


def cap(text: object, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} characters cut]"


def probe_source(fn: Callable) -> tuple[str, int, str]:
    """Returns (source, first line, file name) of a top-level function or class of a test module."""
    if not (inspect.isfunction(fn) or inspect.isclass(fn)) or fn.__qualname__ != fn.__name__:
        raise TypeError(f"a probe must be a top-level function or class of its test module; got {fn!r}")
    lines, first = inspect.getsourcelines(fn)
    path = Path(inspect.getsourcefile(fn))
    name = "/".join(path.parts[-3:] if path.parent.name == "hidden" else path.parts[-2:])
    return "".join(lines), first, name


class ProbeRequest(TypedDict):
    """The message that asks the runner (or this process) to run a probe; only plain data, as wire.py sends it."""

    op: str  # "run"
    name: str  # the probe's name, defined by the last of `sources`
    sources: list[list]  # [source, first line, file name] of each helper in `uses`, then of the probe
    args: list
    kwargs: dict[str, object]


def request(
    fn: Callable, args: Sequence[object], kwargs: Mapping[str, object], uses: Iterable[Callable] = ()
) -> ProbeRequest:
    """The message that asks for `fn(*args, **kwargs)`: sources of `uses` then of `fn`, and encodable arguments."""
    pieces = [probe_source(u) for u in uses] + [probe_source(fn)]
    return {
        "op": "run",
        "name": fn.__name__,
        "sources": [list(p) for p in pieces],
        "args": list(args),
        "kwargs": dict(kwargs),
    }


def execute(req: ProbeRequest) -> object:
    """Runs one `request` here: compiles its sources in a fresh namespace and calls the probe. Raises what it raises.

    Shared by the in-process mode and the runner, so both build the probe the same way."""
    namespace = {"__name__": "probe", "__builtins__": __builtins__}
    for source, first, filename in req["sources"]:
        code = compile("\n" * (int(first) - 1) + source, filename, "exec")
        exec(code, namespace)
    return namespace[req["name"]](*req["args"], **req["kwargs"])


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and, when it is loaded, Keras (which seeds TensorFlow)."""
    random.seed(seed)
    import numpy as np

    np.random.seed(seed)
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(seed)


def where_in_assignment(tb: types.TracebackType | None) -> str:
    """`assignment/<module>.py:<line> in <function>` for the last frame of `tb` in the student's package."""
    found = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        parts = Path(code.co_filename).parts
        if "assignment" in parts:
            found = "/".join(parts[parts.index("assignment") :]) + f":{tb.tb_lineno} in {code.co_name}"
        tb = tb.tb_next
    return found


def call_by_name(target: str, *args: object, **kwargs: object) -> object:
    """The probe behind `student.call("module.function", ...)`: imports assignment.<module> and calls the function."""
    import importlib

    module, _, name = target.partition(".")
    obj = importlib.import_module(f"assignment.{module}")
    for attr in name.split("."):
        obj = getattr(obj, attr)
    return obj(*args, **kwargs)


class Student:
    """What a graded test sees as `student`; `run` is the mode's."""

    mode = ""

    def run(
        self, probe: Callable, *args: object, uses: Iterable[Callable] = (), **kwargs: object
    ) -> object:  # pragma: no cover - each mode has its own
        raise NotImplementedError

    def call(self, target: str, *args: object, **kwargs: object) -> object:
        """`student.call("sampling.greedy", logits)`: calls assignment.sampling.greedy(logits) as a probe would."""
        return self.run(call_by_name, target, *args, **kwargs)

    def error(
        self, probe: Callable, *args: object, uses: Iterable[Callable] = (), **kwargs: object
    ) -> StudentError | None:
        """Returns the StudentError `probe(*args, **kwargs)` raised, or None if it returned."""
        try:
            self.run(probe, *args, uses=uses, **kwargs)
        except StudentError as exc:
            return exc
        return None

    def call_error(self, target: str, *args: object, **kwargs: object) -> StudentError | None:
        """Returns the StudentError that calling `target` by name raised, or None if it returned."""
        return self.error(call_by_name, target, *args, **kwargs)


class InProcessStudent(Student):
    """The `student` fixture under plain pytest: the probe runs in this process."""

    mode = "in-process"

    def __init__(self, seed: int | None = SEED):
        self.seed = seed

    def run(self, probe: Callable, *args: object, uses: Iterable[Callable] = (), **kwargs: object) -> object:
        """Returns `probe(*args, **kwargs)` as plain data; raises StudentError if the student's code raised."""
        req = wire.roundtrip(request(probe, args, kwargs, uses))
        if self.seed is not None:
            seed_everything(self.seed)
            self.seed = None
        try:
            value = execute(req)
        except Exception as exc:
            raise StudentError(type(exc).__name__, exc, where_in_assignment(exc.__traceback__)) from exc
        return wire.roundtrip(value)
