"""report.html: one self-contained page on the class (plots embedded as base64 PNG), and the plots as files.

Sections (each a <section id=...>): summary, score distribution, parts (mean and median, pass rates), tests (pass
rate of every graded test, the most failed first), clauses (pass rate of every clause of grading/checks/clauses.txt,
through the tests that pin it: a student passes a clause when every test pinning it passed), visible/hidden
disagreements, similarity (the flagged pairs), not graded (every student without a grade and why).
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SECTIONS = ("summary", "score-distribution", "parts", "tests", "clauses", "disagreements", "similarity", "not-graded")


@dataclass
class ClassData:
    """What the report is made of."""

    parts: list[dict]  # the manifest's parts (module, label, points, bonus)
    results: dict[str, dict]  # student -> results.json, graded students only
    errors: dict[str, str]  # student -> why not graded
    clause_tests: dict[str, list[str]] = field(default_factory=dict)  # clause key -> test ids (no parameters)
    clause_note: str = ""  # why there is no clause map, when there is none
    pairs: list | None = None  # similarity.Pair, most similar first; None: not computed yet
    threshold: float = 0.0


def part_points(results: Mapping) -> dict[str, float]:
    """{module: core points earned} of one results.json."""
    out = {}
    for e in results.get("tests", []):
        data = e.get("extra_data", {})
        if not data.get("bonus"):
            out[e["tags"][0]] = out.get(e["tags"][0], 0.0) + float(e["score"])
    return out


def bonus_points(results: Mapping) -> float:
    return sum(float(e["score"]) for e in results.get("tests", []) if e.get("extra_data", {}).get("bonus"))


def _base(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


def test_rates(results: Mapping[str, Mapping]) -> list[tuple[str, str, int, int]]:
    """[(nodeid, module, passed, graded)] of every test, the most failed first."""
    counts = {}
    for r in results.values():
        for e in r.get("tests", []):
            nodeid = e["extra_data"]["nodeid"]
            row = counts.setdefault(nodeid, [e["tags"][0], 0, 0])
            row[1] += e["status"] == "passed"
            row[2] += 1
    rows = [(nodeid, m, p, n) for nodeid, (m, p, n) in counts.items()]
    return sorted(rows, key=lambda r: (r[2] / r[3] if r[3] else 1.0, r[0]))


def clause_rates(
    results: Mapping[str, Mapping], clause_tests: Mapping[str, Sequence[str]]
) -> list[tuple[str, int, int]]:
    """[(clause, students passing it, students graded on it)], the most failed first: a student passes a clause when
    every test pinning it (parametrized cases included) passed."""
    rows = []
    for clause, tests in clause_tests.items():
        wanted = set(tests)
        passed = graded = 0
        for r in results.values():
            mine = [e for e in r.get("tests", []) if _base(e["extra_data"]["nodeid"]) in wanted]
            if not mine:
                continue
            graded += 1
            passed += all(e["status"] == "passed" for e in mine)
        rows.append((clause, passed, graded))
    return sorted(rows, key=lambda r: (r[1] / r[2] if r[2] else 1.0, r[0]))


def disagreements(results: Mapping[str, Mapping]) -> list[tuple[str, str, str, str]]:
    """[(student, module, visible passed/all, hidden passed/all)] where all the visible tests of a part passed and
    not all its hidden ones, or the other way round (core tests only)."""
    rows = []
    for student, r in sorted(results.items()):
        split = {}
        for e in r.get("tests", []):
            data = e["extra_data"]
            if data.get("bonus"):
                continue
            cell = split.setdefault(e["tags"][0], {"visible": [0, 0], "hidden": [0, 0]})
            key = "hidden" if data.get("hidden") else "visible"
            cell[key][0] += e["status"] == "passed"
            cell[key][1] += 1
        for module, cell in split.items():
            v, h = cell["visible"], cell["hidden"]
            if v[1] and h[1] and (v[0] == v[1]) != (h[0] == h[1]):
                rows.append((student, module, f"{v[0]}/{v[1]}", f"{h[0]}/{h[1]}"))
    return rows


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def plots(data: ClassData) -> dict[str, bytes]:
    """{"score_histogram.png": ..., "part_pass_rates.png": ...}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [float(r["score"]) for r in data.results.values()]
    out = {}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(scores, bins=20, range=(0, max([100.0, *scores])), color="#4c72b0", edgecolor="white")
    ax.set_xlabel("score (core + bonus)")
    ax.set_ylabel("students")
    ax.set_title(f"Score distribution ({len(scores)} graded)")
    out["score_histogram.png"] = _png(fig)
    plt.close(fig)

    modules = [p["module"] for p in data.parts]
    rates = []
    for module in modules:
        entries = [e for r in data.results.values() for e in r.get("tests", []) if e["tags"][0] == module]
        rates.append(100.0 * sum(e["status"] == "passed" for e in entries) / len(entries) if entries else 0.0)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(modules, rates, color="#55a868")
    ax.set_ylim(0, 100)
    ax.set_ylabel("tests passed (%)")
    ax.set_title("Pass rate of each part's tests")
    for i, rate in enumerate(rates):
        ax.text(i, rate + 1, f"{rate:.0f}%", ha="center", fontsize=8)
    out["part_pass_rates.png"] = _png(fig)
    plt.close(fig)
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _pct(p, n):
    return f"{100.0 * p / n:.0f}%" if n else "-"


