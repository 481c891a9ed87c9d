"""The multiplexing suite against a server of the user's (`service=HOST:PORT/PROTO`).

Client processes (agents) on the client hosts open `connections` TCP connections each to
the one listener and hold them open; the server host's socket table (sock_diag, holders
from /proc/*/fd) is then read: every connection must have its own accepted socket, with
the client's four-tuple, held by the listener's process or a process it forked, and by no
other process. No bytes are sent: a server of the user's speaks its own protocol and
echoes nothing, so delivery is judged by the server-side sockets and who holds them, and
each verdict says so. The UDP checks do not apply to a TCP service ("skip"); a UDP
service is refused (a real UDP server keeps no per-flow state to read).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import (
    Check,
    Endpoint,
    Recorder,
    endpoint,
    parallel,
    pick_roles,
    show,
    target_address,
)
from harness.checks.suites._service import RealService, real_service, wait_accepted
from harness.errors import HarnessError, UsageError
from harness.observe import sockets
from harness.observe.sockets import unmapped

if TYPE_CHECKING:
    from harness.core.agent import Agent
    from harness.lab import Lab
    from harness.observe.sockets import OwnedSocket

SAMPLE = 10
NOT_SENT = (
    "no bytes sent: a server of the user's speaks its own protocol, so delivery is judged "
    "by the server-side sockets and the processes holding them (sock_diag + /proc)"
)
REAL_EXPECTED: Mapping[str, str] = {
    "processes-own-ports": (
        "every socket listening on the service's port is held by the service's process "
        "(or processes it forked), and by no other process"
    ),
    "tcp-delivered-to-owner": (
        "every TCP connection from many client processes is accepted by the service's "
        "process (or one it forked) and held by no other process: the server host has one "
        "established socket per connection with its four-tuple, held there"
    ),
    "udp-delivered-to-owner": "(UDP: not applicable to a TCP service)",
    "udp-one-socket-serves-all": "(UDP: not applicable to a TCP service)",
    "tcp-socket-per-connection": (
        "the listener yields one accepted socket per connection: distinct sockets, distinct "
        "four-tuples, each the one its client sees"
    ),
    "tcp-same-process-distinct-sport": (
        "two connections from one client process to the service, open at the same time, "
        "differ in source port and are held as different server sockets"
    ),
}


@dataclass(frozen=True)
class Conn:
    host: str
    pid: int
    sock: int
    local: Endpoint
    peer: Endpoint


@dataclass(frozen=True)
class RealEvidence:
    """What one run against a server of the user's observed."""

    service: str
    owner: str  # who holds the listener, as text
    pids: tuple[int, ...]  # the service's processes
    client_hosts: tuple[str, ...]
    connections: int  # per client process
    conns: tuple[Conn, ...]
    failures: Mapping[str, int]
    listeners: tuple[OwnedSocket, ...]  # every socket listening on the port
    held: tuple[OwnedSocket, ...]  # established on the port, the service's
    others: tuple[OwnedSocket, ...]  # established on the port, anyone else's or nobody's
    seconds: float = 0.0


def check_udp(real: RealService, text: str) -> None:
    if real.proto != "tcp":
        raise UsageError(
            f"multiplexing: service={text!r} is UDP: a real UDP server keeps no per-flow "
            "state (one unconnected socket) and echoes nothing, so which process got each "
            "datagram cannot be read; name a TCP service, or leave service= out for "
            "netharness's own servers"
        )


def gather(
    lab: Lab,
    service: str,
    *,
    server: str | None,
    clients: Sequence[str] | None,
    clients_per_host: int,
    connections: int,
    family: int,
    timeout: float,
) -> RealEvidence:
    real = real_service(lab, service, suite="multiplexing", server=server)
    check_udp(real, service)
    roles = pick_roles(lab, real.host, clients, min_clients=1)
    server_host = lab.hosts[real.host]
    fixed = real.listen_address(family)
    started = time.perf_counter()
    agents: list[Agent] = []

    def start(host: str) -> Agent:
        agent = lab.hosts[host].agent()
        agents.append(agent)
        return agent

    try:
        client_agents = parallel(
            start, [h for h in roles.clients for _i in range(clients_per_host)]
        )

        def connect(agent: Agent) -> dict[str, Any]:
            address = fixed or target_address(lab.hosts[agent.host], server_host, family)
            return agent.request(
                "connect_many",
                proto="tcp",
                address=address,
                port=real.port,
                count=connections,
                window=connections,
                timeout=timeout,
            )

        replies = parallel(connect, client_agents)
        conns, failures = _collect(client_agents, replies)
        try:  # the connections are held open while the server's side is read
            held, others = wait_accepted(lab, real, len(conns), timeout, 3 * timeout)
            table = sockets.table(server_host, listening=True, port=real.port, protos=["tcp"])
        finally:
            _reset(client_agents, conns)
    finally:
        parallel(lambda agent: agent.close(), agents)
    return RealEvidence(
        service=real.label,
        owner=real.describe(),
        pids=real.pids,
        client_hosts=roles.clients,
        connections=connections,
        conns=tuple(conns),
        failures=failures,
        listeners=table.sockets,
        held=tuple(held),
        others=tuple(others),
        seconds=time.perf_counter() - started,
    )


