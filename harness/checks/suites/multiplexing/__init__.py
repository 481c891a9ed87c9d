"""The multiplexing suite: many processes share one address, and every message reaches the
process that owns its destination port.

    from harness.checks.suites import multiplexing
    checks = multiplexing.run(lab, server="h3", processes=50)

K server processes (agents) on one host each listen on a TCP port and a UDP port of their
own. Client processes on at least two other hosts send tagged messages to every one of
those ports at once (the agent's `exchange` op: one request per client process opens all
its sockets concurrently and collects every echo). Each echo names the process (pid) and
the socket that answered and the flow as the server saw it; the servers' own `accepted`
and `datagram` events give the receiving side's account. `gather` collects all of that
into an `Evidence` record and `evaluate` judges it, so the judgement can be run again on
evidence altered on purpose (that is how the tests show each check can fail).

Against your own server, `service="web:8080/tcp"` (`--set multiplexing.service=...`):
client processes connect to the one listener of the user's process and hold their
connections while the server host's socket table is read; every connection must be
accepted by that process (or one it forked) and held by no other. No bytes are sent (a
real server speaks its own protocol): delivery is judged by the server-side sockets and
their holders, and the verdicts say so; the UDP checks are "skip" for a TCP service, and a
UDP service is refused. See `multiplexing/_real.py`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from harness.checks.suites._base import (
    Check,
    Endpoint,
    Flow,
    Recorder,
    all_errors,
    endpoint,
    exchange,
    gathered,
    parallel,
    pick_roles,
    show,
    target_address,
)
from harness.errors import HarnessError, UsageError
from harness.observe.sockets import unmapped

if TYPE_CHECKING:
    from harness.core.agent import Agent
    from harness.lab import Lab

NAME = "multiplexing"
CHECKS: tuple[str, ...] = (
    "processes-own-ports",
    "tcp-delivered-to-owner",
    "udp-delivered-to-owner",
    "udp-one-socket-serves-all",
    "tcp-socket-per-connection",
    "tcp-same-process-distinct-sport",
)

EXPECTED: Mapping[str, str] = {
    "processes-own-ports": (
        "K distinct processes on the server host, each holding exactly one TCP listener and "
        "one UDP socket, on ports no other process holds (the kernel lists one listener per "
        "port)"
    ),
    "tcp-delivered-to-owner": (
        "every TCP message is echoed by the process that owns its destination port, none by "
        "another process, none lost; every connection a server accepted came from a client "
        "that addressed that server's port"
    ),
    "udp-delivered-to-owner": (
        "every UDP datagram is echoed by the process that owns its destination port, none "
        "by another process, none lost; every datagram a server received came from a client "
        "that addressed that server's port"
    ),
    "udp-one-socket-serves-all": (
        "per UDP port, one server socket answers every client, and it sees each client "
        "socket's distinct source address and port (clients on at least two hosts)"
    ),
    "tcp-socket-per-connection": (
        "per TCP port, the listener accepts one new socket per connection; every accepted "
        "socket has a distinct four-tuple, the same one the client sees, and answers only "
        "its own connection"
    ),
    "tcp-same-process-distinct-sport": (
        "two connections from one client process to one server port, open at the same "
        "time, differ in source port and are served by different sockets"
    ),
}


SAMPLE = 10  # problems listed in a check's evidence before the rest is only counted


# ---- evidence ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A server's own account of one connection (`accepted`) or datagram (`datagram`)."""

    sock: int
    local: Endpoint
    peer: Endpoint
    listener: int | None = None  # for accepted connections


@dataclass(frozen=True)
class Server:
    """One server process and the two sockets it owns."""

    pid: int
    tcp_sock: int
    tcp: Endpoint
    udp_sock: int
    udp: Endpoint
    held: tuple[tuple[int, str, str, Endpoint], ...]  # (sock, proto, kind, local) it reported
    accepted: tuple[Received, ...] = ()
    datagrams: tuple[Received, ...] = ()


