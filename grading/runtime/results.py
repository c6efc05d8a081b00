"""results.json, what Gradescope reads: one entry per graded test, and the score table of the points earned.

- one entry per graded test, `status` passed/failed, `score` of `max_score`, the failure message as `output`;
- visible tests are `visible`, hidden tests `after_published` (students see them once grades are published);
- bonus tests have `max_score` 0 and `score` = their points when they pass: Gradescope adds them to the score as
  extra credit without raising the assignment's total of 100 (their name says "bonus" and how many points);
- `score` is the sum of the tests' scores, bonus included; `output` is the score table of the visible tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypedDict

from grading.runtime.schema import Manifest, TestOutcome

MESSAGE_LIMIT = 4_000  # characters of a failure message kept in results.json


class EntryData(TypedDict):
    """The `extra_data` of one test's entry in results.json: what the score table reads."""

    nodeid: str
    outcome: str  # schema.TestOutcome.outcome: "passed", "failed", "timeout", "missing", "not_run", ...
    points: float
    bonus: bool
    hidden: bool
    duration: float  # seconds


class ResultEntry(TypedDict):
    """One test in results.json, in Gradescope's schema."""

    name: str  # "Part 2a (rnn): test_cell_shape [hidden]"
    number: str  # "<part label>.<n>"
    score: float
    max_score: float  # 0 for a bonus test: Gradescope counts its score as extra credit
    status: Literal["passed", "failed"]
    output: str  # the failure message, or "passed in 1.2 s"
    visibility: Literal["visible", "after_published"]
    tags: list[str]  # [module], then "hidden" and "bonus" when they apply
    extra_data: EntryData


class GradeStats(TypedDict):
    """results.json's `extra_data` after a run: the split of the score, time and memory."""

    wall_s: float
    peak_rss_mb: float
    peak_anon_mb: float
    user: str  # who ran the student's code
    modules: list[str]  # the modules this run graded
    core_score: float
    core_max: float
    bonus_score: float
    bonus_max: float


class _Results(TypedDict):
    score: float  # the tests' scores, bonus included
    output: str  # the score table of the visible tests, then the notes
    tests: list[ResultEntry]
    extra_data: GradeStats | dict[str, str]  # {"refused": ...} or {"error": ...} when the grader could not grade


class Results(_Results, total=False):
    """results.json, what Gradescope reads (its schema); a grader that failed writes only the required keys."""

    execution_time: int  # seconds
    stdout_visibility: str


def fmt(x):
    return f"{x:g}"


def truncate(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its head and tail around a note of how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = int(limit * 0.6), int(limit * 0.3)
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


def summary_line(message: str) -> str:
    """The line of an error message a student should read first (the exception), for one-line notes."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E ")]
    if errors:
        return errors[-1][1:].strip()
    return lines[0] if lines else ""


def headline(output: str) -> str:
    """The first line of a failed test's output, the one line `make grade` shows; for an error raised inside a
    `tf.function` ("XError: in user code:"), the exception line at the end of TensorFlow's trace instead."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.endswith("in user code:"):
        kind = first.split(":", 1)[0]
        inner = [line for line in lines[1:] if line.startswith(kind + ": ")]
        if inner:
            return inner[0]
    return first


def _name(test, part):
    tags = []
    if test["hidden"]:
        tags.append("hidden")
    if test["bonus"]:
        tags.append(f"bonus, {fmt(test['points'])} pts")
    tag = f" [{', '.join(tags)}]" if tags else ""
    return f"Part {part['label']} ({part['module']}): {test['name']}{tag}"


def build_results(
    manifest: Manifest,
    outcomes: Mapping[str, TestOutcome],
    *,
    notes: Sequence[str] = (),
    wall: float = 0.0,
    extra: GradeStats | None = None,
) -> Results:
    """Returns Gradescope's results.json content for the manifest's tests and their outcomes."""
    parts = {p["module"]: p for p in manifest["parts"]}
    entries = []
    counters = {}
    for test in manifest["tests"]:
        part = parts[test["module"]]
        outcome = outcomes.get(test["id"]) or TestOutcome("not_run", "not run (no result was recorded)")
        passed = outcome.outcome == "passed"
        counters[part["module"]] = counters.get(part["module"], 0) + 1
        if passed:
            output = f"passed in {outcome.duration:.1f} s"
        else:
            output = truncate(outcome.message.strip() or outcome.outcome, MESSAGE_LIMIT)
        entries.append(
            {
                "name": _name(test, part),
                "number": f"{part['label']}.{counters[part['module']]}",
                "score": test["points"] if passed else 0.0,
                "max_score": 0.0 if test["bonus"] else test["points"],
                "status": "passed" if passed else "failed",
                "output": output,
                "visibility": "after_published" if test["hidden"] else "visible",
                "tags": [part["module"]]
                + (["hidden"] if test["hidden"] else [])
                + (["bonus"] if test["bonus"] else []),
                "extra_data": {
                    "nodeid": test["id"],
                    "outcome": outcome.outcome,
                    "points": test["points"],
                    "bonus": test["bonus"],
                    "hidden": test["hidden"],
                    "duration": round(outcome.duration, 3),
                },
            }
        )
    score = sum(e["score"] for e in entries)
    table = score_table(entries, show_hidden=False)
    output = table + ("\n\n" + "\n".join(notes) if notes else "")
    return {
        "score": round(score, 4),
        "execution_time": int(round(wall)),
        "output": output,
        "stdout_visibility": "hidden",
        "tests": entries,
        "extra_data": dict(extra or {}),
    }


def score_table(entries: Iterable[ResultEntry], show_hidden: bool = True) -> str:
    """A per-part table of the points earned: visible tests, hidden tests (when shown) and bonus tests."""
    parts = {}  # module -> (label, {"visible"|"hidden"|"bonus": [earned, possible]})
    for e in entries:
        data = e["extra_data"]
        if data["hidden"] and not show_hidden:
            continue
        module = e["tags"][0]
        label, cells = parts.setdefault(module, (e["number"].split(".")[0], {}))
        key = "bonus" if data["bonus"] else "hidden" if data["hidden"] else "visible"
        cell = cells.setdefault(key, [0.0, 0.0])
        cell[0] += e["score"]
        cell[1] += data["points"]
    columns = [k for k in ("visible", "hidden", "bonus") if any(k in cells for _, cells in parts.values())]
    totals = {k: [sum(c.get(k, [0, 0])[i] for _, c in parts.values()) for i in (0, 1)] for k in columns}
    header = f"{'Part':<5} {'Module':<12}" + "".join(f" {k.capitalize():>13}" for k in columns)
    rule = "-" * len(header)

    def row(label, module, cells):
        text = f"{label:<5} {module:<12}"
        for k in columns:
            c = cells.get(k)
            text += f" {fmt(c[0]):>6} / {fmt(c[1]):<4}" if c else " " * 14
        return text.rstrip()

    lines = [header, rule] + [row(label, m, cells) for m, (label, cells) in parts.items()]
    return "\n".join(lines + [rule, row("", "total", totals)])


def write_results(results: Results, out: str | os.PathLike) -> None:
    """Writes results.json atomically; never through a link a student could have planted."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=2, ensure_ascii=False))
    os.replace(tmp, out)