def render(data: ClassData, images: Mapping[str, bytes]) -> str:
    """The page's HTML."""
    results = data.results
    scores = [float(r["score"]) for r in results.values()]
    sections = {}
    summary = [
        ("students", len(results) + len(data.errors)),
        ("graded", len(results)),
        ("not graded", len(data.errors)),
        ("mean score", f"{statistics.mean(scores):.2f}" if scores else "-"),
        ("median score", f"{statistics.median(scores):g}" if scores else "-"),
    ]
    sections["summary"] = ("Summary", _table(["", ""], summary))
    sections["score-distribution"] = ("Score distribution", _img(images["score_histogram.png"], "score histogram"))

    rows = []
    test_rows = test_rates(results)
    for p in data.parts:
        got = [part_points(r).get(p["module"], 0.0) for r in results.values()]
        runs = [(t[2], t[3]) for t in test_rows if t[1] == p["module"]]
        rows.append(
            (
                f"{p['label']} {p['module']}",
                p["points"] if p["points"] is not None else "-",
                f"{statistics.mean(got):.2f}" if got else "-",
                f"{statistics.median(got):g}" if got else "-",
                _pct(sum(r[0] for r in runs), sum(r[1] for r in runs)),
            )
        )
    bonus = [bonus_points(r) for r in results.values()]
    rows.append(
        (
            "bonus",
            sum(p.get("bonus") or 0 for p in data.parts),
            f"{statistics.mean(bonus):.2f}" if bonus else "-",
            f"{statistics.median(bonus):g}" if bonus else "-",
            "",
        )
    )
    sections["parts"] = (
        "Parts: mean and median points, tests passed",
        _table(["part", "points", "mean", "median", "tests passed"], rows)
        + _img(images["part_pass_rates.png"], "part pass rates"),
    )
    sections["tests"] = (
        "Tests, the most failed first",
        _table(
            ["test", "part", "passed", "pass rate"],
            [(t[0], t[1], f"{t[2]}/{t[3]}", _pct(t[2], t[3])) for t in test_rows],
        ),
    )
    if data.clause_tests:
        crow = [(c, f"{p}/{n}", _pct(p, n)) for c, p, n in clause_rates(results, data.clause_tests)]
        body = _table(["clause", "students passing", "pass rate"], crow)
    else:
        body = f"<p>No clause map: {html.escape(data.clause_note or 'none found')}</p>"
    sections["clauses"] = ("Clauses of grading/checks/clauses.txt, the most failed first", body)
    dis = disagreements(results)
    sections["disagreements"] = (
        "Visible and hidden tests disagree",
        (
            "<p>Parts where every visible test passed and some hidden test failed, or the other way round.</p>"
            + _table(["student", "part", "visible passed", "hidden passed"], dis)
        )
        if dis
        else "<p>None: on every part, the visible and the hidden tests agree.</p>",
    )
    if data.pairs is None:
        body = "<p>Not computed yet: it runs once every student is graded.</p>"
    else:
        flagged = [p for p in data.pairs if p.flagged]
        body = (
            f"<p>{len(data.pairs)} pairs compared (copydetect, the stub release as boilerplate); {len(flagged)} at or "
            f'above the threshold {data.threshold:g}. Side by side: <a href="similarity.html">similarity.html</a>; '
            'every pair: <a href="similarity.csv">similarity.csv</a>.</p>'
            + _table(
                ["student a", "student b", "similarity"],
                [(p.student_a, p.student_b, f"{p.similarity:.3f}") for p in flagged],
            )
        )
    sections["similarity"] = ("Similar pairs (flagged)", body)
    sections["not-graded"] = (
        "Not graded",
        _table(["student", "why"], sorted(data.errors.items())) if data.errors else "<p>Every student was graded.</p>",
    )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:90%}th{background:#eee}"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Class report</title>',
        f"<style>{style}</style></head><body><h1>Class report</h1>",
    ]
    for key in SECTIONS:
        title, body = sections[key]
        parts.append(f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
