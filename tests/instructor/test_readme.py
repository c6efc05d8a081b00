"""Every command the README quotes exists: `make` targets in the Makefile, `python -m` modules and scripts on disk."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _make_targets(makefile):
    return set(re.findall(r"^([a-z][a-z_-]*):", makefile.read_text(), flags=re.M))


def _quoted_commands(readme):
    text = readme.read_text()
    code = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    return "\n".join(code)


def test_readme_make_targets_exist():
    targets = _make_targets(ROOT / "Makefile")
    quoted = set(re.findall(r"\bmake ([a-z][a-z_-]*)", _quoted_commands(ROOT / "README.md")))
    assert quoted, "the README quotes no make target"
    assert {"train", "test"} <= quoted, "the README's set-up is `make train` and `make test`"
    assert quoted <= targets, f"README quotes make targets the Makefile lacks: {sorted(quoted - targets)}"


def test_readme_modules_and_scripts_exist():
    commands = _quoted_commands(ROOT / "README.md")
    modules = set(re.findall(r"python -m ([\w.]+)", commands)) - {"pip", "pytest", "venv"}
    missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
    assert not missing, f"README quotes modules that do not exist: {missing}"
    scripts = set(re.findall(r"\b((?:bench|grading|assignment)/[\w/]+\.py)\b", commands))
    missing = [s for s in sorted(scripts) if not (ROOT / s).exists()]
    assert not missing, f"README quotes scripts that do not exist: {missing}"


def test_student_readme_make_targets_exist():
    templates = ROOT / "grading" / "templates" / "student"
    targets = _make_targets(templates / "Makefile")
    quoted = set(re.findall(r"\bmake ([a-z][a-z_-]*)", _quoted_commands(templates / "README.md")))
    assert quoted <= targets, f"the student README quotes make targets its Makefile lacks: {sorted(quoted - targets)}"


def test_readme_links_and_images_exist():
    text = (ROOT / "README.md").read_text()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)}
    local = {t for t in targets if t and "://" not in t}
    missing = [t for t in sorted(local) if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
