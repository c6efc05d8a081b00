"""The grader itself: what `python -m grading grade` needs, shipped whole to students and to Gradescope.

Imports only itself and the standard library (pytest in the judge); never grading.build or grading.checks.
"""
