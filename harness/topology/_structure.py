"""Structural validation: the raw pydantic models, errors mapped back to lines.

Every pydantic error becomes a `Problem` at the key or value it is about. Then the broken
parts are cut out (a bad route, a bad network, an unknown key) and what is left is
validated again, so the semantic checks still run on everything else. `Damage` records
what was cut, so that no check reports a follow-on error of something already reported.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from harness.errors import Problem
from harness.topology._paths import Path, format_path, printable
from harness.topology._raw import UNION_TAGS, RawTopology
from harness.topology._yaml import Document


@dataclass
class Damage:
    """Parts of the document cut out because their structure was wrong."""

    name: bool = False  # `name` is missing or not text
    all_networks: bool = False  # `networks` is not a mapping: every reference is unknown
    networks: set[str] = field(default_factory=set)  # networks that are not even mappings
    incomplete_networks: set[str] = field(default_factory=set)  # a bad or unknown key cut
    uncertain_hosts: set[str] = field(default_factory=set)  # hosts whose networks are unsure
    kept: dict[Path, list[int]] = field(default_factory=dict)  # indices of surviving items

    def indices(self, path: Path, count: int) -> list[int]:
        """Original indices of the `count` surviving items of the list at `path`."""
        return self.kept.get(path, list(range(count)))


def check_structure(
    doc: Document, filename: str
) -> tuple[RawTopology | None, Damage, list[Problem]]:
    """Validate the shape of `doc`; return what survives, what was cut, and the problems."""
    damage = Damage()
    if not isinstance(doc.data, dict):
        line, column = doc.value_pos(())
        got = describe(doc.data)
        message = f"the top level must be a mapping with name, networks and hosts, got {got}"
        fix = "start the file with `name: <topology name>` (see docs/topology.md)"
        return None, damage, [Problem(filename, line, column, "", message, fix)]
    try:
        return RawTopology.model_validate(doc.data), damage, []
    except ValidationError as exc:
        errors = exc.errors()
    problems: list[Problem] = []
    cuts: set[Path] = set()
    for error in errors:
        loc = clean_loc(error["loc"])
        problems.append(_problem(error, loc, doc, filename))
        cuts.add(_cut(loc, error["type"]))
    pruned = _prune(doc.data, cuts, damage)
    try:
        return RawTopology.model_validate(pruned), damage, problems
    except ValidationError:  # pragma: no cover - pruning removes every reported error
        return None, damage, problems


def clean_loc(loc: tuple[str | int, ...]) -> Path:
    """Drop the union tags pydantic puts into error locations (see `_raw`)."""
    path = list(loc)
    # hosts.<h>.networks.<n>.<tag>... and hosts.<h>.sysctls.<k>.<tag>: discriminated unions
    if len(path) > 4 and path[0] == "hosts" and path[2] in ("networks", "sysctls"):
        del path[4]
    # from, to and ports in rules and expectations: their tags are all in UNION_TAGS
    return tuple(p for p in path if p not in UNION_TAGS)


def _cut(loc: Path, kind: str) -> Path:
    """The part that goes when `loc` is wrong: the key itself, a field, a route, a host."""
    if kind == "extra_forbidden":
        return loc  # dropping an unknown key invalidates nothing else
    if loc[:1] == ("networks",):
        return loc[:3]  # the network, or just its bad field
    if loc[:1] == ("expect",):
        return loc[:2]  # the whole entry
    if loc[:1] == ("hosts",) and len(loc) >= 6 and loc[2] == "firewall" and loc[4] == "rules":
        return loc[:6]  # one rule
    if loc[:1] == ("hosts",) and len(loc) >= 4:
        if loc[2] in ("ssh", "command"):
            return loc[:3]  # goes whole: a field or word cut could leave it incomplete
        if loc[2] == "networks":
            return loc[:5]  # the attachment, or just its bad field
        if loc[2] == "run" and len(loc) >= 5 and loc[4] in _OPTIONAL_PROGRAM_KEYS:
            return loc[:6] if loc[4] == "env" else loc[:5]  # one variable, or the key

        return loc[:4]  # one route, service, sysctl or program
    return loc[:3]


def _prune(data: dict[str, Any], cuts: set[Path], damage: Damage) -> dict[str, Any]:
    pruned: dict[str, Any] = _copy(data)
    dropped: dict[Path, set[int]] = {}
    for cut in cuts:
        _taint(cut, damage)
        if cut == ("name",):
            pruned["name"] = ""  # placeholder; the name is not checked again
        elif cut == ("hosts",):
            pruned["hosts"] = {}
        elif cut == ("networks",):
            pruned["networks"] = {}
        elif isinstance(cut[-1], int):
            dropped.setdefault(cut[:-1], set()).add(cut[-1])
        else:
            parent: Any = pruned
            try:
                for part in cut[:-1]:
                    parent = parent[part]
                parent.pop(cut[-1], None)
            except (KeyError, IndexError, TypeError, AttributeError):  # pragma: no cover
                pass  # already inside something cut
    for path, indices in dropped.items():
        items: Any = pruned
        for part in path:  # a route, service, rule or expectation inside something cut
            items = items.get(part) if isinstance(items, dict) else None
        if not isinstance(items, list):
            continue
        damage.kept[path] = [i for i in range(len(items)) if i not in indices]
        parent = pruned
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = [items[i] for i in damage.kept[path]]
    return pruned


def _copy(value: Any) -> Any:
    """A copy of YAML data, whose mappings and lists are never shared (see `_yaml`).

    Not copy.deepcopy: it calls id() on every value, an audit event each, and an alias
    bomb cut short still has tens of thousands of values.
    """
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _taint(cut: Path, damage: Damage) -> None:
    """Record what a cut makes unknown, so no check reports a follow-on error."""
    if cut == ("name",):
        damage.name = True
    elif cut == ("networks",):
        damage.all_networks = True
    elif cut[0] == "networks" and len(cut) == 2:
        damage.networks.add(str(cut[1]))
    elif cut[0] == "networks":
        damage.incomplete_networks.add(str(cut[1]))  # a subnet may be missing or misspelt
    elif cut[0] == "hosts" and len(cut) >= 3 and cut[2] not in _INDEPENDENT:
        damage.uncertain_hosts.add(str(cut[1]))  # maybe a misspelt `networks`, or a bad one


_OPTIONAL_PROGRAM_KEYS = ("user", "env", "cwd", "ready")  # a program is whole without them
_INDEPENDENT = (
    "routes",
    "services",
    "sysctls",
    "firewall",
    "nft",
    "run",
    "command",
)  # cut: networks still sure


def _problem(error: ErrorDetails, loc: Path, doc: Document, filename: str) -> Problem:
    kind = error["type"]
    value = error["input"]
    if kind == "extra_forbidden":
        line, column = doc.key_pos(loc)
        message, fix = _unknown_key(loc)
    elif kind == "missing":
        line, column = doc.value_pos(loc[:-1])
        message, fix = _missing(loc)
    else:
        line, column = doc.value_pos(loc)
        message, fix = _wrong_value(error, loc, value)
    return Problem(filename, line, column, format_path(loc), printable(message), printable(fix))


def _unknown_key(loc: Path) -> tuple[str, str]:
    key = str(loc[-1])
    model = model_at(loc[:-1])
    allowed = list(_fields(model)) if model else []
    fix = f"allowed keys here: {', '.join(allowed)}"
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        fix = f"did you mean {close[0]!r}? {fix}"
    return f"unknown key {key!r}", fix


def _missing(loc: Path) -> tuple[str, str]:
    key = str(loc[-1])
    model = model_at(loc[:-1])
    info = _fields(model).get(key) if model else None
    example = f" {_flow(info.examples[0])}" if info is not None and info.examples else ""
    return f"missing required key {key!r}", f"add `{key}:{example}`"


def _wrong_value(error: ErrorDetails, loc: Path, value: Any) -> tuple[str, str]:
    kind = error["type"]
    got = describe(value)
    under = loc[2] if len(loc) == 4 and loc[0] == "hosts" else None  # hosts.h.<under>.x
    if kind == "string_type":
        return _not_text(loc, value, got, under)
    if kind == "bool_type":
        if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
            return f"expected true or false, got {got}", "write true or false (yes/no are text)"
        return f"expected true or false, got {got}", "write true or false"
    if kind == "int_type":
        if isinstance(value, str) and value.strip().isdigit():
            return f"expected a number, got {got}", f"remove the quotes: {value.strip()}"
        return f"expected a whole number, got {got}", "write a number such as 443"
    if kind in ("dict_type", "model_type"):
        return f"expected a mapping, got {got}", _mapping_example(loc, under)
    if kind == "list_type":
        return f"expected a list, got {got}", "write a list: `- item` lines, or [item, ...]"
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", "")).replace("'", "")
        return f"{got} is not allowed here", f"use {expected}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than"):
        return f"{value} is out of range", _range(loc)
    if kind == "float_type":
        if isinstance(value, str) and _is_number(value.strip()):
            return f"expected a number, got {got}", f"remove the quotes: {value.strip()}"
        return f"expected a number, got {got}", "write a number such as 5"
    return error["msg"], ""  # pragma: no cover - every type the raw models produce is above


def _not_text(loc: Path, value: Any, got: str, under: Any) -> tuple[str, str]:
    """Where text was expected: what was there, and how to write it."""
    if under == "networks":
        n = loc[3]
        return (
            f"expected an address, auto or a mapping, got {got}",
            f"e.g. `{n}: 10.0.1.11`, `{n}: auto` or `{n}: {{address: 10.0.1.11}}`",
        )
    if under == "sysctls":
        return f"expected a number or text, got {got}", "write one value, e.g. 4096"
    if "listen" in loc[-2:] and isinstance(value, int) and not isinstance(value, bool):
        return f"{value} has no protocol", f"write tcp/{value} or udp/{value}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"expected text, got {got}", f'write it in quotes: "{value}"'
    if loc[2:3] in (("run",), ("command",)) and isinstance(value, bool):
        return f"expected text, got {got}", f'write it in quotes: "{str(value).lower()}"'
    if loc[2:3] == ("run",) and value is None:
        return "expected text, got nothing", 'write "" for an empty value, or remove the key'
    if value is None:
        return "expected text, got nothing", "give a value, or remove the key"
    return f"expected text, got {got}", "write a single value"


def _mapping_example(loc: Path, under: Any) -> str:
    """How the mapping expected at `loc` is written."""
    if loc[0] == "networks" and len(loc) == 2:
        return f"e.g. `{loc[1]}: {{subnet: 10.0.1.0/24}}`"
    if loc[0] == "hosts" and len(loc) == 2:
        return f"e.g. `{loc[1]}: {{networks: {{lan: auto}}}}`, or {{}} for a host with no settings"
    if loc[0] == "hosts" and loc[2:] == ("ssh",):
        return "e.g. `ssh: {address: 10.0.5.11, user: tester}`"
    examples = {
        "routes": "e.g. `- {to: default, via: 10.0.1.1}`",
        "services": "e.g. `- {proto: tcp, port: 22}`",
        "run": 'e.g. `- {name: web, command: "httpd -f -p 80"}`',
    }
    if under in examples:
        return examples[under]
    if loc[:1] == ("expect",) and len(loc) == 2:
        return "e.g. `- {from: h1, to: h2, proto: tcp, port: 443, state: open}`"
    if loc[2:3] == ("run",) and loc[-1] == "ready":
        return "e.g. `ready: {listen: tcp/8080}`"
    if len(loc) == 6 and loc[4] == "rules":
        return "e.g. `- {allow: tcp, port: 443}`"
    return "write `key: value` pairs (or {} for none)"


def _range(loc: Path) -> str:
    """How to write a number inside the bounds of the field at `loc`."""
    model = model_at(loc[:-1])
    bounds: dict[str, Any] = {"ge": "?", "le": "?"}
    info = _fields(model).get(str(loc[-1])) if model else None
    for rule in info.metadata if info else []:
        for name in ("ge", "gt", "le"):
            if getattr(rule, name, None) is not None:
                bounds[name] = f"{getattr(rule, name):g}"
    if "gt" in bounds:
        return f"use a number above {bounds['gt']} and at most {bounds['le']}"
    return f"use a number from {bounds['ge']} to {bounds['le']}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def model_at(path: Path) -> type[BaseModel] | None:
    """The raw model that the mapping at `path` must match, if it is a model."""
    tp: Any = RawTopology
    for part in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = _fields(tp).get(str(part))
            if info is None:
                return None
            tp = info.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key written in the file (`from`, not `from_`)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and pick the container or model member of a union."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [_unwrap(m) for m in typing.get_args(tp)]
            structured = [
                m
                for m in members
                if (isinstance(m, type) and issubclass(m, BaseModel))
                or typing.get_origin(m) in (dict, list)
            ]
            return structured[0] if structured else tp
        else:
            return tp


def describe(value: Any) -> str:
    """How a value found in the file is named in messages."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__  # pragma: no cover - YAML yields only the types above


def _flow(value: Any) -> str:
    """A value as YAML flow text, for `add key: value` hints."""
    if isinstance(value, str):
        return (
            value
            if value and ": " not in value and not value.startswith("{")
            else json.dumps(value)
        )
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return json.dumps(value)
