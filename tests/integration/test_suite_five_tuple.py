"""The five_tuple suite and the agent's bulk connects, on real namespaces.

Each property is shown twice: the suite passes on real traffic, and the same judgement
fails when the property is broken — by real means where the kernel allows (a NAT, a
narrow port range) and otherwise by altering one fact of real evidence.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Lab
from harness.checks.suites import Check, checks_of, five_tuple, run_suite
from harness.errors import AgentError
from harness.observe import diag
from harness.topology import parse_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"

NARROW = """\
name: narrow
networks:
  lan: {subnet: 10.0.1.0/24}
hosts:
  h1:
    networks: {lan: 10.0.1.11}
    sysctls: {net.ipv4.ip_local_port_range: "40000 40009"}
  h2:
    networks: {lan: 10.0.1.12}
"""


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == list(five_tuple.CHECKS)
    assert checks_of("five_tuple") == five_tuple.CHECKS
    return {c.name: c for c in checks}


def failing(checks: list[Check]) -> dict[str, str]:
    return {c.name: f"{c.verdict}: {c.observed}" for c in checks if not c.passed}


@pytest.fixture(scope="module")
def lan(backend: str) -> Iterator[Lab]:
    with Lab.up(TOPOLOGIES / "lan.yaml", backend=backend) as lab:
        yield lab


@pytest.mark.parametrize(
    ("topology", "family", "server_processes"),
    [("lan.yaml", 4, 1), ("routed.yaml", 4, None), ("routed.yaml", 6, None)],
)
def test_the_suite_passes_without_nat(
    topology: str, family: int, server_processes: int | None
) -> None:
    with Lab.up(TOPOLOGIES / topology) as lab:
        checks = run_suite(
            "five_tuple",
            lab,
            connections=200,
            processes_per_client=3,
            server_processes=server_processes,
            family=family,
        )
        assert failing(checks) == {}
        named = by_name(checks)
        assert named["translation"].observed == "no translation"
        concurrent = named["tcp-concurrent-connections"].evidence
        assert concurrent["established"] == concurrent["accepted"] == 200
        assert all(len(c["pids"]) == 3 for c in concurrent["clients"].values())
        assert len(concurrent["server"]["pids"]) == (server_processes or 2)
        assert concurrent["server"]["address"].startswith("[") == (family == 6)
        # The suite leaves no connection behind: reset, not even TIME_WAIT.
        for host in lab.hosts.values():
            assert diag.sockets(host, "tcp", family) == []


def test_default_thousand_connections(lan: Lab) -> None:
    checks = five_tuple.run(lan)
    assert failing(checks) == {}
    named = by_name(checks)
    concurrent = named["tcp-concurrent-connections"].evidence
    assert concurrent["requested"] == concurrent["established"] == 1000
    assert set(concurrent["clients"]) == {"h1", "h2"}  # every host but the server h3
    assert sum(len(c["pids"]) for c in concurrent["clients"].values()) == 4
    unique = named["tcp-tuples-unique"].evidence
    assert unique["distinct_client_tuples"] == unique["distinct_server_tuples"] == 1000
    assert unique["kernel_sockets"] == 2000
    duplicate = named["kernel-refuses-duplicate-tuple"].evidence
    assert duplicate["third"]["errno"] == "EADDRNOTAVAIL"
    assert duplicate["first"]["local"] == duplicate["second"]["local"]


def test_nat_is_reported_with_both_tuples() -> None:
    with Lab.up(TOPOLOGIES / "nat.yaml") as lab:
        checks = run_suite("five_tuple", lab, connections=300)
        assert failing(checks) == {}
        named = by_name(checks)
        translation = named["translation"]
        assert translation.observed.startswith("translated: ")
        hosts = translation.evidence["hosts"]
        assert hosts["c1"]["status"] == hosts["c2"]["status"] == "134 of 134 flows translated"
        assert hosts["r"]["status"] == "not translated"  # the router's own flows
        sample = translation.evidence["samples"][0]
        client_side, server_side = sample.split(" ", 1)[1].split(" -> ")
        assert client_side.startswith("10.0.10.1")
        assert server_side.startswith("198.18.0.1:")
        server_view = named["tcp-client-view-is-server-view"].evidence
        assert (server_view["translated"], server_view["identical"]) == (200, 100)
        # The same traffic, judged as if no NAT were there: both claims fail.
        wrong = run_suite("five_tuple", lab, connections=60, udp_flows=6, expect_translation=False)
        assert set(failing(wrong)) == {
            "tcp-client-view-is-server-view",
            "udp-flows-agree",
            "translation",
        }


def test_translation_expected_where_there_is_none(lan: Lab) -> None:
    checks = five_tuple.run(lan, connections=20, udp_flows=4, expect_translation="true")
    assert set(failing(checks)) == {"translation"}
    assert "translation expected" in by_name(checks)["translation"].observed


def test_each_judgement_fails_on_evidence_with_its_property_broken(lan: Lab) -> None:
    evidence = five_tuple.gather(lan, connections=60, udp_flows=10)
    assert failing(five_tuple.evaluate(evidence)) == {}
    assert evidence.tcp is not None
    assert evidence.udp is not None
    tcp, udp = evidence.tcp, evidence.udp
    first = tcp.conns[0]

    def judged(altered: five_tuple.Evidence) -> set[str]:
        return set(failing(five_tuple.evaluate(altered)))

    def with_tcp(altered: five_tuple.TcpEvidence) -> set[str]:
        return judged(dataclasses.replace(evidence, tcp=altered))

    # A tuple used twice.
    twice = dataclasses.replace(tcp, conns=(*tcp.conns, first))
    assert {"tcp-tuples-unique", "tcp-client-view-is-kernel-view"} <= with_tcp(twice)
    # A source port outside the host's range.
    low, _high = evidence.port_ranges[first.host] or (0, 0)
    moved = dataclasses.replace(first, local=(first.local[0], low - 1))
    assert "source-ports-in-range" in with_tcp(
        dataclasses.replace(tcp, conns=(moved, *tcp.conns[1:]))
    )
    # A connection the kernel does not list; sockets held by another process.
    view = tcp.clients_kernel[first.host]
    lost = dataclasses.replace(view, sockets=view.sockets[1:])
    hidden = dataclasses.replace(tcp, clients_kernel={**tcp.clients_kernel, first.host: lost})
    assert with_tcp(hidden) == {"tcp-client-view-is-kernel-view"}
    foreign = dataclasses.replace(view, owners={inode: 1 for inode in view.owners or {}})
    held = dataclasses.replace(tcp, clients_kernel={**tcp.clients_kernel, first.host: foreign})
    assert with_tcp(held) == {"tcp-client-view-is-kernel-view"}
    # The server saw a connection differently from its client.
    echo = tcp.echoes[0]
    misread = dataclasses.replace(echo.served, peer=(echo.served.peer[0], 1))
    echoes = (dataclasses.replace(echo, served=misread), *tcp.echoes[1:])
    assert "tcp-client-view-is-server-view" in with_tcp(dataclasses.replace(tcp, echoes=echoes))
    # A connection no server process accepted.
    gone = dataclasses.replace(tcp, accepted=tcp.accepted[1:])
    assert {"tcp-concurrent-connections", "tcp-server-view-is-kernel-view"} <= with_tcp(gone)
    # Two UDP server sockets where one should serve all.
    two = dataclasses.replace(udp.server_kernel, sockets=udp.server_kernel.sockets * 2)
    assert judged(
        dataclasses.replace(evidence, udp=dataclasses.replace(udp, server_kernel=two))
    ) == {"udp-flows-agree"}
    # The kernel accepting a duplicate five-tuple.
    assert evidence.duplicate is not None
    allowed = dataclasses.replace(evidence.duplicate, third_errno=None)
    assert judged(dataclasses.replace(evidence, duplicate=allowed)) == {
        "kernel-refuses-duplicate-tuple"
    }
    # A phase that could not run makes its checks errors, not passes.
    broken = five_tuple.evaluate(dataclasses.replace(evidence, errors={"udp": "OSError: x"}))
    assert {c.name: c.verdict for c in broken if c.verdict != "pass"} == {
        "source-ports-in-range": "error",
        "udp-flows-agree": "error",
        "translation": "error",
    }


def test_connect_many_opens_distinct_connections_and_stays_responsive(lan: Lab) -> None:
    server = lan.hosts["h2"].agent()
    listener = server.listen("tcp", address="10.0.1.12", backlog=1024)
    client = lan.hosts["h1"].agent()
    reply = client.request(
        "connect_many", proto="tcp", address="10.0.1.12", port=listener.port, count=500
    )
    assert (reply["connected"], reply["failed"], reply["pid"]) == (500, 0, client.pid)
    results = reply["results"]
    ports = {r["local"][1] for r in results}
    assert len(ports) == 500
    assert {tuple(r["peer"]) for r in results} == {("10.0.1.12", listener.port)}
    established = {
        s.local[1]
        for s in diag.sockets(lan.hosts["h1"], "tcp", 4, states={"ESTABLISHED"})
        if s.peer == ("10.0.1.12", listener.port)
    }
    assert established == ports
    socks = [r["sock"] for r in results]
    assert client.request("close_many", socks=[*socks, 10**9], linger0=True) == {
        "closed": 500,
        "missing": [10**9],
    }
    assert diag.sockets(lan.hosts["h1"], "tcp", 4) == []

    # Arguments are checked before anything is opened.
    for bad in (
        {"count": -1},
        {"count": 1, "data": "two\nlines"},
        {"count": 1, "source": "fd00:1::11"},
        {"count": 1, "window": 0},
    ):
        with pytest.raises(AgentError) as refused:
            client.request("connect_many", proto="tcp", address="10.0.1.12", port=1, **bad)
        assert refused.value.kind == "bad-request"
    with pytest.raises(AgentError, match="socket ids"):
        client.request("close_many", socks="all")

    # With data, each connection also carries the server's account of itself.
    echoed = client.request(
        "connect_many", proto="tcp", address="10.0.1.12", port=listener.port, count=3, data="hi"
    )["results"]
    assert [r["reply"]["peer"] for r in echoed] == [r["local"] for r in echoed]
    assert {r["reply"]["pid"] for r in echoed} == {server.pid}

    # A thousand connects in flight towards silence (no host answers 10.0.1.99): other
    # requests are still answered at once.
    answers: list[dict[str, int]] = []
    stalled = threading.Thread(
        target=lambda: answers.append(
            client.request(
                "connect_many",
                proto="tcp",
                address="10.0.1.99",
                port=9,
                count=1000,
                window=1000,
                timeout=1.0,
            )["errors"]
        )
    )
    stalled.start()
    time.sleep(0.3)
    started = time.perf_counter()
    client.request("ping")
    assert time.perf_counter() - started < 0.5
    stalled.join()
    assert answers == [{"ETIMEDOUT": 1000}]


def test_ephemeral_ports_run_out_at_the_range() -> None:
    with Lab.up(parse_topology(NARROW, "narrow.yaml")) as lab:
        listener = lab.hosts["h2"].agent().listen("tcp", address="10.0.1.12")
        client = lab.hosts["h1"].agent()
        reply = client.request(
            "connect_many", proto="tcp", address="10.0.1.12", port=listener.port, count=11
        )
        results = reply["results"]
        assert sorted(r["local"][1] for r in results[:10]) == list(range(40000, 40010))
        assert results[10]["errno"] == "EADDRNOTAVAIL"
        assert reply["errors"] == {"EADDRNOTAVAIL": 1}
        client.request("close_many", socks=[r["sock"] for r in results[:10]], linger0=True)

        # The suite reports the same exhaustion, with the errno, as a failed check.
        checks = five_tuple.run(lab, server="h2", connections=12, udp_flows=4)
        concurrent = by_name(checks)["tcp-concurrent-connections"]
        assert concurrent.verdict == "fail"
        assert "10 of 12 established" in concurrent.observed
        assert concurrent.evidence["failures"] == {"EADDRNOTAVAIL": 2}