def _collect(
    agents: Sequence[Agent], replies: Sequence[Mapping[str, Any]]
) -> tuple[list[Conn], dict[str, int]]:
    conns: list[Conn] = []
    failures: Counter[str] = Counter()
    for agent, reply in zip(agents, replies, strict=True):
        for result in reply["results"]:
            if "sock" in result:
                local, peer = endpoint(result["local"]), endpoint(result["peer"])
                conns.append(Conn(agent.host, agent.pid, int(result["sock"]), local, peer))
            else:
                failures[str(result.get("errno") or result.get("kind") or "error")] += 1
    return conns, dict(failures)


def _reset(agents: Sequence[Agent], conns: Sequence[Conn]) -> None:
    """Reset every client connection: nothing is left in TIME_WAIT."""
    by_pid: dict[int, list[int]] = defaultdict(list)
    for c in conns:
        by_pid[c.pid].append(c.sock)

    def close(agent: Agent) -> None:
        if by_pid.get(agent.pid):
            agent.request("close_many", socks=by_pid[agent.pid], linger0=True)

    with contextlib.suppress(HarnessError):  # the agents are ended next anyway
        parallel(close, agents)


# ---- judging -----------------------------------------------------------------------------

Judgement = tuple[bool, str, dict[str, Any]]


def evaluate(evidence: RealEvidence, name: str, checks: Sequence[str]) -> list[Check]:
    rec = Recorder(name, checks)
    judges: dict[str, Callable[[RealEvidence], Judgement]] = {
        "processes-own-ports": _owns_port,
        "tcp-delivered-to-owner": _delivered,
        "tcp-socket-per-connection": _socket_per_connection,
        "tcp-same-process-distinct-sport": _distinct_sport,
    }
    for check_name in checks:
        with rec.check(check_name, expected=REAL_EXPECTED[check_name]) as check:
            judge = judges.get(check_name)
            if judge is None:
                check.skip(
                    f"not measured: the server is {evidence.service}, a TCP service of the "
                    "user's (leave service= out for netharness's UDP servers)"
                )
                continue
            ok, observed, details = judge(evidence)
            context = {"service": evidence.service, "owner": evidence.owner}
            check.observe(ok=ok, observed=observed, evidence={**context, **details})
    return rec.results()


def _row(s: OwnedSocket) -> dict[str, Any]:
    return {
        "local": show(s.local),
        "peer": show(s.peer),
        "inode": s.inode,
        "owners": [{"pid": o.pid, "command": o.command} for o in s.owners],
    }


def _owns_port(evidence: RealEvidence) -> Judgement:
    pids = set(evidence.pids)
    strangers = [
        s for s in evidence.listeners if not any(o.descends_from(p) for o in s.owners for p in pids)
    ]
    observed = (
        f"{evidence.service}: {len(evidence.listeners)} listening socket(s) "
        f"({', '.join(show(s.local) for s in evidence.listeners)}) held by {evidence.owner}"
    )
    if strangers:
        observed += "; also held by others: " + "; ".join(
            f"{show(s.local)} {s.owners_text()}" for s in strangers
        )
    rows = [_row(s) for s in evidence.listeners]
    return not strangers and bool(evidence.listeners), observed, {"listeners": rows}


def _server_side(evidence: RealEvidence) -> dict[Endpoint, list[OwnedSocket]]:
    """The server host's established sockets on the port, by their peer (a client)."""
    found: dict[Endpoint, list[OwnedSocket]] = defaultdict(list)
    for s in (*evidence.held, *evidence.others):
        found[unmapped(s.peer)].append(s)
    return found