@dataclass(frozen=True)
class Evidence:
    """Everything one run observed; `evaluate` judges it."""

    server_host: str
    client_hosts: tuple[str, ...]
    processes: int
    connections: int  # client sockets per process and port, per protocol
    messages: int  # messages per client socket
    servers: tuple[Server, ...]
    flows: tuple[Flow, ...]
    kernel_listeners: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    seconds: float = 0.0


# ---- running -----------------------------------------------------------------------------


def run(  # noqa: PLR0913 - keyword-only options: the suite's API (--set)
    lab: Lab,
    *,
    server: str | None = None,
    clients: Sequence[str] | None = None,
    processes: int = 50,
    clients_per_host: int = 2,
    connections: int = 2,
    messages: int = 2,
    family: int = 4,
    timeout: float = 30.0,
    service: str | None = None,
) -> list[Check]:
    """Run the suite on `lab`: `processes` server processes on `server`, and
    `clients_per_host` client processes on each client host, each opening `connections`
    TCP connections and as many UDP sockets to every server port and sending `messages`
    tagged messages on each. `service` ("web:8080/tcp") makes the user's process
    listening there the one server instead (see `_real`)."""
    if service is not None:
        from harness.checks.suites.multiplexing import _real

        _check_options(processes, clients_per_host, connections, messages, family, timeout)
        return gathered(
            lambda: _real.gather(
                lab,
                service,
                server=server,
                clients=clients,
                clients_per_host=clients_per_host,
                connections=connections,
                family=family,
                timeout=timeout,
            ),
            lambda evidence: _real.evaluate(evidence, NAME, CHECKS),
            not_run,
        )
    return gathered(
        lambda: gather(
            lab,
            server=server,
            clients=clients,
            processes=processes,
            clients_per_host=clients_per_host,
            connections=connections,
            messages=messages,
            family=family,
            timeout=timeout,
        ),
        evaluate,
        not_run,
    )


def not_run(reason: str) -> list[Check]:
    """Every check as an error with `reason` (the suite could not gather its evidence)."""
    return all_errors(NAME, EXPECTED, reason)


def gather(  # noqa: PLR0913 - keyword-only options: the suite's API (--set)
    lab: Lab,
    *,
    server: str | None = None,
    clients: Sequence[str] | None = None,
    processes: int = 50,
    clients_per_host: int = 2,
    connections: int = 2,
    messages: int = 2,
    family: int = 4,
    timeout: float = 30.0,
) -> Evidence:
    """Start the processes, let every client talk to every port at once, collect it all."""
    _check_options(processes, clients_per_host, connections, messages, family, timeout)
    roles = pick_roles(lab, server, clients, min_clients=2)
    started = time.perf_counter()
    server_host = lab.hosts[roles.server]
    agents: list[Agent] = []  # every agent started, closed at the end whatever happens

    def start(host: str) -> Agent:
        agent = lab.hosts[host].agent()
        agents.append(agent)
        return agent

    try:
        servers = parallel(lambda _i: start(roles.server), range(processes))
        wildcard = "0.0.0.0" if family == 4 else "::"
        v6only = True if family == 6 else None

        def open_ports(agent: Agent) -> Server:
            tcp = agent.listen("tcp", 0, wildcard, v6only=v6only)
            udp = agent.listen("udp", 0, wildcard, v6only=v6only)
            held = tuple((s.id, s.proto, s.kind, s.local) for s in agent.sockets())
            return Server(agent.pid, tcp.id, tcp.local, udp.id, udp.local, held)

        owned = parallel(open_ports, servers)
        client_agents = parallel(
            start, [host for host in roles.clients for _i in range(clients_per_host)]
        )

        def talk(agent: Agent) -> list[Flow]:
            address = target_address(lab.hosts[agent.host], server_host, family)
            specs = [
                {
                    "proto": proto,
                    "address": address,
                    "port": port,
                    "tag": f"{agent.host}.{agent.pid}.{proto}{port}.{c}",
                }
                for s in owned
                for proto, port in (("tcp", s.tcp[1]), ("udp", s.udp[1]))
                for c in range(connections)
            ]
            return exchange(agent, specs, messages=messages, timeout=timeout)

        flows = [flow for batch in parallel(talk, client_agents) for flow in batch]
        parallel(lambda agent: agent.request("ping"), servers)  # their events are all in now
        owned = [_with_events(record, agent) for record, agent in zip(owned, servers, strict=True)]
        kernel = _kernel_listeners(lab, roles.server, family)
    finally:
        parallel(lambda agent: agent.close(), agents)
    return Evidence(
        server_host=roles.server,
        client_hosts=roles.clients,
        processes=processes,
        connections=connections,
        messages=messages,
        servers=tuple(owned),
        flows=tuple(flows),
        kernel_listeners=kernel,
        seconds=time.perf_counter() - started,
    )


