"""The README and every docs/ page say only what is true of the repository: each `make X` is a Makefile target, each
`python -m M` a module on disk, each repository path a file or folder that exists, each link and image a file; the
README is a short front door that links every page. Reads files only: imports nothing of the project."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CONVENTIONS.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGE_IDS = [page.relative_to(ROOT).as_posix() for page in PAGES]
README_MAX_LINES = 250

# The student release's own README and Makefile: grading/templates/student/ before the layout change,
# grading/build/templates/student/ after it.
STUDENT_TEMPLATES = [ROOT / "grading" / "build" / "templates" / "student", ROOT / "grading" / "templates" / "student"]

# Modules a page may run that are not the repository's.
EXTERNAL_MODULES = {"pip", "pytest", "venv"}
# Top-level folders whose paths a page names as things that exist; data/ is left out (a page names the files it
# tells you to download or build there), and so are outputs such as runs/ and dist/.
REPO_FOLDERS = ("assignment", "lmkit", "lmrun", "grading", "tests", "bench", "notebooks", "docs")
FILE_SUFFIXES = ("py", "md", "png", "ipynb", "txt", "toml", "json", "patch", "cfg", "yaml", "yml", "sh")
REPO_PATH = re.compile(rf"(?<![\w./~-])((?:{'|'.join(REPO_FOLDERS)})/[\w./-]*)")
MAKE = re.compile(r"(?<![\w-])make ([a-z][\w-]*)")
PYTHON_M = re.compile(r"\bpython3? -m\s+([A-Za-z_][\w.]*)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _make_targets(makefile: Path) -> set[str]:
    """The targets a Makefile defines: `name:` at the start of a line (not `NAME := value`)."""
    return set(re.findall(r"^([a-z][\w-]*)\s*:(?!=)", makefile.read_text(encoding="utf-8"), flags=re.M))


def _code(page: Path) -> str:
    """The text of a page's code: fenced blocks and inline code spans (which may wrap onto the next line)."""
    text = page.read_text(encoding="utf-8")
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    inline = re.findall(r"`([^`]+)`", prose)
    return "\n".join(fenced + inline)


def _module_path(module: str) -> Path | None:
    """Where `python -m module` would find the module in the repository, by path alone: a/b.py, or the package
    a/b/ with the __main__.py that running a package needs; None when neither exists."""
    base = ROOT.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__main__.py").is_file():
        return base / "__main__.py"
    return None


def _repo_paths(page: Path) -> set[str]:
    """The repository paths a page names: files with a known suffix (`lmkit/data.py`, `docs/img/x.png`) and folders
    (`grading/checks/bugs/`, also as the fixed part of `grading/checks/bugs/<module>/*.patch`); a pattern's partial
    file name (`tests/test_<module>.py`, `bench/bench_*.py`) or a capital placeholder (`assignment/X.py`) names
    nothing."""
    named = set()
    for match in REPO_PATH.finditer(page.read_text(encoding="utf-8")):
        path = match.group(1).rstrip(".")
        name = path.rsplit("/", 1)[-1]
        if path.endswith("/") or "." in name and name.rsplit(".", 1)[-1] in FILE_SUFFIXES and not name[0].isupper():
            named.add(path)
    return named


def _local_links(page: Path) -> set[str]:
    """The page's links and images that point into the repository, without their #anchor."""
    targets = {target.split("#")[0] for target in LINK.findall(page.read_text(encoding="utf-8"))}
    return {t for t in targets if t and "://" not in t and not t.startswith("mailto:")}


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_make_targets_exist(page):
    targets = _make_targets(ROOT / "Makefile")
    quoted = set(MAKE.findall(_code(page)))
    missing = sorted(quoted - targets)
    assert not missing, f"{page.name} quotes make targets the Makefile lacks: {missing}"


def test_readme_setup_is_make_train_and_make_test():
    text = README.read_text(encoding="utf-8")
    setup = re.search(r"^## Set-up.*?^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    assert setup, "the README has no `## Set-up` section with a code block"
    commands = [line.split("#")[0].strip() for line in setup.group(1).splitlines() if line.strip()]
    assert commands == ["make train", "make test"], f"the README's set-up is `make train` and `make test`: {commands}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_m_modules_exist(page):
    modules = set(PYTHON_M.findall(_code(page)))
    problems = []
    for module in sorted(modules):
        if module.split(".")[0] in EXTERNAL_MODULES:
            continue
        if not (ROOT / module.split(".")[0]).exists():
            problems.append(f"{module} (not a module of this repository)")
        elif _module_path(module) is None:
            where = module.replace(".", "/")
            problems.append(f"{module} (neither {where}.py nor {where}/__main__.py)")
    assert not problems, f"{page.name} runs `python -m` modules that do not exist: {problems}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_repository_paths_exist(page):
    named = _repo_paths(page)
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.name} names repository paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_links_and_images_exist(page):
    missing = sorted(t for t in _local_links(page) if not (page.parent / t).exists())
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent.name == "docs"], ids=lambda p: p.name)
def test_docs_page_opens_with_what_it_holds(page):
    lines = page.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("# "), f"{page.name} does not open with a title"
    opening = next((line for line in lines[1:] if line.strip()), "")
    assert opening[:1].isalpha(), f"{page.name} does not open with a sentence saying what it holds: {opening!r}"


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}, the rest in docs/"


def test_readme_links_every_docs_page():
    linked = {(ROOT / t).resolve() for t in _local_links(README)}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds no page"
    unlinked = [p.relative_to(ROOT).as_posix() for p in pages if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link these docs pages: {unlinked}"


def test_student_readme_make_targets_exist():
    templates = next((t for t in STUDENT_TEMPLATES if (t / "README.md").is_file()), None)
    assert templates is not None, f"no student README in {[t.relative_to(ROOT).as_posix() for t in STUDENT_TEMPLATES]}"
    targets = _make_targets(templates / "Makefile")
    quoted = set(MAKE.findall(_code(templates / "README.md")))
    missing = sorted(quoted - targets)
    assert not missing, f"the student README quotes make targets its Makefile lacks: {missing}"
