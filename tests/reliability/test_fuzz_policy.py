"""Fuzzed `firewall:` and `expect:` blocks: the same guarantees as test_fuzz_topology
(a `Topology` or a `TopologyError` with in-file positions, fast, pure), aimed at the
rules and expectations, whose structure errors cut single rules and entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.reliability.test_fuzz_topology import (
    MUTATIONS,
    ROOT,
    check_text,
    classify,
    creates_nothing,  # noqa: F401 - autouse here too: the loader creates nothing
    emit,
    fuzz,
)

POLICY_SEEDS = [
    p.read_text(encoding="utf-8")
    for p in [
        ROOT / "topologies" / "three-tier.yaml",
        ROOT / "topologies" / "dmz.yaml",
        ROOT / "tests" / "data" / "good" / "firewall.yaml",
        *sorted((ROOT / "tests" / "data" / "bad").glob("firewall_*.yaml")),
        ROOT / "tests" / "data" / "bad" / "expect.yaml",
    ]
]

PROTOS = ["tcp", "udp", "icmp", "icmpv6", "any", "sctp", "", None, 6]
PEERS = ["lan", "admin", "h1", "h2", "10.0.1.0/24", "10.0.1.1/24", "fd00:1::/64", "nope", 7]
PORTS = [22, 0, 65536, "80-90", "90-80", "x", [22, "1000-2000"], [], [True], "1-65535"]
STATES = ["open", "closed", "filtered", "open|filtered", "opne", None]


@st.composite
def mutated_policies(draw: st.DrawFn) -> str:
    text: str = draw(st.sampled_from(POLICY_SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


def _some(draw: st.DrawFn, pool: list[Any]) -> Any:
    value = draw(st.sampled_from(pool))
    if draw(st.booleans()) and not isinstance(value, list):
        return [value, draw(st.sampled_from(pool))]
    return value


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    for action in draw(st.lists(st.sampled_from(["allow", "reject", "drop"]), max_size=2)):
        rule[action] = draw(st.sampled_from(PROTOS))
    optional: dict[str, list[Any]] = {
        "port": [22, 443, 0, "22"],
        "ports": PORTS,
        "from": PEERS,
        "to": PEERS,
        "with": ["reset", "admin-prohibited", "bogus"],
        "family": [4, 6, 5],
        "bogus": [1],
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        rule[key] = (
            _some(draw, optional[key])
            if key in ("from", "to")
            else draw(st.sampled_from(optional[key]))
        )
    return rule


@st.composite
def expectations(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "from": _some(draw, ["h1", "h2", "r1", "nope"]),
        "to": _some(draw, ["h1", "h2", "r1"]),
        "proto": draw(st.sampled_from(["tcp", "udp", "icmp"])),
        "state": draw(st.sampled_from(STATES)),
    }
    optional: dict[str, list[Any]] = {
        "port": [22, 0, 70000],
        "ports": PORTS[:-1],
        "family": [4, 6],
        "address": ["10.0.1.12", "fd00:1::2", "x"],
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=2, unique=True)):
        entry[key] = draw(st.sampled_from(optional[key]))
    if draw(st.integers(0, 9)) == 0:
        entry.pop(draw(st.sampled_from(sorted(entry))))
    return entry


@st.composite
def policy_topologies(draw: st.DrawFn) -> dict[str, Any]:
    hooks = draw(st.lists(st.sampled_from(["input", "output", "forward"]), unique=True))
    chains = {
        hook: {
            "policy": draw(st.sampled_from(["accept", "drop", "reject"])),
            "rules": draw(st.lists(rules(), max_size=5)),
        }
        for hook in hooks
    }
    return {
        "name": "fuzzpolicy",
        "networks": {
            "lan": {"subnet": "10.0.1.0/24", "subnet6": "fd00:1::/64"},
            "admin": {"subnet": "10.0.9.0/24"},
        },
        "hosts": {
            "h1": {"networks": {"lan": "auto", "admin": "auto"}},
            "h2": {
                "networks": {"lan": "auto"},
                "forwarding": draw(st.booleans()),
                "firewall": chains,
            },
            "r1": {"networks": {"admin": "auto"}},
        },
        "expect": draw(st.lists(expectations(), max_size=4)),
    }


def test_mutated_policies(tmp_path: Path) -> None:
    counts: dict[str, int] = {}

    @fuzz(100)
    @given(mutated_policies())
    def one(text: str) -> None:
        kind = classify(check_text(text, tmp_path / "fuzz.yaml"))
        counts[kind] = counts.get(kind, 0) + 1

    one()
    assert counts.get("semantic", 0) >= 5, counts  # the checks ran on what survived
    assert counts.get("structure", 0) >= 5, counts


def test_generated_policies(tmp_path: Path) -> None:
    counts: dict[str, int] = {}

    @fuzz(100)
    @given(st.one_of(policy_topologies().map(json.dumps), policy_topologies().flatmap(_yaml)))
    def one(text: str) -> None:
        kind = classify(check_text(text, tmp_path / "fuzz.yaml"))
        counts[kind] = counts.get(kind, 0) + 1

    one()
    assert counts.get("valid", 0) >= 5, counts  # enough pass to check the model too
    assert counts.get("semantic", 0) >= 20, counts
    assert counts.get("structure", 0) >= 5, counts


def _yaml(data: dict[str, Any]) -> st.SearchStrategy[str]:
    @st.composite
    def text(draw: st.DrawFn) -> str:
        return emit(draw, data)

    return text()
