"""docs/topology.md runs: its examples load, its messages are real, it covers every key."""

from __future__ import annotations

import re
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path

import pytest

from harness.topology import SYSCTLS, Topology, parse_topology, topology_schema

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "topology.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.DOTALL)
YAML_BLOCKS = [text for kind, text in BLOCKS if kind == "yaml"]


def example(name: str) -> Topology:
    (text,) = [t for t in YAML_BLOCKS if re.search(rf"^name: {name}$", t, re.MULTILINE)]
    return parse_topology(text, filename="topology.md")


@pytest.mark.parametrize("text", YAML_BLOCKS, ids=lambda t: t.split("name: ")[1].split()[0])
def test_every_yaml_example_in_the_docs_is_a_valid_topology(text: str) -> None:
    assert parse_topology(text, filename="topology.md").hosts


def test_there_are_examples_for_every_part() -> None:
    assert len(YAML_BLOCKS) >= 10


def test_the_automatic_address_example_says_what_happens() -> None:
    topo = example("attach")
    h2 = topo.hosts["h2"]
    assert "h2 gets `fd00:1::1` on lan and `10.0.2.2` on wan (h1 took `10.0.2.1`)" in DOC
    assert h2.interface("lan").address6 == IPv6Interface("fd00:1::1/64")
    assert h2.interface("wan").address == IPv4Interface("10.0.2.2/24")
    assert topo.hosts["h1"].interface("wan").address == IPv4Interface("10.0.2.1/24")
    assert topo.hosts["h1"].interface("lan").ifname == "eth0"


def test_error_messages_shown_in_the_docs_are_real() -> None:
    shown = [
        line
        for kind, text in BLOCKS
        if kind == "text"
        for line in text.splitlines()
        if re.match(r"\S+\.yaml:\d+:\d+: ", line)
    ]
    real = {
        line
        for path in (ROOT / "tests" / "data" / "bad").glob("*.expected")
        for line in path.read_text(encoding="utf-8").splitlines()
    }
    assert len(shown) >= 3
    assert set(shown) <= real


def test_docs_mention_every_key_and_sysctl() -> None:
    schema = topology_schema()
    keys = set(schema["properties"])
    for definition in schema["$defs"].values():
        keys |= set(definition.get("properties", {}))
    for key in keys:
        assert f"`{key}`" in DOC, key
    for sysctl in SYSCTLS:
        assert f"`{sysctl}`" in DOC, sysctl
