"""YAML text -> plain Python data, with the line and column of every key and value.

We compose the node tree with ruamel.yaml (YAML 1.2: `yes`/`no` and `22:22` stay strings)
and build plain dicts, lists and scalars ourselves, so that every duplicate key is reported
with its own line, positions survive for every path, and no ruamel types leak out. Keys
are always read as the text the user wrote (`1:` is the key "1").
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scanner import Scanner

from harness.errors import Problem
from harness.topology._paths import Path, format_path, printable

_T = "tag:yaml.org,2002:"
_MAX_ALIASED = 50_000  # values built again through aliases: they can expand exponentially
_MAX_DEPTH = 20  # a topology is 6 levels deep; far deeper nesting is a mistake or an attack
_MAX_MERGES = 10  # `<<:` merges inside merged mappings: each level repeats the work below
_MAX_NESTING = 100  # what the parser reads at all: each level makes ruamel slower and deeper
_BREAK = re.compile("\r\n|[\r\n]")  # YAML 1.2 line breaks (NEL, LS and PS are not)
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEY_TAGS = {_T + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_YAML_DIRECTIVE = re.compile(r"^\ufeff?%YAML[ \t]+(\S+)", re.MULTILINE)  # a BOM may come first

Pos = tuple[int, int]  # 1-based line, column


class _TooDeep(YAMLError):
    """The text nests collections deeper than `_MAX_NESTING`; `mark` is where."""

    def __init__(self, mark: Any) -> None:
        super().__init__("nested too deeply")
        self.mark = mark


class _Scanner(Scanner):
    """ruamel's scanner, stopping at `_MAX_NESTING` levels of nesting.

    Every open flow collection makes each later token slower to scan (seconds for a few
    thousand `[`), and the composer recurses once per level: stop before either hurts.
    """

    def fetch_more_tokens(self) -> Any:
        result = super().fetch_more_tokens()
        if self.flow_level + len(self.indents) > _MAX_NESTING:
            raise _TooDeep(self.reader.get_mark())
        return result


@dataclass
class Document:
    """The plain data of a YAML file and where each piece of it was written."""

    data: Any
    keys: dict[Path, Pos] = field(default_factory=dict)
    values: dict[Path, Pos] = field(default_factory=dict)

    def key_pos(self, path: Path) -> Pos:
        """Where the key of `path` is; the value's position for list items and the root."""
        if path in self.keys:
            return self.keys[path]
        return self.value_pos(path)

    def value_pos(self, path: Path) -> Pos:
        """Where the value at `path` is, or the nearest known enclosing position."""
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))


def compose(text: str, filename: str) -> tuple[Document | None, list[Problem]]:
    """Parse `text`; on a syntax error the document is None and one problem says where."""
    problems: list[Problem] = []
    for match in _YAML_DIRECTIVE.finditer(text):
        if match.group(1) != "1.2":
            line = text.count("\n", 0, match.start()) + 1
            problems.append(
                Problem(
                    filename,
                    line,
                    1,
                    "",
                    printable(f"%YAML {match.group(1)} directive: topologies are read as YAML 1.2"),
                    "remove the %YAML line",
                )
            )
    if problems:
        return None, problems
    try:
        with warnings.catch_warnings():
            # YAML allows an anchor to be defined again (aliases use the latest); ruamel
            # warns about it, and a warning must not escape a pure parse.
            warnings.simplefilter("ignore", ReusedAnchorWarning)
            yaml = YAML(typ="safe", pure=True)
            yaml.Scanner = _Scanner
            node = yaml.compose(text)
    except _TooDeep as exc:
        line, column = exc.mark.line + 1, exc.mark.column + 1
        message = "the document is nested far too deeply"
        return None, [Problem(filename, line, column, "", message, "remove the nesting")]
    except MarkedYAMLError as exc:
        return None, [_syntax_problem(exc, filename)]
    except ReaderError as exc:
        line, column = line_col(text, exc.position)
        message = f"character {exc.character!r} is not allowed in YAML ({exc.reason})"
        return None, [Problem(filename, line, column, "", message, "remove the character")]
    except RecursionError:
        message = "the document is nested far too deeply"
        return None, [Problem(filename, 1, 1, "", message, "remove the nesting")]
    except YAMLError as exc:  # pragma: no cover - ruamel raises marked errors in practice
        return None, [Problem(filename, 1, 1, "", f"not valid YAML: {exc}", "fix the syntax")]
    if node is None:
        return None, [
            Problem(
                filename,
                1,
                1,
                "",
                "the file is empty",
                "a topology needs at least `name:` and `hosts:` (see docs/topology.md)",
            )
        ]
    builder = _Builder(filename)
    data = builder.build(node, ())
    return Document(data, builder.keys, builder.values), builder.problems


