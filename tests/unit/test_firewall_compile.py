"""The policy compiler: a topology's `firewall:` to the exact nftables JSON commands."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from harness.errors import BackendError, EnvironmentProblem
from harness.lab.firewall import Target, apply_all, compile_policy, compile_rule
from harness.topology import Firewall, FirewallRule, parse_topology

TEXT = """\
name: compile
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
  admin: {subnet: 10.0.9.0/24}
hosts:
  c1: {networks: {lan: {address: 10.0.1.11, address6: "fd00:1::11"}}}
  web:
    networks: {lan: 10.0.1.80}
    forwarding: true
    firewall:
      input:
        policy: drop
        rules:
          - {allow: tcp, port: 443}
          - {reject: udp, ports: [53, "5000-5100"], from: admin, with: admin-prohibited}
      forward:
        stateful: false
        rules:
          - {drop: any, from: c1}
"""


def rule(**fields: Any) -> FirewallRule:
    base: dict[str, Any] = {
        "action": "allow",
        "proto": "tcp",
        "ports": (),
        "sources": (),
        "destinations": (),
        "reject_with": None,
        "family": None,
        "line": 1,
        "column": 1,
    }
    return FirewallRule(**{**base, **fields})


ADD_TABLE = {
    "add": {"table": {"family": "inet", "name": "netharness", "comment": "netharness lab policy"}}
}


def add_chain(hook: str, policy: str) -> dict[str, Any]:
    chain = {"family": "inet", "table": "netharness", "name": hook, "type": "filter"}
    return {"add": {"chain": {**chain, "hook": hook, "prio": 0, "policy": policy}}}


def add_rule(chain: str, expr: list[Any], comment: str) -> dict[str, Any]:
    return {
        "add": {
            "rule": {
                "family": "inet",
                "table": "netharness",
                "chain": chain,
                "expr": expr,
                "comment": comment,
            }
        }
    }


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


ACCEPT = {"accept": None}
COUNTER = {"counter": None}
STATE = {"ct": {"key": "state"}}
ND = match(
    payload("icmpv6", "type"),
    {
        "set": [
            "nd-router-solicit",
            "nd-router-advert",
            "nd-neighbor-solicit",
            "nd-neighbor-advert",
            "nd-redirect",
        ]
    },
)


def test_a_host_policy_compiles_to_the_expected_document() -> None:
    firewall = parse_topology(TEXT).hosts["web"].firewall
    assert firewall is not None
    assert compile_policy(firewall) == {
        "nftables": [
            ADD_TABLE,
            add_chain("input", "drop"),
            add_rule(
                "input", [match({"meta": {"key": "iifname"}}, "lo"), ACCEPT], "netharness: loopback"
            ),
            add_rule("input", [ND, ACCEPT], "netharness: IPv6 neighbour discovery"),
            add_rule(
                "input",
                [match(STATE, ["established", "related"], "in"), ACCEPT],
                "netharness: stateful",
            ),
            add_rule(
                "input", [match(STATE, "invalid", "in"), {"drop": None}], "netharness: stateful"
            ),
            add_rule(
                "input",
                [match(payload("tcp", "dport"), 443), COUNTER, ACCEPT],
                "netharness: rules[0] line 14",
            ),
            add_rule(
                "input",
                [
                    match(payload("ip", "saddr"), {"prefix": {"addr": "10.0.9.0", "len": 24}}),
                    match(payload("udp", "dport"), {"set": [53, {"range": [5000, 5100]}]}),
                    COUNTER,
                    {"reject": {"type": "icmpx", "expr": "admin-prohibited"}},
                ],
                "netharness: rules[1] line 15",
            ),
            add_chain("forward", "accept"),
            # stateful: false and forward: no preamble; c1's two families, one rule each
            add_rule(
                "forward",
                [match(payload("ip", "saddr"), "10.0.1.11"), COUNTER, {"drop": None}],
                "netharness: rules[0] line 19",
            ),
            add_rule(
                "forward",
                [match(payload("ip6", "saddr"), "fd00:1::11"), COUNTER, {"drop": None}],
                "netharness: rules[0] line 19",
            ),
        ]
    }


def test_reject_answers_closed_by_default() -> None:
    assert compile_rule(rule(action="reject"))[-1][-1] == {"reject": {"type": "tcp reset"}}
    udp = compile_rule(rule(action="reject", proto="udp"))
    assert udp == [
        [
            match({"meta": {"key": "l4proto"}}, "udp"),
            COUNTER,
            {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
        ]
    ]
    # any: TCP gets a reset, the rest port unreachable
    tcp_first, rest = compile_rule(rule(action="reject", proto="any"))
    assert tcp_first == [
        match({"meta": {"key": "l4proto"}}, "tcp"),
        COUNTER,
        {"reject": {"type": "tcp reset"}},
    ]
    assert rest == [COUNTER, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]
    custom = compile_rule(rule(action="reject", proto="any", reject_with="host-unreachable"))
    assert custom == [[COUNTER, {"reject": {"type": "icmpx", "expr": "host-unreachable"}}]]


def test_family_without_addresses_matches_nfproto_and_icmp_names_its_protocol() -> None:
    (v6,) = compile_rule(rule(family=6, ports=((22, 22),)))
    assert v6[:2] == [
        match({"meta": {"key": "nfproto"}}, "ipv6"),
        match(payload("tcp", "dport"), 22),
    ]
    (icmp,) = compile_rule(rule(proto="icmpv6", family=6, action="drop"))
    assert icmp == [match({"meta": {"key": "l4proto"}}, "ipv6-icmp"), COUNTER, {"drop": None}]


def test_an_empty_firewall_is_just_the_table() -> None:
    assert compile_policy(Firewall()) == {"nftables": [ADD_TABLE]}


def test_a_policy_on_a_host_without_a_local_namespace_is_refused_before_anything() -> None:
    web = parse_topology(TEXT).hosts["web"]
    with pytest.raises(BackendError, match="host web: hosts web have a firewall") as caught:
        # no fork server is needed: nothing is started for a host netharness cannot enter
        asyncio.run(apply_all(None, [Target(web, "", local=False)]))  # type: ignore[arg-type]
    assert "remove `firewall:`/`nft:`" in str(caught.value)


def test_without_nft_on_the_controller_the_lab_stops_with_an_environment_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("harness.lab.firewall.shutil.which", lambda name: None)
    web = parse_topology(TEXT).hosts["web"]
    with pytest.raises(EnvironmentProblem, match="apt-get install nftables") as caught:
        asyncio.run(apply_all(None, [Target(web, "/run/netns/x", local=True)]))  # type: ignore[arg-type]
    assert caught.value.exit_code == 3
    # hosts without a policy or nft script need no nft at all
    c1 = parse_topology(TEXT).hosts["c1"]
    asyncio.run(apply_all(None, [Target(c1, "/run/netns/x", local=True)]))  # type: ignore[arg-type]
