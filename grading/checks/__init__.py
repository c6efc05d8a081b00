"""Instructor checks: verify, the attack suite, mutation testing, the clause-to-test map."""
