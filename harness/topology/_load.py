"""Reading a topology: YAML -> structure -> semantics -> the resolved `Topology`."""

from __future__ import annotations

import dataclasses
import os

from harness.errors import Problem, TopologyError
from harness.topology._checks import Checker
from harness.topology._structure import check_structure
from harness.topology._yaml import compose, line_col
from harness.topology.model import Topology


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and check the topology file at `path`.

    Raises TopologyError listing every problem found (file:line:col each) when the file
    cannot be read or is not a valid topology. Nothing is created: this is pure parsing.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        problem = Problem(
            filename, 1, 1, "", f"cannot read the topology file: {reason}", "check the path"
        )
        raise TopologyError([problem]) from None
    try:
        text = raw.decode("utf-8")  # a BOM is left to the YAML reader, as for a string
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8-sig", "replace")  # columns count characters
        line, column = line_col(before, len(before))
        problem = Problem(
            filename,
            line,
            column,
            "",
            f"byte 0x{raw[exc.start]:02x} is not UTF-8 text",
            "save the file as UTF-8",
        )
        raise TopologyError([problem]) from None
    return parse_topology(text, filename)


def parse_topology(text: str, filename: str = "<string>") -> Topology:
    """Check topology YAML given as text; `filename` is used in messages and `source`."""
    doc, problems = compose(text, filename)
    if doc is None:
        raise TopologyError(problems)
    raw, damage, structural = check_structure(doc, filename)
    problems += structural
    if raw is None:
        raise TopologyError(problems)
    checker = Checker(raw, damage, doc, filename)
    topology = checker.run()
    problems += checker.problems
    if problems or topology is None:
        raise TopologyError(problems)
    return dataclasses.replace(topology, text=text)
