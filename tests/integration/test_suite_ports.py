"""The ports suite on real labs: lan.yaml and routed.yaml extended with the hosts its checks
need (a small ephemeral range, a lowered ip_unprivileged_port_start), the plain files
(the checks that need those hosts say so), and checks pointed at a host where the
promise they test does not hold, where they must fail or say why they cannot run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.checks.suites import Check, checks_of, ports, run_suite
from harness.errors import UsageError
from harness.lab import Lab
from harness.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]

# lan.yaml, with h1's ephemeral range cut to 10 ports and h2's privileged ports below 80.
LAN_PORTS = """\
name: lan-ports
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
hosts:
  h1:
    networks:
      lan: {address: 10.0.1.11, address6: "fd00:1::11"}
    sysctls: {net.ipv4.ip_local_port_range: "40000 40009"}
  h2:
    networks:
      lan: {address: 10.0.1.12, address6: "fd00:1::12"}
    sysctls: {net.ipv4.ip_unprivileged_port_start: "80"}
  h3:
    networks:
      lan: {address: 10.0.1.13, address6: "fd00:1::13"}
"""

# routed.yaml, with the same two settings on h1 and on the router r1.
ROUTED_PORTS = """\
name: routed-ports
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
  wan: {subnet: 10.0.2.0/24, subnet6: "fd00:2::/64"}
hosts:
  h1:
    networks:
      lan: {address: 10.0.1.11, address6: "fd00:1::11"}
    routes:
      - {to: default, via: 10.0.1.1}
      - {to: default, via: "fd00:1::1"}
    sysctls: {net.ipv4.ip_local_port_range: "40000 40009"}
  r1:
    networks:
      lan: {address: 10.0.1.1, address6: "fd00:1::1"}
      wan: {address: 10.0.2.1, address6: "fd00:2::1"}
    forwarding: true
    sysctls: {net.ipv4.ip_unprivileged_port_start: "80"}
  h2:
    networks:
      wan: {address: 10.0.2.12, address6: "fd00:2::12"}
    routes:
      - {to: default, via: 10.0.2.1}
      - {to: default, via: "fd00:2::1"}