def _delivered(evidence: RealEvidence) -> Judgement:
    held = {s.inode for s in evidence.held}
    by_peer = _server_side(evidence)
    problems: list[str] = []
    owners: Counter[int] = Counter()
    for c in evidence.conns:
        mine = by_peer.get(unmapped(c.local), [])
        if not mine:
            problems.append(f"{c.host} pid {c.pid} {show(c.local)}: not accepted")
        for s in mine:
            if s.inode in held:
                owners.update({o.pid for o in s.owners})
            else:
                problems.append(f"{show(c.local)} accepted, held by {s.owners_text()}")
    if evidence.failures:
        problems.append(f"connects failed: {dict(evidence.failures)}")
    processes = len({(c.host, c.pid) for c in evidence.conns})
    accepted = sum(1 for c in evidence.conns if by_peer.get(unmapped(c.local)))
    observed = (
        f"{len(evidence.conns)} connections from {processes} client processes on "
        f"{len(evidence.client_hosts)} hosts: {accepted} accepted, "
        f"{len(evidence.held)} held by {evidence.owner} (pids holding them: "
        f"{', '.join(str(p) for p in sorted(owners)) or 'none'}), {len(evidence.others)} by "
        f"another process or nobody; {NOT_SENT}"
    )
    if problems:
        observed += f"; {len(problems)} problem(s): {problems[0]}"
    details = {
        "connections": len(evidence.conns),
        "accepted_by_service": len(evidence.held),
        "held_elsewhere": [_row(s) for s in evidence.others[:SAMPLE]],
        "holders": {str(p): n for p, n in sorted(owners.items())},
        "problems": problems[:SAMPLE],
        "seconds": round(evidence.seconds, 3),
    }
    ok = not problems and accepted == len(evidence.conns) == len(evidence.held)
    return ok and bool(evidence.conns), observed, details


def _socket_per_connection(evidence: RealEvidence) -> Judgement:
    by_peer = _server_side(evidence)
    problems: list[str] = []
    for c in evidence.conns:
        mine = by_peer.get(unmapped(c.local), [])
        if len(mine) != 1:
            problems.append(f"{show(c.local)}: {len(mine)} server sockets, not 1")
            continue
        if unmapped(mine[0].local) != unmapped(c.peer):
            problems.append(
                f"{show(c.local)} -> {show(c.peer)}: the server holds it as "
                f"{show(mine[0].peer)} -> {show(mine[0].local)}"
            )
    inodes = [s.inode for s in evidence.held]
    tuples = {(unmapped(s.local), unmapped(s.peer)) for s in evidence.held}
    if len(set(inodes)) != len(inodes) or len(tuples) != len(inodes):
        problems.append(f"{len(inodes)} accepted sockets, {len(tuples)} distinct four-tuples")
    listeners = {s.inode for s in evidence.listeners}
    if listeners & set(inodes):
        problems.append("a listening socket counted as accepted")
    observed = (
        f"{len(evidence.conns)} connections to {evidence.service}: {len(set(inodes))} "
        f"accepted sockets, {len(tuples)} distinct four-tuples, each the client's own"
    )
    if problems:
        observed += f"; {len(problems)} problem(s): {problems[0]}"
    sample = [_row(s) for s in evidence.held[:SAMPLE]]
    return not problems and bool(evidence.conns), observed, {"sample": sample}


def _distinct_sport(evidence: RealEvidence) -> Judgement:
    if evidence.connections < 2:
        raise HarnessError(
            f"needs at least 2 connections per client process, not {evidence.connections} "
            "(option connections=)"
        )
    by_peer = _server_side(evidence)
    groups: dict[tuple[str, int], list[Conn]] = defaultdict(list)
    for c in evidence.conns:
        groups[(c.host, c.pid)].append(c)
    problems: list[str] = []
    for (host, pid), conns in groups.items():
        sports = Counter(c.local[1] for c in conns)
        problems += [f"{host} pid {pid}: source port {p} x{n}" for p, n in sports.items() if n > 1]
        inodes = [s.inode for c in conns for s in by_peer.get(unmapped(c.local), [])]
        if len(set(inodes)) != len(inodes) or len(inodes) != len(conns):
            problems.append(f"{host} pid {pid}: {len(conns)} connections, server sockets {inodes}")
    observed = (
        f"{len(groups)} client processes with {evidence.connections} simultaneous connections "
        "each to the service"
    )
    observed += (
        f"; {len(problems)} problem(s): {problems[0]}"
        if problems
        else ": distinct source ports and distinct server sockets in every process"
    )
    return not problems and bool(groups), observed, {"problems": problems[:SAMPLE]}
