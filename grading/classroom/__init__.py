"""Grading a whole class: `python -m grading grade-class SUBMISSIONS --out OUT` (instructor tooling, never shipped).

- intake.py: the submissions folder (or a Gradescope export) read into one entry per student, bad input refused
  with a reason;
- batch.py: every entry graded by `python -m grading grade`, N at a time, written atomically as each finishes, and
  resumed after a crash; the gradebook;
- similarity.py: every pair of students compared with copydetect, the stub release as boilerplate;
- report.py: report.html, self-contained, and its plots;
- synthetic.py: a generated class (the reference, the stubs, the bug catalogue, the alternatives, a disguised copy)
  for the benchmark and the tests.

It sits above grading/runtime, grading/build and grading/checks, and may import any of them.
"""
