"""Solution markers: find every `# BEGIN SOLUTION` / `# END SOLUTION` region of a module and turn it into a stub.

A region is a run of whole statements inside one function or method body, fenced by two whole-line comments at the
indentation of the code they fence (CONVENTIONS.md). The stub keeps everything outside the region (signature,
docstring, the TODO comment right above the region, code after it) and puts in its place one line:

    raise NotImplementedError("<Class.function>: <first TODO line> — see the TODO above")

Anything else (unbalanced or nested markers, a marker at module or class level, a malformed or trailing marker, a
region that cuts a statement in two) is refused with a `MarkerError` naming `file:line`.
"""

import ast
import io
import json
import re
import tokenize
from dataclasses import dataclass, field

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
# Anything that looks like a marker, so a typo ("#BEGIN SOLUTION", "# end solution") is refused, never ignored.
LOOKS_LIKE_MARKER = re.compile(r"#\s*(BEGIN|END)[\s_-]*SOLUTION", re.IGNORECASE)
TODO = re.compile(r"^#\s*TODO\b:?\s*(.*)$")


class MarkerError(Exception):
    """A marker problem, printed as `path:line: message` so an editor can jump to it."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass
class Region:
    """One solution region: its marker lines (1-based), the function it sits in and the TODO above it."""

    path: str
    begin: int
    end: int
    indent: str
    qualname: str
    todo: list[str] = field(default_factory=list)  # the comment lines right above BEGIN, without their indentation

    @property
    def first_todo(self) -> str | None:
        """The text of the first `# TODO` line above the region, or None when there is none."""
        for i, line in enumerate(self.todo):
            match = TODO.match(line.strip())
            if match:
                text = match.group(1).strip()
                if text and i + 1 < len(self.todo) and text[-1] not in ".)!?:":
                    text += " …"  # the sentence goes on in the next comment line
                return text or None
        return None

    @property
    def message(self) -> str:
        """The NotImplementedError message of the stub."""
        todo = self.first_todo
        if todo is None:
            return f"{self.qualname}: not implemented yet — see the docstring above"
        return f"{self.qualname}: {todo} — see the TODO above"

    def stub_line(self, newline: str = "\n") -> str:
        """The line that replaces the region in the stub: `raise NotImplementedError(message)`."""
        return f"{self.indent}raise NotImplementedError({json.dumps(self.message, ensure_ascii=False)}){newline}"


def _marker_comments(source, path):
    """Yields (kind, line, column) of every marker comment; refuses near-misses and trailing markers."""
    lines = source.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        line = getattr(exc, "lineno", None) or (exc.args[1][0] if len(exc.args) > 1 else 1)
        raise MarkerError(path, line, f"does not tokenize: {exc}") from None
    for tok in tokens:
        if tok.type != tokenize.COMMENT or not LOOKS_LIKE_MARKER.search(tok.string):
            continue
        row, col = tok.start
        text = tok.string.strip()
        if lines[row - 1][:col].strip():
            raise MarkerError(path, row, f"a solution marker must be a whole-line comment, not trailing code: {text!r}")
        if text not in (BEGIN, END):
            raise MarkerError(path, row, f"malformed solution marker {text!r}: write exactly {BEGIN!r} or {END!r}")
        yield ("begin" if text == BEGIN else "end"), row, col


def _pairs(source, path):
    """Pairs BEGIN with END markers in order; refuses nesting and imbalance."""
    open_at = None
    for kind, row, col in _marker_comments(source, path):
        if kind == "begin":
            if open_at is not None:
                raise MarkerError(path, row, f"nested {BEGIN!r}: the region opened at line {open_at[0]} is not closed")
            open_at = (row, col)
        else:
            if open_at is None:
                raise MarkerError(path, row, f"{END!r} without a matching {BEGIN!r} above it")
            if col != open_at[1]:
                raise MarkerError(path, row, f"{END!r} is indented differently from its {BEGIN!r} at line {open_at[0]}")
            yield open_at[0], row, col
            open_at = None
    if open_at is not None:
        raise MarkerError(path, open_at[0], f"{BEGIN!r} is never closed by an {END!r}")


def _statement_blocks(tree):
    """Yields (owner_chain, statements) for every statement list of the module; owner_chain runs outermost first."""

    def visit(node, chain):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield chain + [node], block
                for stmt in block:
                    yield from visit(stmt, chain + [node])
        for handler in getattr(node, "handlers", None) or []:
            yield from visit(handler, chain + [node])
        for case in getattr(node, "cases", None) or []:  # match statements
            yield from visit(case, chain + [node])

    yield from visit(tree, [])


def _enclosing(tree, begin, end, col, path):
    """Finds the function owning the statements between two marker lines and checks the region is well formed."""
    for node in ast.walk(tree):
        simple = isinstance(node, ast.stmt) and not hasattr(node, "body")
        if simple and (node.lineno < begin <= node.end_lineno or node.lineno < end <= node.end_lineno):
            line = begin if node.lineno < begin <= node.end_lineno else end
            raise MarkerError(path, line, "the solution region cuts a statement in two: fence whole statements only")
    best = None
    for chain, block in _statement_blocks(tree):
        inside = [s for s in block if begin < s.lineno < end]
        if inside:  # blocks come parent first: the first match holds the region's top-level statements
            best = (chain, block, inside)
            break
    if best is None:
        raise MarkerError(path, begin, "empty solution region: put at least one statement between the markers")
    chain, block, inside = best
    first, last = inside[0], inside[-1]
    straddling = [s for s in block if s.lineno < begin <= s.end_lineno or s.lineno < end <= s.end_lineno]
    if straddling or last.end_lineno >= end:
        raise MarkerError(path, begin, "the solution region cuts a statement in two: fence whole statements only")
    if first.col_offset != col:
        raise MarkerError(
            path, begin, f"{BEGIN!r} must be at the indentation of the code it fences (column {first.col_offset})"
        )
    # The innermost definition must be a function: a region at module level or in a class body has no stub to become.
    names, owner = [], None
    for node in chain:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
            owner = node
    if not isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef)):
        where = "module level" if owner is None else f"the body of class {owner.name}"
        raise MarkerError(path, begin, f"solution markers must sit inside a function or method body, not at {where}")
    return ".".join(names)


def find_regions(source: str, path: str = "<source>") -> list[Region]:
    """Returns the solution regions of `source` in order, or raises MarkerError naming the first problem."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise MarkerError(path, exc.lineno or 1, f"does not parse: {exc.msg}") from None
    lines = source.splitlines()
    regions = []
    for begin, end, col in _pairs(source, path):
        qualname = _enclosing(tree, begin, end, col, path)
        todo = []
        row = begin - 1
        while row >= 1 and lines[row - 1].strip().startswith("#"):
            todo.insert(0, lines[row - 1].strip())
            row -= 1
        indent = lines[begin - 1][: len(lines[begin - 1]) - len(lines[begin - 1].lstrip())]
        regions.append(Region(path, begin, end, indent, qualname, todo))
    return regions


