"""grade-class on the toy course (a class grades in seconds): the scores of each student, resume after SIGKILL,
every bad input as a gradebook row, a Gradescope export with its metadata, the report parsed back; the similarity
on the real course's files (no grading needed): a disguised copy flagged, independent work not."""

import base64
import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from toy_project import ALPHA, BETA, PARTS, SETTINGS, make_toy

from grading.build import manifest as manifest_builder
from grading.classroom import batch, report, similarity, synthetic
from grading.runtime import grade

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
WRONG_ADD = ALPHA.replace("return a + b", "return a - b")  # fails test_add, test_add_negative, the hidden add: 3 pts


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    root = make_toy(base / "course")
    manifest, problems = manifest_builder.build_manifest(root, parts=PARTS, settings=SETTINGS)
    assert problems == []
    (base / "manifest.json").write_text(json.dumps(manifest))
    return root, base / "manifest.json"


def student(folder, alpha=ALPHA, beta=BETA):
    (folder / "assignment").mkdir(parents=True)
    (folder / "assignment" / "alpha.py").write_text(alpha)
    (folder / "assignment" / "beta.py").write_text(beta)
    return folder


def zipped(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def grade_class(course, submissions, out, *extra, check=True, **kwargs):
    root, manifest = course
    cmd = [sys.executable, "-m", "grading", "grade-class", str(submissions), "--out", str(out)]
    cmd += ["--bundle", str(root), "--manifest", str(manifest), "--no-drop-privileges", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def gradebook(out):
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


# ---------------------------------------------------------------------------------------------------------------
# A class with good students and every kind of bad input, graded once for the tests below.


@pytest.fixture(scope="module")
def graded_class(course, tmp_path_factory):
    subs = tmp_path_factory.mktemp("class") / "submissions"
    subs.mkdir()
    student(subs / "alice")  # the reference: 8 + 3 bonus
    student(subs / "bob", alpha=WRONG_ADD)  # 5 + 3 bonus
    zipped(subs / "dave.zip", {"repo/assignment/alpha.py": ALPHA, "repo/assignment/beta.py": BETA})  # 8 + 3
    student(subs / "erin", beta=BETA.replace("return max(xs) - min(xs)", "return 0"))  # spread fails: 7 + 3
    (subs / "notzip.zip").write_bytes(b"this is not a zip file at all")
    (subs / "empty").mkdir()
    bomb = subs / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("assignment/alpha.py", ALPHA)
        z.writestr("assignment/data.py", b"\0" * (60 * 2**20))  # 60 MB of zeros: about 60 KB compressed
    zipped(subs / "escape.zip", {"assignment/alpha.py": ALPHA, "../../escaped.py": "print('out')\n"})
    student(subs / "hang", alpha=ALPHA + "\nwhile True:\n    pass\n")  # alpha's import hangs: its timeout
    student(subs / "hog", beta=BETA + "\nhog = bytearray(64 * 2**30)\n")  # 64 GB at import: the memory limit
    student(subs / "frank")
    zipped(subs / "frank.zip", {"assignment/alpha.py": ALPHA, "assignment/beta.py": BETA})  # two entries
    student(Path(os.fsdecode(os.fsencode(str(subs)) + b"/caf\xe9")))  # a folder name that is not UTF-8
    odd = student(subs / "gina")
    (Path(os.fsdecode(os.fsencode(str(odd / "assignment")) + b"/\xff\xfe.py"))).write_text("x = 1\n")
    out = subs.parent / "out"
    proc = grade_class(course, subs, out, "--workers", "2")
    return subs, out, proc


def test_every_student_gets_the_score_grade_gives(graded_class, course):
    _subs, out, proc = graded_class
    book = gradebook(out)
    expected = {"alice": (11, 6, 2, 3), "bob": (8, 3, 2, 3), "dave": (11, 6, 2, 3), "erin": (10, 6, 1, 3)}
    for name, (score, alpha, beta, bonus) in expected.items():
        row = book[name]
        assert row["status"] == "graded", row
        assert (float(row["score"]), float(row["alpha"]), float(row["beta"]), float(row["bonus"])) == (
            score,
            alpha,
            beta,
            bonus,
        ), row
    assert list(book["alice"])[:6] == ["student", "score", "alpha", "beta", "bonus", "status"]
    # The results file is what `grade` writes for the same submission: the same tests, statuses and scores.
    root, manifest = course
    direct, _ = grade.grade(
        graded_class[0] / "bob",
        None,
        bundle=root,
        manifest=json.loads(manifest.read_text()),
        drop_privileges=False,
        log=lambda line: None,
    )
    mine = json.loads((out / "results" / "bob.json").read_text())
    assert mine["score"] == direct["score"] == 8
    assert [(t["name"], t["status"], t["score"]) for t in mine["tests"]] == [
        (t["name"], t["status"], t["score"]) for t in direct["tests"]
    ]
    assert "bob: 5 / 8 + bonus 3" in proc.stdout


def test_every_bad_input_is_one_gradebook_row_and_the_class_goes_on(graded_class):
    _subs, out, _proc = graded_class
    book = gradebook(out)
    assert "not a valid zip" in book["notzip"]["status"]
    assert "empty" in book["empty"]["status"]
    assert "zip bomb" in book["bomb"]["status"] and book["bomb"]["score"] == ""
    assert "outside the submission" in book["escape"]["status"]
    assert "2 entries for this student (frank, frank.zip)" in book["frank"]["status"]
    assert not (out.parent / "escaped.py").exists() and not (out / "escaped.py").exists()
    # A hang and a memory hog are graded: the grader's own limits fail only the part they break.
    assert book["hang"]["status"] == "graded" and float(book["hang"]["alpha"]) == 0 and float(book["hang"]["beta"]) == 2
    assert book["hog"]["status"] == "graded" and float(book["hog"]["beta"]) == 0 and float(book["hog"]["alpha"]) == 6
    # A name that is not UTF-8 is graded under its escaped form; a file name that is not UTF-8 changes nothing.
    assert book["caf\\xe9"]["status"] == "graded" and float(book["caf\\xe9"]["score"]) == 11
    assert book["gina"]["status"] == "graded" and float(book["gina"]["score"]) == 11
    assert len(book) == 13


def test_the_report_has_every_section_and_its_plots_decode_as_png(graded_class):
    _subs, out, _proc = graded_class

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sections, self.images = [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "section":
                self.sections.append(attrs["id"])
            if tag == "img":
                self.images.append(attrs["src"])

    page = Page()
    text = (out / "report.html").read_text(encoding="utf-8")
    page.feed(text)
    assert page.sections == list(report.SECTIONS)
    assert len(page.images) == 2
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]).startswith(PNG)
    for name in ("score_histogram.png", "part_pass_rates.png"):
        assert (out / name).read_bytes().startswith(PNG)
    assert "http" not in text.split("<body>", 1)[1].replace('href="similarity', ""), "self-contained"
    # The most failed test comes first; bob's and erin's failures are listed; the refused students too.
    tests = text.split('id="tests"')[1].split("</section>")[0]
    assert tests.index("test_add_floats_hidden") < tests.index("test_mean_of_floats_bonus")
    assert "zip bomb" in text.split('id="not-graded"')[1]
    disagree = text.split('id="disagreements"')[1].split("</section>")[0]
    assert "None" in disagree or "<td>" in disagree


def test_disagreements_and_clause_rates_are_computed_from_the_results():
    def entry(nodeid, module, passed, hidden=False):
        return {
            "name": nodeid,
            "tags": [module],
            "score": 1.0 if passed else 0.0,
            "status": "passed" if passed else "failed",
            "extra_data": {"nodeid": nodeid, "hidden": hidden, "bonus": False},
        }

    from grading.checks import clauses

    found, _ = clauses.load_map(REPO)
    clause = next(c for c in found if len(c.tests) >= 1)
    pinned = clause.tests[0]
    results = {
        "ann": {
            "score": 2,
            "tests": [entry(pinned + "[1]", clause.module, True), entry("x::h", clause.module, False, True)],
        },
        "ben": {
            "score": 1,
            "tests": [entry(pinned + "[1]", clause.module, False), entry("x::h", clause.module, True, True)],
        },
    }
    rates = {c: (p, n) for c, p, n in report.clause_rates(results, {clause.key: clause.tests})}
    assert rates[clause.key] == (1, 2)
    assert report.disagreements(results) == [("ann", clause.module, "1/1", "0/1"), ("ben", clause.module, "0/1", "1/1")]


# ---------------------------------------------------------------------------------------------------------------
# Resume.


@pytest.mark.timeout(400)
def test_a_run_killed_after_its_first_results_resumes_without_regrading_them(course, tmp_path):
    subs = tmp_path / "submissions"
    names = [f"s{i}" for i in range(4)]
    slow = ALPHA.replace("return a + b", "import time\n    time.sleep(1)\n    return a + b")  # 3 s more per run
    for name in names:
        student(subs / name, alpha=slow)
    out = tmp_path / "out"
    root, manifest = course
    cmd = [sys.executable, "-m", "grading", "grade-class", str(subs), "--out", str(out), "--workers", "1"]
    cmd += ["--bundle", str(root), "--manifest", str(manifest), "--no-drop-privileges", "--no-similarity"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    running = out / ".work" / "running"

    def judging():  # two results written, and the third student's `grade` has started its judge
        if len(list((out / "results").glob("*.json"))) < 2:
            return False
        groups = batch.process_groups()
        return any(len(groups.get(int(p.read_text() or 0), [])) >= 2 for p in running.glob("*.pgid"))

    while time.monotonic() < deadline and not judging():
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert 2 <= len(first) < len(names), first
    time.sleep(0.5)
    assert not any(str(out) in _cmdline(pid) for pid in _pids()), "the killed batch's grade processes died with it"
    left = [int(p.read_text()) for p in running.glob("*.pgid")]
    assert len(left) == 1, "the run in progress recorded its process group"
    assert set(left) & set(batch.process_groups()), "its judge outlives `grade` (the next run must end it)"
    # A results file cut short (as a crash mid-write would leave without atomic writes) is graded again.
    (out / "results" / "s3.json").write_text('{"score": 1')
    resume = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    said = resume.stdout.readline()  # printed once what the killed run left is ended, before any grading
    assert not set(left) & set(batch.process_groups()), "what the killed run left (its judge) was ended"
    said += resume.stdout.read()  # (communicate() would skip what readline() buffered)
    resume.wait(timeout=60)
    assert resume.returncode == 0 and "ended 1 grading run(s) a killed batch had left running" in said
    assert f"{len(first)} already graded" in said, said
    for name, mtime in first.items():
        assert (out / "results" / name).stat().st_mtime_ns == mtime, f"{name} was graded again"
    book = gradebook(out)
    assert all(book[n]["status"] == "graded" and float(book[n]["score"]) == 11 for n in names), book
    assert json.loads((out / "results" / "s3.json").read_text())["score"] == 11
    regraded = grade_class(course, subs, out, "--workers", "2", "--no-similarity", "--regrade")
    assert "4 to grade, 0 already graded" in regraded.stdout


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_shards_grade_their_part_and_a_run_without_shard_merges(course, tmp_path):
    subs = tmp_path / "submissions"
    for name in ("a", "b", "c"):
        student(subs / name)
    out = tmp_path / "out"
    one = grade_class(course, subs, out, "--shard", "1/2")
    assert "2 to grade" in one.stdout and not (out / "similarity.csv").exists()
    two = grade_class(course, subs, out, "--shard", "2/2")
    assert "1 to grade, 0 already graded" in two.stdout
    merged = grade_class(course, subs, out)
    assert "0 to grade, 3 already graded" in merged.stdout and (out / "similarity.csv").exists()
    assert all(r["status"] == "graded" for r in gradebook(out).values())


# ---------------------------------------------------------------------------------------------------------------
# Gradescope's export, and what is refused before anything runs.


def test_a_gradescope_export_is_read_with_its_metadata(course, tmp_path):
    export = tmp_path / "export.zip"
    metadata = """\
:submission_101:
  :submitters:
  - :name: Ada Lovelace
    :sid: '1815'
    :email: ada@example.edu
  :created_at: 2026-11-30 10:00:00.000000000 -08:00
  :score: 0.0
:submission_102:
  :submitters:
  - :name: Alan Turing
    :email: alan@example.edu
  - :name: Grace Hopper
    :email: grace@example.edu
  :score: !ruby/object:BigDecimal 18:0.0
"""
    with zipfile.ZipFile(export, "w") as z:
        z.writestr("assignment_7_export/submission_metadata.yml", metadata)
        z.writestr("assignment_7_export/submission_101/alpha.py", ALPHA)
        z.writestr("assignment_7_export/submission_101/beta.py", BETA)
        z.writestr("assignment_7_export/submission_102/assignment/alpha.py", WRONG_ADD)
        z.writestr("assignment_7_export/submission_102/assignment/beta.py", BETA)
    out = tmp_path / "out"
    grade_class(course, export, out)
    book = gradebook(out)
    assert list(book["submission_101"])[-3:] == ["name", "email", "sid"]
    assert book["submission_101"]["name"] == "Ada Lovelace" and book["submission_101"]["email"] == "ada@example.edu"
    assert float(book["submission_101"]["score"]) == 11 and book["submission_101"]["sid"] == "1815"
    assert book["submission_102"]["name"] == "Alan Turing; Grace Hopper" and float(book["submission_102"]["score"]) == 8
    # The extracted folder is accepted too.
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(export) as z:
        z.extractall(folder)
    grade_class(course, folder, tmp_path / "out2")
    assert gradebook(tmp_path / "out2")["submission_102"]["email"] == "alan@example.edu; grace@example.edu"


def test_a_missing_submissions_folder_or_out_inside_it_is_one_error_line_before_anything_runs(course, tmp_path):
    proc = grade_class(course, tmp_path / "nope", tmp_path / "out", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    (tmp_path / "subs").mkdir()
    proc = grade_class(course, tmp_path / "subs", tmp_path / "subs" / "out", check=False)
    assert proc.returncode == 2 and "inside SUBMISSIONS" in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists() and not (tmp_path / "subs" / "out").exists()


def test_as_root_it_refuses_without_a_runner_user_as_grade_does(course, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    student(tmp_path / "subs" / "alice")
    root, manifest = course
    cmd = [sys.executable, "-m", "grading", "grade-class", str(tmp_path / "subs"), "--out", str(tmp_path / "out")]
    cmd += ["--bundle", str(root), "--manifest", str(manifest), "--runner-user", "no-such-user-here"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "never runs it as root" in proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# Similarity, on the real course's graded files.


def test_a_disguised_copy_is_flagged_and_independent_solutions_are_not(tmp_path):
    made = synthetic.make_class(REPO, tmp_path / "class", size=4)
    assert set(made) == {"reference", "stubs", "copy", "alternatives"}
    assert "alternative-but-correct patches applied" in made["alternatives"]
    modules = synthetic.graded_modules()
    read = {s: {m: (tmp_path / "class" / s / "assignment" / f"{m}.py").read_text() for m in modules} for s in made}
    copy, original = read["copy"]["sampling"], read["reference"]["sampling"]
    assert "#" not in copy and '"""' not in copy and copy != original
    from grading.build.release import stub_package

    stub_package(REPO, tmp_path / "stub")
    boilerplate = {m: (tmp_path / "stub" / "assignment" / f"{m}.py").read_text() for m in modules}
    pairs = similarity.compare(read, boilerplate, modules, tmp_path / "work", html=tmp_path / "s.html")
    by_pair = {(p.student_a, p.student_b): p for p in pairs}
    assert by_pair[("copy", "reference")].flagged
    assert not by_pair[("alternatives", "reference")].flagged
    assert not by_pair[("alternatives", "copy")].flagged
    assert not any(p.flagged for p in pairs if "stubs" in (p.student_a, p.student_b)), "the stubs are boilerplate"
    assert [p.similarity for p in pairs] == sorted((p.similarity for p in pairs), reverse=True)
    assert "copy" in (tmp_path / "s.html").read_text()
    text = similarity.to_csv(pairs)
    assert text.splitlines()[0] == "student_a,student_b,similarity,flagged"
    assert text.splitlines()[1].startswith("copy,reference,") and text.splitlines()[1].endswith(",yes")


def test_the_class_run_writes_the_similarity_table_and_report(graded_class):
    _subs, out, _proc = graded_class
    rows = list(csv.DictReader(open(out / "similarity.csv", encoding="utf-8")))
    assert rows and set(rows[0]) == {"student_a", "student_b", "similarity", "flagged"}
    assert all(0 <= float(r["similarity"]) <= 1 and r["flagged"] in ("yes", "no") for r in rows)
    assert (out / "similarity.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    batch.atomic_write(target, "old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(batch.os, "replace", boom)
    with pytest.raises(OSError):
        batch.atomic_write(target, "new content")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert batch.read_results(target) is None
