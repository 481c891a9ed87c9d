"""The multiplexing suite on real labs: it passes where the kernel keeps its promises, and
each check fails when the evidence shows a broken promise.

The suite's evidence is gathered once from a real lab; the "broken" cases then alter one
fact of it (a pid, a socket id, a source port, a lost echo) and run the same judgement,
which is the only honest way to see a check fail: the kernel itself never misdelivers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.checks.suites import Check, checks_of, run_suite
from harness.checks.suites import multiplexing as mx
from harness.checks.suites._base import Flow, exchange
from harness.errors import UsageError
from harness.lab import Lab
from harness.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lan(backend: str) -> Iterator[Lab]:
    with Lab.up(load_topology(ROOT / "topologies" / "lan.yaml"), backend=backend) as lab:
        yield lab


@pytest.fixture(scope="module")
def evidence(lan: Lab) -> mx.Evidence:
    """Real evidence from a small run (8 server processes), for the tampering tests."""
    return mx.gather(lan, processes=8, clients_per_host=2, connections=2, messages=2)


def verdicts(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.verdict for c in checks}


def assert_all_pass(checks: list[Check]) -> None:
    assert [c.name for c in checks] == list(mx.CHECKS)
    failed = {c.name: c.observed for c in checks if not c.passed}
    assert not failed, failed


# ---- the suite passes on the shipped topologies --------------------------------------------


def test_fifty_processes_on_lan(lan: Lab) -> None:
    checks = run_suite("multiplexing", lan)
    assert_all_pass(checks)
    assert checks_of("multiplexing") == mx.CHECKS
    by_name = {c.name: c for c in checks}
    owners = by_name["processes-own-ports"].evidence["owners"]
    assert len(owners) == 50
    assert len({o["pid"] for o in owners}) == 50
    tcp = by_name["tcp-delivered-to-owner"].evidence
    # 2 client hosts x 2 processes x 50 ports x 2 connections x 2 messages
    assert tcp["sent"] == tcp["echoed_by_owner"] == 800
    assert tcp["misdelivered"] == tcp["lost"] == tcp["stray_arrivals"] == 0
    assert all(list(p["answered_by"]) == [p["owner_pid"]] for p in tcp["ports"])
    udp = by_name["udp-one-socket-serves-all"].evidence
    assert udp["client_hosts"] == ["h1", "h2"]
    assert all(p["sources"] == 8 for p in udp["ports"])
    assert all(p["source_addresses"] == ["10.0.1.11", "10.0.1.12"] for p in udp["ports"])
    sport = by_name["tcp-same-process-distinct-sport"].evidence
    assert sport["pairs"] == 200
    first, second = sport["sample"]
    assert first["client"] == second["client"]
    assert first["local"] != second["local"]
    assert first["server_socks"] != second["server_socks"]


def test_routed_with_the_router_as_a_client() -> None:
    with Lab.up(load_topology(ROOT / "topologies" / "routed.yaml")) as lab:
        checks = mx.run(lab)
    assert_all_pass(checks)
    context = checks[0].evidence
    assert context["server_host"] == "h2"
    assert context["client_hosts"] == ["h1", "r1"]
    assert context["processes"] == 50
    ports = checks[3].evidence["ports"]
    assert all(p["source_addresses"] == ["10.0.1.11", "10.0.2.1"] for p in ports)


def test_ipv6(lan: Lab) -> None:
    checks = mx.run(lan, processes=5, family=6)
    assert_all_pass(checks)
    sources = checks[3].evidence["sample_port_sources"]
    assert all(s.startswith(("[fd00:1::11]:", "[fd00:1::12]:")) for s in sources)


def test_real_evidence_passes(evidence: mx.Evidence) -> None:
    assert_all_pass(mx.evaluate(evidence))
    assert len(evidence.servers) == 8
    assert len(evidence.flows) == 2 * 2 * 8 * 2 * 2  # hosts x processes x ports x conns x protos
    assert all(f.error is None and len(f.replies) == 2 for f in evidence.flows)


# ---- each check fails on evidence of a broken promise ----------------------------------------


def tcp_flows(ev: mx.Evidence) -> list[Flow]:
    return [f for f in ev.flows if f.proto == "tcp"]


def udp_flows(ev: mx.Evidence) -> list[Flow]:
    return [f for f in ev.flows if f.proto == "udp"]


def replace_flow(ev: mx.Evidence, old: Flow, new: Flow) -> mx.Evidence:
    return dataclasses.replace(ev, flows=tuple(new if f is old else f for f in ev.flows))


def replace_server(ev: mx.Evidence, index: int, **changes: object) -> mx.Evidence:
    servers = list(ev.servers)
    servers[index] = dataclasses.replace(servers[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(ev, servers=tuple(servers))


def with_reply(ev: mx.Evidence, flow: Flow, index: int, **changes: object) -> mx.Evidence:
    replies = list(flow.replies)
    replies[index] = dataclasses.replace(replies[index], **changes)  # type: ignore[arg-type]
    return replace_flow(ev, flow, dataclasses.replace(flow, replies=tuple(replies)))


def other_owner(ev: mx.Evidence, flow: Flow) -> mx.Server:
    port = flow.target[1]
    return next(s for s in ev.servers if port not in (s.tcp[1], s.udp[1]))


def answered_by_another_process_tcp(ev: mx.Evidence) -> mx.Evidence:
    flow = tcp_flows(ev)[3]
    return with_reply(ev, flow, 1, pid=other_owner(ev, flow).pid)


def answered_by_another_process_udp(ev: mx.Evidence) -> mx.Evidence:
    flow = udp_flows(ev)[5]
    return with_reply(ev, flow, 0, pid=other_owner(ev, flow).pid)


def echo_lost_tcp(ev: mx.Evidence) -> mx.Evidence:
    flow = tcp_flows(ev)[0]
    return replace_flow(ev, flow, dataclasses.replace(flow, replies=flow.replies[:1]))


def datagram_lost(ev: mx.Evidence) -> mx.Evidence:
    flow = udp_flows(ev)[7]
    lost = dataclasses.replace(flow, replies=flow.replies[:1], lost=(f"{flow.tag}#1",))
    return replace_flow(ev, flow, lost)


def datagram_reached_a_stranger(ev: mx.Evidence) -> mx.Evidence:
    """Server 0 received a datagram from a client socket that addressed another port."""
    foreign = next(f for f in udp_flows(ev) if f.target[1] != ev.servers[0].udp[1])
    assert foreign.local is not None
    stray = mx.Received(ev.servers[0].udp_sock, ev.servers[0].udp, foreign.local)
    return replace_server(ev, 0, datagrams=(*ev.servers[0].datagrams, stray))


def connection_reached_a_stranger(ev: mx.Evidence) -> mx.Evidence:
    foreign = next(f for f in tcp_flows(ev) if f.target[1] != ev.servers[0].tcp[1])
    assert foreign.local is not None
    s = ev.servers[0]
    stray = mx.Received(999, s.tcp, foreign.local, s.tcp_sock)
    return replace_server(ev, 0, accepted=(*s.accepted, stray))


def second_udp_socket_answers(ev: mx.Evidence) -> mx.Evidence:
    flow = udp_flows(ev)[2]
    return with_reply(ev, flow, 1, sock=flow.replies[1].sock + 100)


def server_saw_another_source(ev: mx.Evidence) -> mx.Evidence:
    flow = udp_flows(ev)[1]
    assert flow.local is not None
    return with_reply(ev, flow, 0, peer=(flow.local[0], flow.local[1] ^ 1))


def clients_share_a_source(ev: mx.Evidence) -> mx.Evidence:
    """Two client sockets of different hosts to one UDP port come from one endpoint."""
    port = ev.servers[0].udp[1]
    first, second = (
        next(f for f in udp_flows(ev) if f.target[1] == port and f.host == host)
        for host in ("h1", "h2")
    )
    return replace_flow(ev, second, dataclasses.replace(second, local=first.local))


def accepted_one_socket_too_few(ev: mx.Evidence) -> mx.Evidence:
    return replace_server(ev, 2, accepted=ev.servers[2].accepted[1:])


def one_socket_answers_two_connections(ev: mx.Evidence) -> mx.Evidence:
    port = ev.servers[1].tcp[1]
    first, second = [f for f in tcp_flows(ev) if f.target[1] == port][:2]
    replies = tuple(dataclasses.replace(r, sock=first.replies[0].sock) for r in second.replies)
    return replace_flow(ev, second, dataclasses.replace(second, replies=replies))


def client_and_server_disagree_on_the_tuple(ev: mx.Evidence) -> mx.Evidence:
    s = ev.servers[0]
    first = s.accepted[0]
    skewed = dataclasses.replace(first, local=("10.0.1.99", first.local[1]))
    return replace_server(ev, 0, accepted=(skewed, *s.accepted[1:]))


def same_process_same_sport(ev: mx.Evidence) -> mx.Evidence:
    first = tcp_flows(ev)[0]
    second = next(
        f
        for f in tcp_flows(ev)
        if f is not first and (f.host, f.pid, f.target) == (first.host, first.pid, first.target)
    )
    assert second.local is not None
    assert first.local is not None
    return replace_flow(ev, second, dataclasses.replace(second, local=first.local))


def two_processes_share_a_port(ev: mx.Evidence) -> mx.Evidence:
    return replace_server(ev, 1, udp=ev.servers[0].udp)


def process_holds_an_extra_socket(ev: mx.Evidence) -> mx.Evidence:
    s = ev.servers[4]
    return replace_server(ev, 4, held=(*s.held, (99, "tcp", "listener", ("0.0.0.0", 1))))


def kernel_lists_two_listeners(ev: mx.Evidence) -> mx.Evidence:
    tcp = dict(ev.kernel_listeners["tcp"])
    tcp[ev.servers[3].tcp[1]] = 2
    return dataclasses.replace(ev, kernel_listeners={**ev.kernel_listeners, "tcp": tcp})


Tamper = Callable[[mx.Evidence], mx.Evidence]

BROKEN: list[tuple[Tamper, str]] = [
    (two_processes_share_a_port, "processes-own-ports"),
    (process_holds_an_extra_socket, "processes-own-ports"),
    (kernel_lists_two_listeners, "processes-own-ports"),
    (answered_by_another_process_tcp, "tcp-delivered-to-owner"),
    (echo_lost_tcp, "tcp-delivered-to-owner"),
    (connection_reached_a_stranger, "tcp-delivered-to-owner"),
    (answered_by_another_process_udp, "udp-delivered-to-owner"),
    (datagram_lost, "udp-delivered-to-owner"),
    (datagram_reached_a_stranger, "udp-delivered-to-owner"),
    (second_udp_socket_answers, "udp-one-socket-serves-all"),
    (server_saw_another_source, "udp-one-socket-serves-all"),
    (clients_share_a_source, "udp-one-socket-serves-all"),
    (accepted_one_socket_too_few, "tcp-socket-per-connection"),
    (one_socket_answers_two_connections, "tcp-socket-per-connection"),
    (client_and_server_disagree_on_the_tuple, "tcp-socket-per-connection"),
    (one_socket_answers_two_connections, "tcp-same-process-distinct-sport"),
    (same_process_same_sport, "tcp-same-process-distinct-sport"),
]


@pytest.mark.parametrize(("tamper", "check"), BROKEN, ids=[f"{c}:{t.__name__}" for t, c in BROKEN])
def test_check_fails_on_broken_evidence(evidence: mx.Evidence, tamper: Tamper, check: str) -> None:
    checks = {c.name: c for c in mx.evaluate(tamper(evidence))}
    assert checks[check].verdict == "fail", checks[check].observed
    assert checks[check].evidence["problems"] >= 1
    assert checks[check].evidence["problem_sample"]
    assert "problem" in checks[check].observed


def test_every_check_has_a_broken_case() -> None:
    assert {check for _tamper, check in BROKEN} == set(mx.CHECKS)


# ---- what cannot run is reported, not skipped -------------------------------------------------


def test_one_client_host_is_not_enough(lan: Lab) -> None:
    checks = mx.run(lan, clients=["h1"], processes=2)
    assert [c.name for c in checks] == list(mx.CHECKS)
    assert {c.verdict for c in checks} == {"error"}
    assert all("needs 2 client host(s)" in c.observed for c in checks)


def test_one_connection_per_port_cannot_show_distinct_source_ports(lan: Lab) -> None:
    checks = verdicts(mx.run(lan, processes=3, connections=1))
    assert checks.pop("tcp-same-process-distinct-sport") == "error"
    assert set(checks.values()) == {"pass"}


def test_bad_options_are_usage_errors(lan: Lab) -> None:
    with pytest.raises(UsageError, match="processes"):
        mx.run(lan, processes=0)
    with pytest.raises(UsageError, match="family"):
        mx.run(lan, family=5)


def test_exchange_reports_what_went_wrong(lan: Lab) -> None:
    """A message to a port nobody owns is reported with its errno, not silently dropped."""
    client = lan.hosts["h1"].agent()
    try:
        flows = exchange(
            client,
            [
                {"proto": proto, "address": "10.0.1.13", "port": 9, "tag": proto}
                for proto in ("tcp", "udp")
            ],
            retries=0,
            timeout=5.0,
        )
    finally:
        client.close()
    assert [(f.proto, f.replies) for f in flows] == [("tcp", ()), ("udp", ())]
    assert flows[0].error is not None
    assert flows[0].error.startswith("ECONNREFUSED")
    assert flows[1].error is not None
    assert flows[1].error.startswith("ECONNREFUSED")
