"""`python -m grading.build.collect ROOT OUT INI FILE...`: collects graded test files against ROOT's reference.

Started by `manifest.collect` in a child process, so the reference (and TensorFlow) is never imported by the
builder itself. Writes OUT, a JSON object: `items`, one per test (`id`, `name`, `points`, `bonus`, `timeout`,
`fixtures`), and `errors`, {test file: why it did not collect}. `assignment` and the given packages resolve to ROOT
only: an editable install of another checkout must never answer for them.
"""

import json
import os
import sys

import pytest

import grading.runtime.probes  # noqa: F401  (the tests' `student` fixture: imported before the path is narrowed)
from grading.runtime.schema import GIVEN_PACKAGES


def isolate(root: str) -> None:
    """Puts `root` first on sys.path and drops every other copy of `assignment` or a given package."""
    packages = ("assignment", *GIVEN_PACKAGES)
    kept = []
    for entry in sys.path:
        full = os.path.abspath(entry or ".")
        if "__editable__" in entry:
            continue
        if full != root and any(os.path.exists(os.path.join(full, p, "__init__.py")) for p in packages):
            continue
        kept.append(entry)
    sys.path[:] = [root] + kept
    sys.meta_path[:] = [
        finder for finder in sys.meta_path if "editable" not in (getattr(finder, "__module__", "") or "").lower()
    ]


class Collector:
    """Pytest hooks that keep every collected test's grading markers and every file that failed to collect."""

    def __init__(self):
        self.items, self.errors = [], {}

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors[report.nodeid.split("::")[0] or "?"] = str(report.longrepr)[-3000:]

    def pytest_collection_modifyitems(self, session, config, items):
        for item in items:
            points = item.get_closest_marker("points")
            timeout = item.get_closest_marker("timeout")
            self.items.append(
                {
                    "id": item.nodeid,
                    "name": item.name,
                    "points": points.args[0] if points is not None and points.args else None,
                    "bonus": item.get_closest_marker("bonus") is not None,
                    "timeout": timeout.args[0] if timeout is not None and timeout.args else None,
                    "fixtures": list(getattr(item, "fixturenames", ())),
                }
            )


def main(argv: list[str] | None = None) -> int:
    root, out, ini, *files = sys.argv[1:] if argv is None else argv
    root = os.path.abspath(root)
    isolate(root)
    collector = Collector()
    args = ["--collect-only", "-q", "-c", ini, "--rootdir", root, "-p", "no:cacheprovider"]
    args += ["--continue-on-collection-errors", *files]
    pytest.main(args, plugins=[collector])
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"items": collector.items, "errors": collector.errors}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