"""

NEED_HOSTS = (
    "unprivileged-port-start-lowered",
    "ephemeral-exhaustion",
    "ephemeral-other-destination",
    "ephemeral-time-wait",
)


@pytest.fixture(scope="module")
def lan_ports(backend: str) -> Iterator[Lab]:
    with Lab.up(parse_topology(LAN_PORTS, "lan-ports.yaml"), backend=backend) as lab:
        yield lab


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == list(ports.CHECKS)
    return {c.name: c for c in checks}


def assert_all_pass(checks: list[Check]) -> dict[str, Check]:
    named = by_name(checks)
    failed = {c.name: c.observed for c in checks if c.failed}  # a skip does not apply
    assert not failed, failed
    return named


def results(check: Check) -> list[tuple[str, str, str]]:
    """(proto, user, result) of every bind of a check, in order."""
    return [(b["proto"], b["user"], b["result"]) for b in check.evidence["binds"]]


def binds(check: Check) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = check.evidence["binds"]
    return rows


# ---- the whole suite on both extended topologies ------------------------------------------


def test_passes_on_lan_with_port_hosts(lan_ports: Lab) -> None:
    checks = assert_all_pass(run_suite("ports", lan_ports))
    assert checks_of("ports") == ports.CHECKS

    for proto in ("tcp", "udp"):
        second = checks[f"second-bind-{proto}"]
        assert results(second) == [
            (proto, "root", "bound"),
            (proto, "root", "EADDRINUSE"),
            (proto, "root", "EADDRINUSE"),
        ]
        rows = binds(second)
        assert len({r["bind"] for r in rows}) == 1  # one address and port, three binds
        assert rows[0]["pid"] == rows[1]["pid"] != rows[2]["pid"]  # same process, then another

    same_port = checks["tcp-udp-same-port"]
    assert {r["result"] for r in binds(same_port)} == {"bound"}
    assert all(s["answered_by"] == s["owner"] for s in same_port.evidence["served"].values())

    wildcard = [r["result"] for r in binds(checks["wildcard-vs-specific"])]
    # per protocol: (0.0.0.0, specific), (specific, 0.0.0.0), (specific, 127.0.0.1)
    assert wildcard == ["bound", "EADDRINUSE", "bound", "EADDRINUSE", "bound", "bound"] * 2
    reuse = binds(checks["wildcard-vs-specific-reuseaddr"])
    assert all(r["options"] == ["SO_REUSEADDR"] for r in reuse)
    assert [r["result"] for r in reuse] == ["bound", "EADDRINUSE"] * 2 + ["bound"] * 4

    dual = binds(checks["v6-wildcard-dual-stack"])
    assert [r["result"] for r in dual] == ["bound", "EADDRINUSE"] * 4
    assert {r["bind"].rsplit(":", 1)[0] for r in dual} == {"0.0.0.0", "[::]"}
    assert [r["result"] for r in binds(checks["v6only-coexists"])] == ["bound"] * 8

    time_wait = checks["reuseaddr-time-wait"]
    old, plain, reuse_again = binds(time_wait)
    assert (plain["result"], reuse_again["result"]) == ("EADDRINUSE", "bound")
    assert plain["pid"] == reuse_again["pid"] != old["pid"]  # a restarted server process
    port = old["bind"].rsplit(":", 1)[1]
    assert time_wait.evidence["connection"]["closed_first_by"] == "server"
    assert [tw.split()[:2] for tw in time_wait.evidence["time_wait"]] == [
        ["TIME_WAIT", f"10.0.1.13:{port}"]
    ]

    split = checks["reuseport-shares-connections"].evidence["split"]
    assert len(split) == 2
    assert all(count > 0 for count in split.values())
    assert sum(split.values()) == 32
    needs = binds(checks["reuseport-needs-option"])
    assert [(r["options"], r["user"], r["result"]) for r in needs] == [
        (["SO_REUSEPORT"], "root", "bound"),
        (["SO_REUSEPORT"], "root", "bound"),
        ([], "root", "EADDRINUSE"),
        (["SO_REUSEPORT"], "nobody", "EADDRINUSE"),
    ]

    privileged = checks["privileged-port-eacces"]
    assert privileged.evidence["host"] == "h3"
    assert privileged.evidence["uid"] == 65534
    assert results(privileged) == [
        ("tcp", "nobody", "EACCES"),
        ("udp", "nobody", "EACCES"),
        ("tcp", "root", "bound"),
        ("udp", "root", "bound"),
        ("tcp", "nobody", "bound"),
    ]
    assert binds(privileged)[0]["bind"] == "0.0.0.0:1023"

    lowered = checks["unprivileged-port-start-lowered"]
    assert lowered.evidence["host"] == "h2"
    assert [(r["bind"], r["result"]) for r in binds(lowered)] == [
        ("0.0.0.0:80", "bound"),
        ("0.0.0.0:80", "bound"),
        ("0.0.0.0:79", "EACCES"),
        ("0.0.0.0:79", "EACCES"),
    ]

    zero = checks["port-zero-in-range"]
    low, high = zero.evidence["ip_local_port_range"]
    assigned = [int(r["bind"].rsplit(":", 1)[1]) for r in binds(zero)]
    assert all(low <= p <= high for p in assigned)

    exhaustion = checks["ephemeral-exhaustion"].evidence
    assert exhaustion["client_host"] == "h1"
    assert exhaustion["next_connection"] == "EADDRNOTAVAIL"
    sports = sorted(int(c.split(" -> ")[0].rsplit(":", 1)[1]) for c in exhaustion["connections"])
    assert sports == list(range(40000, 40010))
    other = checks["ephemeral-other-destination"].evidence["connections"]
    assert [c["result"] for c in other] == ["connected", "connected"]
    assert all(c["reuses_busy_port"] for c in other)
    tw = checks["ephemeral-time-wait"].evidence
    assert len([s for s in tw["kernel_sockets"] if s.startswith("TIME_WAIT 10.0.1.11:400")]) == 10
    assert tw["new_connection"]["result"] == "EADDRNOTAVAIL"


def test_passes_on_routed_with_port_hosts() -> None:
    with Lab.up(parse_topology(ROUTED_PORTS, "routed-ports.yaml")) as lab:
        checks = assert_all_pass(ports.run(lab))
    assert checks["privileged-port-eacces"].evidence["host"] == "h2"
    assert checks["unprivileged-port-start-lowered"].evidence["host"] == "r1"
    exhaustion = checks["ephemeral-exhaustion"].evidence
    assert exhaustion["client_host"] == "h1"
    assert exhaustion["server"].startswith("10.0.2.12:")  # through the router
    other = checks["ephemeral-other-destination"].evidence["connections"]
    assert other[1]["to"].startswith("10.0.1.1:")  # the second address: the router's


def port_settings(lab: Lab) -> dict[str, tuple[str, str]]:
    return {
        name: (
            host.sysctl("net.ipv4.ip_unprivileged_port_start"),
            host.sysctl("net.ipv4.ip_local_port_range"),
        )
        for name, host in lab.hosts.items()
    }


def test_plain_lan_sets_what_it_needs_for_the_check_and_puts_it_back() -> None:
    with Lab.up(load_topology(ROOT / "topologies" / "lan.yaml")) as lab:
        before = port_settings(lab)
        checks = by_name(ports.run(lab))
        after = port_settings(lab)
    # lan.yaml has no service of a user's process: that one check does not apply.
    assert checks.pop("service-port-in-use").verdict == "skip"
    assert {c.verdict for c in checks.values()} == {"pass"}, [
        (n, c.observed) for n, c in checks.items() if not c.passed
    ]
    # No host of lan.yaml has the settings: the suite lowered them on a client for the
    # checks that need them, said so, and put every value back.
    assert checks[NEED_HOSTS[0]].evidence["set_by_suite"] == "ip_unprivileged_port_start 80"
    assert checks["ephemeral-exhaustion"].evidence["ip_local_port_range"] == [61000, 61009]
    assert after == before


# ---- checks pointed where their promise does not hold ------------------------------------


def test_privileged_check_fails_where_the_port_is_not_privileged(lan_ports: Lab) -> None:
    """On h2 (ip_unprivileged_port_start 80) port 80 is open to anyone: no EACCES."""
    checks = by_name(
        ports.run(
            lan_ports, only=["privileged-port-eacces"], privileged_host="h2", privileged_port=80
        )
    )
    check = checks["privileged-port-eacces"]
    assert check.verdict == "fail"
    assert results(check)[:2] == [("tcp", "nobody", "bound"), ("udp", "nobody", "bound")]
    assert "expected EACCES" in check.observed
    others = {c.verdict for n, c in checks.items() if n != "privileged-port-eacces"}
    assert others == {"error"}  # left out by only=, and saying so
    assert all("left out" in c.observed for c in checks.values() if c.verdict == "error")


def test_checks_needing_a_configured_host_refuse_one_without(lan_ports: Lab) -> None:
    checks = by_name(
        ports.run(
            lan_ports,
            only=list(NEED_HOSTS),
            lowered_host="h3",
            ephemeral_host="h3",
        )
    )
    assert "not below 1024" in checks["unprivileged-port-start-lowered"].observed
    for name in NEED_HOSTS:
        assert checks[name].verdict == "error"
    for name in NEED_HOSTS[1:]:
        assert "spans 28232 ports" in checks[name].observed


def test_time_wait_and_reuse_checks_alone(lan_ports: Lab) -> None:
    """`only=` as the CLI passes it (one string); the selected checks still pass."""
    selected = "reuseaddr-time-wait,ephemeral-time-wait"
    checks = by_name(ports.run(lan_ports, only=selected, server="h3"))
    assert checks["reuseaddr-time-wait"].verdict == "pass", checks["reuseaddr-time-wait"]
    assert checks["ephemeral-exhaustion"].verdict == "pass"  # the time-wait check needs it
    assert checks["ephemeral-time-wait"].verdict == "pass"
    assert checks["ephemeral-other-destination"].verdict == "error"


def test_bad_options_are_usage_errors(lan_ports: Lab) -> None:
    with pytest.raises(UsageError, match="no check named nope"):
        ports.run(lan_ports, only="second-bind-tcp,nope")
    with pytest.raises(UsageError, match="connections"):
        ports.run(lan_ports, connections=1)


def test_unknown_host_is_reported_on_every_check(lan_ports: Lab) -> None:
    checks = ports.run(lan_ports, ephemeral_host="h9")
    assert {c.verdict for c in checks} == {"error"}
    assert all("no host 'h9'" in c.observed for c in checks)


def test_exhaustion_fails_when_a_port_of_the_range_is_taken() -> None:
    """A process on h1 holds port 40005 of its 10-port range with a listener: only 9
    connections fit, and the check says so instead of passing. (A lab of its own: the
    shared one has h1's ports in TIME_WAIT, where no listener can bind them.)"""
    with Lab.up(parse_topology(LAN_PORTS, "lan-ports.yaml")) as lab:
        lab.hosts["h1"].agent().listen("tcp", 40005)
        checks = by_name(ports.run(lab, only=["ephemeral-exhaustion"]))
    check = checks["ephemeral-exhaustion"]
    assert check.verdict == "fail"
    assert "9 connections succeeded, not R = 10" in check.observed
    assert len(check.evidence["connections"]) == 9
    assert not any(":40005 " in c for c in check.evidence["connections"])
