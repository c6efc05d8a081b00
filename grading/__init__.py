"""Instructor tooling: the student release, the Gradescope autograder and the checks that prove the tests."""
