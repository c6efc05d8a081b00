"""The programs on top of the assignment: `python -m lmrun train|generate|compare|prepare|data|experiments`.

They run the six files of `assignment/` (the reference solution here, the student's own code in the release) with
the given building blocks of `lmkit`. Nothing imports this package: imports go one way, lmkit <- assignment <- lmrun.
"""
