"""The probe layer's pure parts: port specs, reproduce commands and the plain-text table."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from harness.checks.probe import (
    CheckReport,
    ProbeResult,
    Verdict,
    parse_port_spec,
    parse_ports,
    reproduce_command,
    target_address,
)
from harness.checks.probe_report import print_check
from harness.errors import UsageError
from harness.topology import parse_topology


def test_ports_take_the_protocol_that_follows_them() -> None:
    assert parse_ports("22,80,443/tcp,53/udp") == [
        (22, "tcp"),
        (80, "tcp"),
        (443, "tcp"),
        (53, "udp"),
    ]
    assert parse_ports("53/udp,8000-8002") == [
        (53, "udp"),
        (8000, "tcp"),
        (8001, "tcp"),
        (8002, "tcp"),
    ]
    assert parse_ports("80,80/tcp") == [(80, "tcp")]


@pytest.mark.parametrize("bad", ["", "0", "70000", "80/sctp", "9-3/tcp", "x/tcp"])
def test_bad_ports_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_ports(bad)


def test_port_specs() -> None:
    assert parse_port_spec("web:443/tcp") == ("web", 443, "tcp")
    assert parse_port_spec("10.0.1.12:53/udp") == ("10.0.1.12", 53, "udp")
    assert parse_port_spec("[fd00:1::12]:80") == ("fd00:1::12", 80, "tcp")
    for bad in ("web", "web:99999/tcp", "web:80/icmp", "fd00::1:80/tcp", "[fd00::1]80"):
        with pytest.raises(UsageError):
            parse_port_spec(bad)


def result(state: str, family: int = 4, target: str = "web") -> ProbeResult:
    address = "10.20.0.10" if family == 4 else "fd00:20::10"
    return ProbeResult(
        state, "RST", address, 0.001, 1, "client1", target, 443, "tcp", family, "ECONNREFUSED"
    )


def test_reproduce_commands_name_the_cell() -> None:
    assert (
        reproduce_command("ab12cd", result("open")) == "netharness probe ab12cd client1 web:443/tcp"
    )
    assert reproduce_command("ab12cd", result("open", 6)).endswith("web:443/tcp -6")
    given = reproduce_command("ab12cd", result("open", 6), address_given=True)
    assert given.endswith("client1 [fd00:20::10]:443/tcp")


def test_plain_table_marks_each_mismatch_with_its_command() -> None:
    report = CheckReport(
        "ab12cd",
        (
            Verdict("open", result("open"), 0, 10, 5),
            Verdict("open", result("closed", 6), 2, 11, 5),
        ),
        1.5,
    )
    buffer = io.StringIO()
    print_check(Console(file=buffer, width=200), report, lab_gone=False)
    text = buffer.getvalue()
    assert "✗ closed (want open)" in text
    assert "line 11: client1->web:443/tcp (fd00:20::10): expected open, observed closed" in text
    assert "reproduce: netharness probe ab12cd client1 web:443/tcp -6" in text
    assert "2 expectations: 1 passed, 1 failed" in text
    assert "\x1b[" not in text  # no terminal, no colour codes
    assert report.to_json()["cells"][1]["retries"] == 2


class FakeHost:
    def __init__(self, spec: Any) -> None:
        self.spec = spec


class FakeLab:
    """What `target_address` reads of a lab: its id and its hosts' specs."""

    def __init__(self, text: str) -> None:
        topology = parse_topology(text, "t.yaml")
        self.id = "ab12cd"
        self.hosts = {name: FakeHost(spec) for name, spec in topology.hosts.items()}


ROUTED = """\
name: t
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
  wan: {subnet: 10.0.2.0/24}
hosts:
  h1: {networks: {lan: 10.0.1.11}}
  r1: {networks: {wan: 10.0.2.1, lan: 10.0.1.1}, forwarding: true}
  h2: {networks: {wan: 10.0.2.12}}
"""


def test_the_target_address_is_on_a_shared_network_first() -> None:
    lab: Any = FakeLab(ROUTED)
    assert target_address(lab, "h1", "r1") == "10.0.1.1"  # not r1's first (wan)
    assert target_address(lab, "h2", "r1") == "10.0.2.1"
    assert target_address(lab, "h1", "h2") == "10.0.2.12"  # no shared network: its first
    lan6 = lab.hosts["r1"].spec.interface("lan").address6.ip  # automatic
    assert target_address(lab, "h2", "r1", family=6) == str(lan6)  # the one it has
    assert target_address(lab, "h1", "198.18.0.9") == "198.18.0.9"
    with pytest.raises(UsageError, match="no IPv6 address"):
        target_address(lab, "h1", "h2", family=6)
    with pytest.raises(UsageError, match="no host 'h9'"):
        target_address(lab, "h1", "h9")
