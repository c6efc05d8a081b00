"""Similarity of every pair of students, on the graded files, with the stub release as boilerplate (copydetect).

copydetect tokenizes each file (pygments), replaces every identifier by one letter (V for a variable or attribute,
F for a function, O for a class) and every string by S, drops whitespace and comments, then fingerprints the token
text with winnowing as MOSS does. Fingerprints of the stub release (signatures, docstrings, TODOs, the given code
of the graded files) are boilerplate and never count. Renaming variables, re-laying out the code and removing
comments and docstrings therefore leave a copy's fingerprints as they were.

Each student's graded files are joined into one text (assignment/<module>.py in the course's order, a comment line
naming each), so one pair is one comparison. copydetect gives, for each file of a pair, the share of its own
(non-boilerplate) fingerprinted tokens found in the other; a pair's similarity is the larger of the two, so a copy
padded with code of its own is still caught from the side that was copied.

THRESHOLD was tuned on the generated class (synthetic.py, docs/grading-a-class.md has the figures): the reference
against its disguised copy, and against the reference with every alternative-but-correct patch applied.
"""

from __future__ import annotations

import ast
import csv
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

THRESHOLD = 0.8  # a pair at or above it is flagged (see the module docstring)
NOISE = 25  # copydetect's noise threshold: matches shorter than this many characters of token text never count
GUARANTEE = 30  # copydetect's guarantee threshold: every match at least this long is found


@dataclass
class Pair:
    student_a: str
    student_b: str
    similarity: float  # 0-1
    flagged: bool


def strip_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` without the docstrings of its module, classes and functions (a body left empty gets `pass`)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                body.pop(0)
                if not body:
                    body.append(ast.Pass())
    return tree


def canonical(source: str) -> str:
    """`source` laid out one way: parsed, docstrings dropped, written back by `ast.unparse` (no comments, one
    spacing, quoting and parenthesising); a file that does not parse is compared as it is."""
    try:
        return ast.unparse(strip_docstrings(ast.parse(source))) + "\n"
    except (SyntaxError, ValueError, RecursionError):
        return source


def joined_text(files: Mapping[str, str], modules: Iterable[str]) -> str:
    """One text of a student's graded files in their canonical layout, in the order of `modules`, a comment line
    naming each; a missing file is left out."""
    parts = []
    for m in modules:
        if m in files:
            parts.append(f"# ==== assignment/{m}.py\n{canonical(files[m])}\n")
    return "".join(parts)


def compare(
    students: Mapping[str, Mapping[str, str]],
    boilerplate: Mapping[str, str],
    modules: Iterable[str],
    work: str | os.PathLike,
    threshold: float = THRESHOLD,
    html: str | os.PathLike | None = None,
) -> list[Pair]:
    """Every pair of `students` ({student: {module: source}}), most similar first. Writes the texts compared under
    `work` (students/<student>.py, stub/<module>.py) and, when `html` is given, copydetect's HTML report there."""
    import copydetect

    modules = list(modules)
    work = Path(work)
    texts_dir, stub_dir = work / "students", work / "stub"
    for d in (texts_dir, stub_dir):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.py"):
            old.unlink()
    paths = {}
    for student, files in sorted(students.items()):
        path = texts_dir / f"{student}.py"
        path.write_text(joined_text(files, modules), encoding="utf-8", errors="replace")
        paths[student] = str(path)
    # The stub release joined as a student's files are (so the seams between files are boilerplate too).
    (stub_dir / "stub.py").write_text(joined_text(boilerplate, modules), encoding="utf-8")
    if len(paths) < 2:
        return []
    detector = copydetect.CopyDetector(
        test_dirs=[str(texts_dir)],
        ref_dirs=[str(texts_dir)],
        boilerplate_dirs=[str(stub_dir)],
        extensions=["py"],
        noise_t=NOISE,
        guarantee_t=GUARANTEE,
        display_t=threshold,
        autoopen=False,
        silent=True,
        out_file=str(html) if html else str(work / "similarity.html"),
    )
    detector.run()
    index_test = {f: i for i, f in enumerate(detector.test_files)}
    index_ref = {f: j for j, f in enumerate(detector.ref_files)}
    names = sorted(paths)
    pairs = []
    for a_pos, a in enumerate(names):
        for b in names[a_pos + 1 :]:
            i, j = index_test.get(paths[a]), index_ref.get(paths[b])
            sims = [0.0, 0.0] if i is None or j is None else list(detector.similarity_matrix[i, j])
            value = max(0.0, *(float(s) for s in sims if s == s))  # nan (nothing left after boilerplate) is 0
            value = min(1.0, value)
            pairs.append(Pair(a, b, round(value, 4), value >= threshold))
    pairs.sort(key=lambda p: (-p.similarity, p.student_a, p.student_b))
    if html:
        text = detector.generate_html_report(output_mode="return")
        Path(html).write_text(text or "", encoding="utf-8")
    return pairs


def to_csv(pairs: Iterable[Pair]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student_a", "student_b", "similarity", "flagged"])
    for p in pairs:
        writer.writerow([p.student_a, p.student_b, f"{p.similarity:.4f}", "yes" if p.flagged else "no"])
    return buffer.getvalue()


def read_csv(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a similarity.csv (an empty list when it is missing or unreadable)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return [
                Pair(r["student_a"], r["student_b"], float(r["similarity"]), r["flagged"] == "yes")
                for r in csv.DictReader(f)
            ]
    except (OSError, KeyError, ValueError):
        return []
