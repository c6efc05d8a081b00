"""Collects graded tests against a root's own assignment/ and writes what the manifest needs as JSON.

`python -m grading.build.collect ROOT OUT PYTEST_INI FILE...` (run by manifest.collect in a child process, since
collecting imports the reference and TensorFlow): OUT gets {"items": [...], "errors": {file: message}}, one item
per test with its node id, name, points, bonus flag, timeout and fixtures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest


def marker_arg(item: pytest.Item, name: str):
    marker = item.get_closest_marker(name)
    if marker is None:
        return None
    return marker.args[0] if marker.args else marker.kwargs.get("seconds", marker.kwargs.get("n"))


class Collector:
    def __init__(self):
        self.items = []
        self.errors = {}

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors[report.nodeid] = report.longreprtext

    def pytest_collection_modifyitems(self, session, config, items):
        for item in items:
            self.items.append(
                {
                    "id": item.nodeid,
                    "name": item.name,
                    "points": marker_arg(item, "points"),
                    "bonus": item.get_closest_marker("bonus") is not None,
                    "timeout": marker_arg(item, "timeout"),
                    "fixtures": list(getattr(item, "fixturenames", ())),
                }
            )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root, out, ini, *files = argv
    root = str(Path(root).resolve())
    os.chdir(root)
    sys.path.insert(0, root)
    collector = Collector()
    args = ["-c", ini, "--rootdir", root, "--collect-only", "-q", "-p", "no:cacheprovider"]
    args += ["--continue-on-collection-errors", *[str(Path(root) / f) for f in files]]
    pytest.main(args, plugins=[collector])
    Path(out).write_text(json.dumps({"items": collector.items, "errors": collector.errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