def stub_source(source: str, path: str = "<source>") -> tuple[str, list[Region]]:
    """Returns (stubbed source, regions): each region replaced by its one-line NotImplementedError stub."""
    regions = find_regions(source, path)
    lines = source.splitlines(keepends=True)
    for region in reversed(regions):
        begin_line = lines[region.begin - 1]
        newline = begin_line[len(begin_line.rstrip("\r\n")) :] or "\n"
        lines[region.begin - 1 : region.end] = [region.stub_line(newline)]
    stubbed = "".join(lines)
    try:
        ast.parse(stubbed, filename=path)
    except SyntaxError as exc:  # a well-formed region always leaves a valid block; this guards the builder itself
        raise MarkerError(path, exc.lineno or 1, f"the stubbed module does not parse: {exc.msg}") from None
    return stubbed, regions


def solution_lines(source: str, regions: list[Region]) -> set[str]:
    """Returns the set of stripped lines strictly inside the regions of `source`."""
    lines = source.splitlines()
    inside = set()
    for region in regions:
        inside.update(line.strip() for line in lines[region.begin : region.end - 1])
    return inside


def outside_lines(source: str, regions: list[Region]) -> set[str]:
    """Returns the set of stripped lines of `source` outside every region (markers excluded)."""
    lines = source.splitlines()
    skip = set()
    for region in regions:
        skip.update(range(region.begin, region.end + 1))
    return {line.strip() for row, line in enumerate(lines, 1) if row not in skip}
