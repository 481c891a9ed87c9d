"""`firewall:` and `expect:` resolve into the model the compiler and the probes use."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_network

import pytest

from harness.errors import TopologyError
from harness.topology import Chain, Expectation, FirewallRule, parse_topology

TEXT = """\
name: policy
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
  admin: {subnet: 10.0.9.0/24}
hosts:
  c1: {networks: {lan: 10.0.1.11, admin: 10.0.9.11}}
  c2: {networks: {lan: 10.0.1.12}}
  web:
    networks: {lan: {address: 10.0.1.80, address6: "fd00:1::80"}}
    firewall:
      input:
        policy: drop
        rules:
          - {allow: tcp, port: 443}
          - {allow: tcp, port: 22, from: admin}
          - reject: udp
            ports: [53, "5000-5100", 5101]
            from: [c1, 10.0.1.0/24]
            with: admin-prohibited
          - {drop: any, to: "fd00:1::80"}
      output: {policy: accept, stateful: false}
expect:
  - {from: [c1, c2], to: web, proto: tcp, ports: "442-443", state: open}
  - {from: c1, to: web, proto: udp, port: 53, state: filtered, address: "fd00:1::80"}
"""


def test_rules_resolve_names_ranges_and_families() -> None:
    web = parse_topology(TEXT, "policy.yaml").hosts["web"]
    assert web.firewall is not None
    assert web.firewall.forward is None
    assert web.firewall.output == Chain("accept", (), stateful=False)
    chain = web.firewall.input
    assert chain is not None
    assert chain.policy == "drop"
    assert chain.stateful
    first, ssh, udp, drop = chain.rules
    assert first == FirewallRule("allow", "tcp", ((443, 443),), (), (), None, None, 14, 13)
    assert ssh.sources == (ip_network("10.0.9.0/24"),)
    assert ssh.family == 4
    # c1's own addresses (its IPv6 one was given automatically) and the CIDR
    assert udp.sources == (
        ip_network("10.0.1.11/32"),
        ip_network("fd00:1::1/128"),
        ip_network("10.0.9.11/32"),
        ip_network("10.0.1.0/24"),
    )
    assert udp.ports == ((53, 53), (5000, 5101))  # merged and sorted
    assert udp.reject_with == "admin-prohibited"
    assert udp.family is None
    assert drop.proto == "any"
    assert drop.family == 6
    assert drop.destinations == (ip_network("fd00:1::80/128"),)
    assert [h.firewall for n, h in parse_topology(TEXT).hosts.items() if n != "web"] == [None] * 2


def test_expect_entries_expand_one_cell_per_source_target_and_port() -> None:
    topology = parse_topology(TEXT, "policy.yaml")
    cells = topology.expectations
    assert [(e.source, e.port) for e in cells[:4]] == [
        ("c1", 442),
        ("c1", 443),
        ("c2", 442),
        ("c2", 443),
    ]
    assert cells[0] == Expectation("c1", "web", "tcp", 442, "open", 4, None, 23, 5)
    # the address decides the family
    assert cells[4] == Expectation("c1", "web", "udp", 53, "filtered", 6, "fd00:1::80", 24, 5)


def test_no_expect_block_means_no_expectations() -> None:
    text = "name: t\nhosts:\n  h1: {}\n"
    assert parse_topology(text).expectations == ()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("[{allow: tcp}, {allow: tcp, port: 22}]", "this rule never matches: rules[0]"),
        ("[{allow: any}, {drop: icmp}]", "this rule contradicts rules[0]"),
        ("[{drop: tcp, ports: 1-100}, {allow: tcp, ports: [5, 7-9]}]", "contradicts rules[0]"),
        ("[{allow: tcp, from: [lan, admin]}, {drop: tcp, from: c1}]", "contradicts rules[0]"),
        ("[{allow: tcp, family: 6}, {drop: tcp, from: c2}]", None),  # c2 is IPv4 only: no
        ("[{allow: tcp, from: admin}, {drop: tcp, from: c1}]", None),  # c1 is also on lan
        ("[{reject: tcp}, {reject: tcp, port: 1, with: admin-prohibited}]", "contradicts"),
    ],
)
def test_shadowed_rules(rules: str, message: str | None) -> None:
    text = f"""\
name: t
networks:
  lan: {{subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}}
  admin: {{subnet: 10.0.9.0/24}}
hosts:
  c1: {{networks: {{lan: auto, admin: auto}}}}
  c2: {{networks: {{lan: {{address: 10.0.1.99}}}}}}
  web: {{networks: {{lan: auto}}, firewall: {{input: {{rules: {rules}}}}}}}
"""
    text = text.replace("networks: {lan: {address: 10.0.1.99}}", "networks: {admin: 10.0.9.99}")
    if message is None:
        parse_topology(text)
        return
    with pytest.raises(TopologyError) as caught:
        parse_topology(text)
    (problem,) = caught.value.problems
    assert message in problem.message
    assert problem.path == "hosts.web.firewall.input.rules[1]"


def test_the_model_other_parts_build_on_is_exported() -> None:
    import harness.topology

    names = {"Expectation", "ProbeState", "Firewall", "Chain", "FirewallRule"}
    assert names <= set(harness.topology.__all__)
    fields = [f.name for f in dataclasses.fields(Expectation)]
    assert fields == [
        "source",
        "target",
        "proto",
        "port",
        "state",
        "family",
        "address",
        "line",
        "column",
        "owner",
    ]
