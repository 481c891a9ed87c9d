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

from harness.errors import Problem
from harness.topology._paths import Path, format_path

_T = "tag:yaml.org,2002:"
_MAX_NODES = 200_000  # aliases can expand exponentially ("billion laughs"); stop early
_MAX_DEPTH = 20  # a topology is 6 levels deep; far deeper nesting is a mistake or an attack
_YAML_DIRECTIVE = re.compile(r"^%YAML[ \t]+(\S+)", re.MULTILINE)

Pos = tuple[int, int]  # 1-based line, column


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
                    f"%YAML {match.group(1)} directive: topologies are read as YAML 1.2",
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
            node = YAML(typ="rt").compose(text)
    except MarkedYAMLError as exc:
        return None, [_syntax_problem(exc, filename)]
    except ReaderError as exc:
        line, column = _line_col(text, exc.position)
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
    return Problem(
        filename, line, column, "", f"not valid YAML: {problem}{context}", _hint(problem)
    )


def _hint(problem: str) -> str:
    if "mapping values are not allowed" in problem:
        return "quote a value that contains ': ', or fix the indentation of this line"
    if "undefined alias" in problem:
        return "define the anchor (&name) before using the alias (*name)"
    if "another document" in problem:
        return "keep one topology per file (one YAML document, a single ---)"
    return "fix the YAML syntax at this position"


def _line_col(text: str, index: int) -> Pos:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def _pos(node: Node) -> Pos:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.keys: dict[Path, Pos] = {}
        self.values: dict[Path, Pos] = {}
        self.problems: list[Problem] = []
        self._count = 0
        self._active: set[int] = set()  # nodes being built right now, to catch recursion
        self._too_big = False

    def problem(self, pos: Pos, path: Path, message: str, fix: str) -> None:
        self.problems.append(Problem(self.filename, *pos, format_path(path), message, fix))

    def build(self, node: Node, path: Path) -> Any:
        self.values.setdefault(path, _pos(node))
        self._count += 1
        if self._count > _MAX_NODES:
            if not self._too_big:
                self._too_big = True
                self.problem(
                    _pos(node),
                    path,
                    f"the document expands to more than {_MAX_NODES} values through aliases",
                    "use fewer aliases (*name)",
                )
            return None
        if len(path) > _MAX_DEPTH:
            self.problem(
                _pos(node), path[:_MAX_DEPTH], "values are nested too deeply", "remove the nesting"
            )
            return None
        if id(node) in self._active:
            self.problem(_pos(node), path, "an alias refers to itself", "remove the recursion")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                if node.tag not in (_T + "seq",):
                    self._bad_tag(node, path)
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

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
            key = str(key_node.value)
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
            outer = self.keys, self.values
            self.keys, self.values = {}, {}
            built = self._mapping(source, path)
            inner, self.keys, self.values = (self.keys, self.values), *outer
            for key, item in built.items():
                if key in result:
                    continue  # keys written in the mapping itself win over merged ones
                result[key] = item
                merged.add(key)
                for positions, found in zip((self.keys, self.values), inner, strict=True):
                    for where, pos in found.items():
                        if where[: len(path) + 1] == (*path, key):
                            positions[where] = pos

    def _scalar(self, node: Node, path: Path) -> Any:
        text = str(node.value)
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
        return sign * int(digits[2:] if base != 10 else digits, base)
    except ValueError:
        return text


def _to_float(text: str) -> float | str:
    lowered = text.replace("_", "").lower()
    specials = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    if lowered in specials:
        return specials[lowered]
    try:
        return float(lowered)
    except ValueError:
        return text