def _syntax_problem(exc: MarkedYAMLError, filename: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = exc.problem or exc.context or "not valid YAML"
    if "'\\t'" in problem:
        return Problem(
            filename,
            line,
            column,
            "",
            "a tab character cannot be used here",
            "indent and separate with spaces, not tabs",
        )
    context = ""
    if exc.context and exc.problem:
        context = f" ({exc.context}"
        if exc.context_mark is not None and exc.context_mark is not mark:
            context += f" that starts at {exc.context_mark.line + 1}:{exc.context_mark.column + 1}"
        context += ")"
    message = printable(f"not valid YAML: {problem}{context}")
    return Problem(filename, line, column, "", message, _hint(problem))


def _hint(problem: str) -> str:
    if "mapping values are not allowed" in problem:
        return "quote a value that contains ': ', or fix the indentation of this line"
    if "undefined alias" in problem:
        return "define the anchor (&name) before using the alias (*name)"
    if "another document" in problem:
        return "keep one topology per file (one YAML document, a single ---)"
    return "fix the YAML syntax at this position"


def line_col(text: str, index: int) -> Pos:
    """The 1-based line and column of `text[index]`, counting lines as YAML does."""
    line, start = 1, 0
    for match in _BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1


def _pos(node: Node) -> Pos:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.keys: dict[Path, Pos] = {}
        self.values: dict[Path, Pos] = {}
        self.problems: list[Problem] = []
        self._reported: set[Problem] = set()
        # Nodes hash by identity. (Not id(): every call of id() is an audit event.)
        self._built: set[Node] = set()  # nodes built once: building one again is an alias
        self._aliased = 0  # values built again through aliases
        self._active: set[Node] = set()  # nodes being built right now, to catch recursion
        self._merges = 0  # `<<:` merges being built right now, one inside the other
        self._too_big = False

    def problem(self, pos: Pos, path: Path, message: str, fix: str) -> None:
        message, fix = printable(message), printable(fix)
        problem = Problem(self.filename, *pos, format_path(path), message, fix)
        if problem not in self._reported:  # a node reached again through aliases
            self._reported.add(problem)
            self.problems.append(problem)

    def build(self, node: Node, path: Path) -> Any:
        self.values.setdefault(path, _pos(node))
        if len(path) > _MAX_DEPTH:
            self.problem(
                _pos(node), path[:_MAX_DEPTH], "values are nested too deeply", "remove the nesting"
            )
            return None
        if not self._enter(node, path):
            return None
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                if node.tag not in (_T + "seq",):
                    self._bad_tag(node, path)
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._active.discard(node)

    def _enter(self, node: Node, path: Path) -> bool:
        """Start building `node`; False, with a problem, for an alias bomb or recursion."""
        if node in self._built:
            self._aliased += 1
            if self._aliased > _MAX_ALIASED:
                if not self._too_big:
                    self._too_big = True
                    self.problem(
                        _pos(node),
                        path,
                        f"the document expands to more than {_MAX_ALIASED} values through aliases",
                        "use fewer aliases (*name)",
                    )
                return False
        self._built.add(node)
        if node in self._active:
            self.problem(_pos(node), path, "an alias refers to itself", "remove the recursion")
            return False
        self._active.add(node)
        return True

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        if node.tag != _T + "map":
            self._bad_tag(node, path)
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merged: set[str] = set()  # keys that came from `<<:` and may be overridden
        for key_node, value_node in node.value:
            if key_node.tag == _T + "merge":
                self._merge(value_node, path, result, merged)
                continue
            if not isinstance(key_node, ScalarNode):
                self.problem(
                    _pos(key_node),
                    path,
                    "a key must be plain text, not a list or mapping",
                    "write the key as a name",
                )
                continue
            key = self._text(key_node, path, key=True)
            if key_node.tag not in _KEY_TAGS:
                self._bad_tag(key_node, (*path, key))
            if key in result and key not in merged:
                self.problem(
                    _pos(key_node),
                    (*path, key),
                    f"duplicate key {key!r} (first on line {first_line[key]})",
                    "remove one of them, or rename it",
                )
                continue
            merged.discard(key)
            first_line[key] = key_node.start_mark.line + 1
            self.keys[(*path, key)] = _pos(key_node)
            value_path = (*path, key)
            if _is_empty(value_node):  # `key:` with nothing after it: point at the key
                self.values[value_path] = _pos(key_node)
            result[key] = self.build(value_node, value_path)
        return result

    def _merge(self, value: Node, path: Path, result: dict[str, Any], merged: set[str]) -> None:
        sources = value.value if isinstance(value, SequenceNode) else [value]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.problem(
                    _pos(source),
                    path,
                    "`<<:` merges only mappings",
                    "point it at a mapping anchor (*name)",
                )
                continue
            if self._merges >= _MAX_MERGES:
                self.problem(
                    _pos(source),
                    path,
                    "merges (`<<:`) are nested too deeply",
                    "merge mappings that do not themselves merge so many others",
                )
                continue
            if not self._enter(source, path):
                continue
            outer = self.keys, self.values
            self.keys, self.values = {}, {}
            self._merges += 1
            try:
                built = self._mapping(source, path)
            finally:
                self._merges -= 1
                self._active.discard(source)
                inner, self.keys, self.values = (self.keys, self.values), *outer
            added = {key for key in built if key not in result}
            for key in added:  # keys written in the mapping itself win over merged ones
                result[key] = built[key]
                merged.add(key)
            depth = len(path)
            for positions, found in zip((self.keys, self.values), inner, strict=True):
                for where, pos in found.items():
                    if len(where) > depth and where[depth] in added:
                        positions[where] = pos

    def _text(self, node: Node, path: Path, *, key: bool = False) -> str:
        """The text of a scalar or key; an escaped surrogate (`"\\ud800"`) is no character."""
        text = str(node.value)
        if _SURROGATE.search(text):
            try:  # a pair of escapes (JSON writes emoji so) is the character it encodes
                text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                written, text = text, _SURROGATE.sub("\ufffd", text)
                self.problem(
                    _pos(node),
                    (*path, text) if key else path,
                    f"{written!r} has an escape of half a UTF-16 pair, which is no character",
                    "write the character itself, or its \\UXXXXXXXX escape",
                )
        return text

    def _scalar(self, node: Node, path: Path) -> Any:
        text = self._text(node, path)
        tag = node.tag
        if tag == _T + "str" or tag == _T + "timestamp":
            return text
        if tag == _T + "null":
            return None
        if tag == _T + "bool":
            return text.lower() == "true"
        if tag == _T + "int":
            return _to_int(text)
        if tag == _T + "float":
            return _to_float(text)
        self._bad_tag(node, path)
        return text

    def _bad_tag(self, node: Node, path: Path) -> None:
        self.problem(
            _pos(node),
            path,
            f"unsupported YAML tag {node.tag}",
            "remove the tag; topologies use plain mappings, lists and scalars",
        )


def _is_empty(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _T + "null" and node.value == ""


def _to_int(text: str) -> int | str:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
    try:
        number = sign * int(digits[2:] if base != 10 else digits, base)
        str(number)  # Python cannot print ints of more than 4300 digits: keep those as text
    except ValueError:
        return text
    return number


def _to_float(text: str) -> float | str:
    lowered = text.replace("_", "").lower()
    specials = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    if lowered in specials:
        return specials[lowered]
    try:
        return float(lowered)
    except ValueError:
        return text