def _check_options(
    processes: int,
    clients_per_host: int,
    connections: int,
    messages: int,
    family: int,
    timeout: float,
) -> None:
    for name, value, low in (
        ("processes", processes, 1),
        ("clients_per_host", clients_per_host, 1),
        ("connections", connections, 1),
        ("messages", messages, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise UsageError(f"multiplexing: {name} must be an integer >= {low}, not {value!r}")
    if family not in (4, 6):
        raise UsageError(f"multiplexing: family must be 4 or 6, not {family!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise UsageError(f"multiplexing: timeout must be a positive number, not {timeout!r}")


def _with_events(record: Server, agent: Agent) -> Server:
    accepted = tuple(
        Received(int(e["sock"]), endpoint(e["local"]), endpoint(e["peer"]), int(e["listener"]))
        for e in agent.events("accepted")
    )
    datagrams = tuple(
        Received(int(e["sock"]), endpoint(e["local"]), endpoint(e["peer"]))
        for e in agent.events("datagram")
    )
    return Server(
        record.pid,
        record.tcp_sock,
        record.tcp,
        record.udp_sock,
        record.udp,
        record.held,
        accepted,
        datagrams,
    )


def _kernel_listeners(lab: Lab, host: str, family: int) -> dict[str, dict[int, int]]:
    """Port → number of sockets, as the kernel lists them (TCP: LISTEN, UDP: unconnected)."""
    from harness.observe import diag

    counts: dict[str, dict[int, int]] = {}
    wanted: tuple[tuple[Literal["tcp", "udp"], str], ...] = (("tcp", "LISTEN"), ("udp", "UNCONN"))
    for proto, state in wanted:
        rows = diag.sockets(lab.hosts[host], proto, family, states=[state])
        counts[proto] = dict(Counter(row.local[1] for row in rows))
    return counts


# ---- judging -----------------------------------------------------------------------------


def evaluate(evidence: Evidence) -> list[Check]:
    """Judge the evidence: one record per check, in CHECKS order."""
    rec = Recorder(NAME, CHECKS)
    judges: dict[str, Callable[[Evidence], tuple[bool, str, dict[str, Any]]]] = {
        "processes-own-ports": _processes_own_ports,
        "tcp-delivered-to-owner": lambda e: _delivered(e, "tcp"),
        "udp-delivered-to-owner": lambda e: _delivered(e, "udp"),
        "udp-one-socket-serves-all": _udp_one_socket,
        "tcp-socket-per-connection": _tcp_socket_per_connection,
        "tcp-same-process-distinct-sport": _same_process_distinct_sport,
    }
    for name in CHECKS:
        with rec.check(name, expected=EXPECTED[name]) as check:
            ok, observed, details = judges[name](evidence)
            check.observe(ok=ok, observed=observed, evidence={**_context(evidence), **details})
    return rec.results()


def _context(evidence: Evidence) -> dict[str, Any]:
    return {
        "server_host": evidence.server_host,
        "client_hosts": list(evidence.client_hosts),
        "processes": evidence.processes,
        "client_processes": len({(f.host, f.pid) for f in evidence.flows}),
        "connections_per_port": evidence.connections,
        "messages_per_socket": evidence.messages,
        "seconds": round(evidence.seconds, 3),
    }


class _Problems:
    """Counts problems and keeps the first few as evidence."""

    def __init__(self) -> None:
        self.count = 0
        self.sample: list[str] = []

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.sample) < SAMPLE:
            self.sample.append(text)

    def __bool__(self) -> bool:
        return self.count > 0

    def evidence(self) -> dict[str, Any]:
        return {"problems": self.count, "problem_sample": self.sample}


def _owners(evidence: Evidence, proto: str) -> dict[int, Server]:
    return {(s.tcp if proto == "tcp" else s.udp)[1]: s for s in evidence.servers}


def _processes_own_ports(evidence: Evidence) -> tuple[bool, str, dict[str, Any]]:
    problems = _Problems()
    servers = evidence.servers
    if len(servers) != evidence.processes:
        problems.add(f"{len(servers)} server processes answered, not {evidence.processes}")
    for what, values in (
        ("pid", [s.pid for s in servers]),
        ("TCP port", [s.tcp[1] for s in servers]),
        ("UDP port", [s.udp[1] for s in servers]),
    ):
        for value, count in Counter(values).items():
            if count > 1:
                problems.add(f"{count} server processes share {what} {value}")
    for s in servers:
        wanted = {(s.tcp_sock, "tcp", "listener", s.tcp), (s.udp_sock, "udp", "datagram", s.udp)}
        if set(s.held) != wanted or len(s.held) != 2:
            held = ", ".join(f"{p} {k} {show(local)}" for _i, p, k, local in s.held)
            problems.add(f"pid {s.pid} holds {held or 'nothing'}, not just its two sockets")
    for proto in ("tcp", "udp"):
        listed = evidence.kernel_listeners.get(proto, {})
        for port, s in _owners(evidence, proto).items():
            if listed.get(port) != 1:
                problems.add(
                    f"the kernel lists {listed.get(port, 0)} {proto.upper()} socket(s) on "
                    f"port {port} (owner pid {s.pid}), not 1"
                )
    table = [
        {"pid": s.pid, "tcp": show(s.tcp), "udp": show(s.udp)}
        for s in sorted(servers, key=lambda s: s.tcp[1])
    ]
    observed = (
        f"{len(servers)} processes (pids {len({s.pid for s in servers})} distinct) on "
        f"{evidence.server_host}: TCP ports {_span(s.tcp[1] for s in servers)}, UDP ports "
        f"{_span(s.udp[1] for s in servers)}"
    )
    if problems:
        observed += f"; {problems.count} problem(s): {problems.sample[0]}"
    return not problems, observed, {"owners": table, **problems.evidence()}


def _delivered(evidence: Evidence, proto: str) -> tuple[bool, str, dict[str, Any]]:
    owners = _owners(evidence, proto)
    owner_pids = {s.pid for s in evidence.servers}
    problems = _Problems()
    flows = [f for f in evidence.flows if f.proto == proto]
    sent = echoed = misdelivered = lost = retried = 0
    per_port: dict[int, Counter[int]] = defaultdict(Counter)
    for flow in flows:
        port = flow.target[1]
        owner = owners.get(port)
        sent += evidence.messages
        if flow.error is not None:
            problems.add(f"{flow.tag}: {flow.error}")
        if flow.lost:
            problems.add(f"{flow.tag}: no echo for {', '.join(flow.lost)}")
        answered = {r.sent for r in flow.replies if r.data == r.sent}
        expected = {f"{flow.tag}#{i}" for i in range(evidence.messages)}
        lost += len(expected - answered)
        for reply in flow.replies:
            per_port[port][reply.pid] += 1
            retried += reply.tries > 1
            if reply.data != reply.sent:
                problems.add(f"{flow.tag}: sent {reply.sent!r}, the echo says {reply.data!r}")
                continue
            if owner is None or reply.pid != owner.pid or reply.local[1] != port:
                misdelivered += 1
                who = "another server process" if reply.pid in owner_pids else "a stranger"
                problems.add(
                    f"{reply.sent} to port {port} (owner pid "
                    f"{owner.pid if owner else '?'}) was answered by pid {reply.pid} "
                    f"({who}) on {show(reply.local)}"
                )
                continue
            echoed += 1
        if expected - answered and not flow.lost and flow.error is None:
            problems.add(f"{flow.tag}: no echo for {', '.join(sorted(expected - answered))}")
    stray = _stray_arrivals(evidence, proto, flows, problems)
    ports_ok = sum(
        1 for port, pids in per_port.items() if port in owners and set(pids) == {owners[port].pid}
    )
    observed = (
        f"{sent} {proto.upper()} messages from {len(flows)} client sockets to "
        f"{len(owners)} ports: {echoed} echoed by the owning process, {misdelivered} by "
        f"another, {lost} lost; {stray} arrivals at a process nobody addressed; "
        f"{ports_ok}/{len(owners)} ports answered only by their owner"
    )
    if problems:
        observed += f"; {problems.count} problem(s): {problems.sample[0]}"
    details = {
        "sent": sent,
        "echoed_by_owner": echoed,
        "misdelivered": misdelivered,
        "lost": lost,
        "stray_arrivals": stray,
        "retried": retried,
        "ports": [
            {
                "port": port,
                "owner_pid": owners[port].pid,
                "answered_by": dict(per_port.get(port, {})),
            }
            for port in sorted(owners)
        ],
        **problems.evidence(),
    }
    ok = not problems and echoed == sent and sent > 0
    return ok, observed, details


def _stray_arrivals(
    evidence: Evidence, proto: str, flows: Sequence[Flow], problems: _Problems
) -> int:
    """The receiving side's account: what reached a process from a client that did not
    address that process's port (each one a problem)."""
    addressed: dict[int, set[Endpoint]] = defaultdict(set)
    for flow in flows:
        if flow.local is not None:
            addressed[flow.target[1]].add(unmapped(flow.local))
    stray = 0
    for s in evidence.servers:
        port = (s.tcp if proto == "tcp" else s.udp)[1]
        arrivals = s.accepted if proto == "tcp" else s.datagrams
        for arrival in arrivals:
            if unmapped(arrival.peer) not in addressed[port] or arrival.local[1] != port:
                stray += 1
                problems.add(
                    f"pid {s.pid} (port {port}) received from {show(arrival.peer)} on "
                    f"{show(arrival.local)}, a client that did not address it"
                )
    return stray


def _udp_one_socket(evidence: Evidence) -> tuple[bool, str, dict[str, Any]]:
    owners = _owners(evidence, "udp")
    problems = _Problems()
    table: list[dict[str, Any]] = []
    reuses = 0
    for port, s in sorted(owners.items()):
        flows = [f for f in evidence.flows if f.proto == "udp" and f.target[1] == port]
        sources = [unmapped(f.local) for f in flows if f.local is not None]
        seen_by_echo = {unmapped(r.peer) for f in flows for r in f.replies}
        seen_by_server = {unmapped(d.peer) for d in s.datagrams}
        socks = {r.sock for f in flows for r in f.replies} | {d.sock for d in s.datagrams}
        if socks != {s.udp_sock}:
            problems.add(f"port {port}: answered by sockets {sorted(socks)}, not {s.udp_sock}")
        shared, reused = _shared_sources(flows)
        for source, count in shared.items():
            problems.add(f"port {port}: {count} client sockets share source {show(source)}")
        reuses += reused
        for f in flows:
            if f.local is None:
                continue
            for r in f.replies:
                if unmapped(r.peer) != unmapped(f.local):
                    problems.add(
                        f"{r.sent}: the server saw it from {show(r.peer)}, the client sent "
                        f"from {show(f.local)}"
                    )
        if seen_by_server != set(sources) or seen_by_echo != set(sources):
            problems.add(
                f"port {port}: {len(sources)} client sources, the server socket saw "
                f"{len(seen_by_server)} (events) and {len(seen_by_echo)} (echoes)"
            )
        addresses = {a for a, _p in sources}
        if len(addresses) < 2:
            problems.add(f"port {port}: clients from {len(addresses)} address(es), not >= 2")
        table.append(
            {
                "port": port,
                "pid": s.pid,
                "server_sock": s.udp_sock,
                "sources": len(set(sources)),
                "source_addresses": sorted(addresses),
            }
        )
    observed = (
        f"{len(owners)} UDP ports; per port one socket answered "
        f"{_span(t['sources'] for t in table)} distinct client sources from "
        f"{_span(len(t['source_addresses']) for t in table)} addresses"
    )
    if problems:
        observed += f"; {problems.count} problem(s): {problems.sample[0]}"
    sample_port = table[0]["port"] if table else None
    sources_of_sample = sorted(
        show(unmapped(f.local))
        for f in evidence.flows
        if f.proto == "udp" and f.target[1] == sample_port and f.local is not None
    )
    details = {
        "ports": table,
        "sample_port_sources": sources_of_sample,
        # not a problem: see _shared_sources
        "sources_reused_by_another_process": reuses,
        **problems.evidence(),
    }
    return not problems and bool(table), observed, details


def _shared_sources(flows: Sequence[Flow]) -> tuple[dict[Endpoint, int], int]:
    """Sources that client sockets open at the same time, or on two hosts, share (a
    problem), and how many sockets reused a source another process of their host had used
    (not one). One client process holds
    all its flows open until its exchange ends, so its sockets overlap; two processes'
    exchanges need not (on a busy machine one may end before the other starts), and UDP,
    without TIME_WAIT, hands a closed socket's port to the next one that asks."""
    by_process: dict[tuple[str, int], list[Endpoint]] = defaultdict(list)
    for f in flows:
        if f.local is not None:
            by_process[(f.host, f.pid)].append(unmapped(f.local))
    shared: Counter[Endpoint] = Counter()
    for sources in by_process.values():
        shared.update({s: c for s, c in Counter(sources).items() if c > 1})
    hosts: dict[Endpoint, set[str]] = defaultdict(set)
    for (host, _pid), sources in by_process.items():
        for source in sources:
            hosts[source].add(host)
    for source, on in hosts.items():
        if len(on) > 1:  # two hosts never own one address: no reuse explains it
            shared[source] = max(shared[source], len(on))
    everyone = Counter(s for sources in by_process.values() for s in set(sources))
    reused = sum(c - 1 for s, c in everyone.items() if c > 1 and s not in shared)
    return dict(shared), reused


def _tcp_socket_per_connection(evidence: Evidence) -> tuple[bool, str, dict[str, Any]]:
    owners = _owners(evidence, "tcp")
    problems = _Problems()
    table: list[dict[str, Any]] = []
    all_tuples: Counter[tuple[Endpoint, Endpoint]] = Counter()
    for port, s in sorted(owners.items()):
        flows = [
            f
            for f in evidence.flows
            if f.proto == "tcp" and f.target[1] == port and f.local is not None
        ]
        accepted = [a for a in s.accepted if a.listener == s.tcp_sock]
        by_peer = {unmapped(a.peer): a for a in accepted}
        if len(accepted) != len(flows):
            problems.add(
                f"port {port}: {len(flows)} connections, the listener accepted {len(accepted)}"
            )
        for sock, count in Counter(a.sock for a in accepted).items():
            if count > 1:
                problems.add(f"port {port}: accepted socket {sock} reported {count} times")
        for a in accepted:
            all_tuples[(unmapped(a.local), unmapped(a.peer))] += 1
        for f in flows:
            assert f.local is not None
            assert f.peer is not None
            mine = by_peer.get(unmapped(f.local))
            if mine is None:
                problems.add(f"{f.tag}: no accepted socket for {show(f.local)}")
                continue
            if (unmapped(mine.local), unmapped(mine.peer)) != (unmapped(f.peer), unmapped(f.local)):
                problems.add(
                    f"{f.tag}: the client saw {show(f.local)} -> {show(f.peer)}, the server "
                    f"accepted {show(mine.peer)} -> {show(mine.local)}"
                )
            for r in f.replies:
                if r.sock != mine.sock or unmapped(r.peer) != unmapped(f.local):
                    problems.add(
                        f"{r.sent}: answered by socket {r.sock} for {show(r.peer)}, but "
                        f"socket {mine.sock} was accepted for {show(f.local)}"
                    )
                if r.sock == s.tcp_sock:
                    problems.add(f"{r.sent}: answered by the listening socket itself")
        table.append(
            {
                "port": port,
                "pid": s.pid,
                "listener": s.tcp_sock,
                "connections": len(flows),
                "accepted_sockets": len({a.sock for a in accepted}),
            }
        )
    for four_tuple, count in all_tuples.items():
        if count > 1:
            local, peer = four_tuple
            problems.add(f"four-tuple {show(peer)} -> {show(local)} accepted {count} times")
    accepted_total = sum(t["accepted_sockets"] for t in table)
    connections = sum(t["connections"] for t in table)
    observed = (
        f"{connections} TCP connections to {len(owners)} ports: {accepted_total} accepted "
        f"sockets, {len(all_tuples)} distinct four-tuples"
    )
    if problems:
        observed += f"; {problems.count} problem(s): {problems.sample[0]}"
    sample = next(iter(sorted(owners)), None)
    details = {
        "ports": table,
        "sample_port_connections": [
            {
                "client": f"{f.host} pid {f.pid}",
                "four_tuple": f"{show(f.local)} -> {show(f.peer)}",
                "server_sock": f.replies[0].sock if f.replies else None,
            }
            for f in evidence.flows
            if f.proto == "tcp" and f.target[1] == sample and f.local is not None
        ],
        **problems.evidence(),
    }
    return not problems and connections > 0, observed, details


def _same_process_distinct_sport(evidence: Evidence) -> tuple[bool, str, dict[str, Any]]:
    if evidence.connections < 2:
        raise HarnessError(
            f"needs at least 2 connections per client process and port, not "
            f"{evidence.connections} (option connections=)"
        )
    groups: dict[tuple[str, int, Endpoint], list[Flow]] = defaultdict(list)
    for f in evidence.flows:
        if f.proto == "tcp":
            groups[(f.host, f.pid, f.target)].append(f)
    problems = _Problems()
    for (host, pid, target), flows in groups.items():
        opened = [f for f in flows if f.local is not None]
        if len(opened) < 2:
            problems.add(f"{host} pid {pid} -> {show(target)}: {len(opened)} connection(s)")
            continue
        sports = Counter(f.local[1] for f in opened if f.local is not None)
        for sport, count in sports.items():
            if count > 1:
                problems.add(
                    f"{host} pid {pid} -> {show(target)}: {count} connections from source "
                    f"port {sport}"
                )
        socks = [{r.sock for r in f.replies} for f in opened]
        for i, first in enumerate(socks):
            for second in socks[i + 1 :]:
                if first & second:
                    problems.add(
                        f"{host} pid {pid} -> {show(target)}: two connections served by "
                        f"server socket(s) {sorted(first & second)}"
                    )
    sample_key = next(iter(groups), None)
    sample = [
        {
            "client": f"{f.host} pid {f.pid}",
            "local": show(f.local),
            "peer": show(f.peer),
            "server_socks": sorted({r.sock for r in f.replies}),
        }
        for f in (groups[sample_key] if sample_key else [])
    ]
    observed = (
        f"{len(groups)} (client process, server port) pairs with "
        f"{_span(len(v) for v in groups.values())} simultaneous connections each"
    )
    observed += (
        f"; {problems.count} problem(s): {problems.sample[0]}"
        if problems
        else ": every pair's connections had distinct source ports and server sockets"
    )
    details = {"pairs": len(groups), "sample": sample, **problems.evidence()}
    return not problems and bool(groups), observed, details


def _span(values: Iterable[int]) -> str:
    items = sorted(values)
    if not items:
        return "none"
    return str(items[0]) if items[0] == items[-1] else f"{items[0]}-{items[-1]}"
