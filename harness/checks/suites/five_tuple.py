"""The five_tuple suite: every connection is one five-tuple, the same to client, server and
kernel, never used twice; and where a NAT rewrites it, the suite says so.

    from harness.checks.suites import five_tuple
    checks = five_tuple.run(lab, connections=10_000, processes_per_client=4)

Several client processes (agents) on every client host open `connections` TCP connections
in all, at the same time, to one server address and port (the agent's `connect_many` op:
non-blocking connects, thousands per request). The server is a few processes listening on
that one address and port together (SO_REUSEPORT, as a pre-forked server does), each
holding at most what its open-files limit allows. Three accounts of each connection are then
compared: the client's (getsockname/getpeername in the connecting process), the server's
(the accepted sockets its processes hold) and the kernel's, read with sock_diag inside each
host's namespace (`harness.observe.diag`) with each socket's inode traced to the process that
holds it. Connected UDP flows are checked the same way, the server's account coming from
its echo. Then the kernel is asked for a duplicate: a second socket bound with
SO_REUSEADDR to a source address and port already in use may connect elsewhere, but not to
the same destination (EADDRNOTAVAIL).

Translation. The server's account of a flow differs from the client's when a NAT rewrites
it. The `translation` check reports which flows were translated and shows both tuples
("10.0.10.11:40001 -> 198.18.0.1:40001"), or "no translation". It passes when that report
is complete and consistent (every flow accounted for, one server-side tuple per client
tuple) and agrees with what is expected: `expect_translation` (default: expected exactly
when some host's `nft` script has a nat statement, as topologies/nat.yaml has). The same
expectation decides `tcp-client-view-is-server-view` and `udp-flows-agree`: identical
tuples without NAT, a one-to-one mapping with it.

The suite leaves nothing behind: its client connections are reset (no TIME_WAIT holds
their ports afterwards) and every process it started is ended.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import os
import re
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from harness.checks.suites._base import (
    Check,
    Observation,
    Recorder,
    all_errors,
    pick_roles,
    target_address,
)
from harness.errors import AgentError, HarnessError
from harness.observe import diag

if TYPE_CHECKING:
    from harness.core.agent import Agent
    from harness.lab import Lab, LabHost

NAME = "five_tuple"
CHECKS: tuple[str, ...] = (
    "tcp-concurrent-connections",
    "tcp-client-view-is-kernel-view",
    "tcp-server-view-is-kernel-view",
    "tcp-client-view-is-server-view",
    "tcp-tuples-unique",
    "source-ports-in-range",
    "kernel-refuses-duplicate-tuple",
    "udp-flows-agree",
    "translation",
)

EXPECTED: Mapping[str, str] = {
    "tcp-concurrent-connections": (
        "all N TCP connections, opened at once by several processes on every client host, "
        "are established to the one server address and port, and the server's processes "
        "accept exactly N"
    ),
    "tcp-client-view-is-kernel-view": (
        "in every client's namespace the kernel lists exactly the connections the client "
        "processes reported (getsockname/getpeername), ESTABLISHED, each socket held by "
        "the process that reported it"
    ),
    "tcp-server-view-is-kernel-view": (
        "in the server's namespace the kernel lists exactly the connections the server "
        "processes accepted, ESTABLISHED, each socket held by the process that accepted it"
    ),
    "tcp-client-view-is-server-view": (
        "each connection has the same five-tuple at the client and at the server (a NAT "
        "in the path, when one is expected, maps them one-to-one instead), shown "
        "connection by connection by the server's echo on a sample"
    ),
    "tcp-tuples-unique": (
        "no five-tuple occurs twice: not among the clients' connections, not among the "
        "server's, not in any kernel listing"
    ),
    "source-ports-in-range": (
        "every source port the kernel chose for a client (TCP and UDP) lies inside that "
        "host's net.ipv4.ip_local_port_range"
    ),
    "kernel-refuses-duplicate-tuple": (
        "two sockets bound with SO_REUSEADDR to the same source address and port connect "
        "to two different destinations, but a third one to an already used destination "
        "fails with EADDRNOTAVAIL"
    ),
    "udp-flows-agree": (
        "each connected UDP flow is the same five-tuple to the client, to the kernel in the "
        "client's namespace and to the server's echo (one-to-one where a NAT is expected), "
        "no tuple twice, and one server socket serves them all"
    ),
    "translation": (
        "the flows reach the server untranslated, or — when a NAT is expected — every "
        "translated flow is reported with both tuples and maps to its own server-side tuple"
    ),
}

Endpoint = tuple[str, int]
FiveTuple = tuple[str, str, int, str, int]  # proto, source, sport, destination, dport
T = TypeVar("T")
R = TypeVar("R")

SAMPLE = 5  # tuples shown in a check's evidence before the rest is only counted
SPARE_FILES = 500  # descriptors a process keeps for everything but the connections
UDP_WINDOW = 16  # UDP probes in flight per client process (the server's buffer is finite)
_NAT = re.compile(r"\b(masquerade|snat|dnat|redirect)\b")


# ---- evidence ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Conn:
    """One client socket as its process reported it."""

    host: str
    pid: int
    sock: int
    proto: str
    local: Endpoint
    peer: Endpoint

    @property
    def five_tuple(self) -> FiveTuple:
        return (self.proto, *self.local, *self.peer)


@dataclass(frozen=True)
class Served:
    """One flow as the server saw it: an accepted socket, or the account in an echo."""

    pid: int
    sock: int
    proto: str
    local: Endpoint
    peer: Endpoint

    @property
    def mirrored(self) -> FiveTuple:
        """The tuple from the client's side (source = the peer the server saw)."""
        return (self.proto, *self.peer, *self.local)


@dataclass(frozen=True)
class Echo:
    """A client flow and the server's account of that very flow, from its echo."""

    conn: Conn
    served: Served


@dataclass(frozen=True)
class KernelView:
    """What sock_diag listed in one namespace, and which process holds each socket."""

    host: str
    sockets: tuple[diag.KernelSocket, ...]
    owners: Mapping[int, int] | None  # inode → pid; None when /proc cannot tell

    def owner(self, s: diag.KernelSocket) -> int | None:
        return None if self.owners is None else self.owners.get(s.inode)


@dataclass(frozen=True)
class TcpEvidence:
    requested: int
    conns: tuple[Conn, ...]
    failures: Mapping[str, int]  # errno name → count
    failure_samples: tuple[str, ...]
    seconds: float  # from the first connect to the last reply
    accepted: tuple[Served, ...]
    clients_kernel: Mapping[str, KernelView]
    server_kernel: KernelView
    echoes: tuple[Echo, ...]


@dataclass(frozen=True)
class UdpEvidence:
    requested: int
    target_port: int
    server_sock: int
    server_pid: int
    echoes: tuple[Echo, ...]
    failures: Mapping[str, int]
    failure_samples: tuple[str, ...]
    clients_kernel: Mapping[str, KernelView]
    server_kernel: KernelView


@dataclass(frozen=True)
class DuplicateEvidence:
    host: str
    pid: int
    first: Conn | None
    second: Conn | None
    third_errno: str | None
    third_message: str
    kernel: tuple[diag.KernelSocket, ...]  # the kernel's sockets at that source endpoint


@dataclass(frozen=True)
class Evidence:
    """Everything one run observed; `evaluate` judges it."""

    server_host: str
    client_hosts: tuple[str, ...]
    targets: Mapping[str, str]  # client host → the server address it connects to
    port: int
    listen_address: str
    family: int
    server_pids: tuple[int, ...]
    client_pids: Mapping[str, tuple[int, ...]]
    port_ranges: Mapping[str, tuple[int, int] | None]
    expect_translation: bool
    expectation_source: str
    notes: tuple[str, ...] = ()
    tcp: TcpEvidence | None = None
    udp: UdpEvidence | None = None
    duplicate: DuplicateEvidence | None = None
    errors: Mapping[str, str] = field(default_factory=dict)  # phase → why it failed
    seconds: float = 0.0


# ---- running -----------------------------------------------------------------------------


def run(
    lab: Lab,
    *,
    server: str | None = None,
    clients: Sequence[str] | None = None,
    client: str | None = None,
    connections: int = 1000,
    processes_per_client: int = 2,
    server_processes: int | None = None,
    udp_flows: int = 100,
    echo_sample: int = 64,
    family: int = 4,
    window: int = 64,
    timeout: float = 10.0,
    expect_translation: bool | str | None = None,
) -> list[Check]:
    """Run the suite on `lab` (see the module's docstring). `client` names one client host
    (as `clients=[client]`); `server_processes` (default: two, more if N connections do
    not fit under one process's open-files limit) listen on the one address and port
    together; `window` is the connects each client process keeps in flight."""
    try:
        evidence = gather(
            lab,
            server=server,
            clients=[client] if client and not clients else clients,
            connections=_integer("connections", connections, 1),
            processes_per_client=_integer("processes_per_client", processes_per_client, 1),
            server_processes=(
                None
                if server_processes is None
                else _integer("server_processes", server_processes, 1)
            ),
            udp_flows=_integer("udp_flows", udp_flows, 1),
            echo_sample=_integer("echo_sample", echo_sample, 1),
            family=_integer("family", family, 4),
            window=_integer("window", window, 1),
            timeout=_number("timeout", timeout),
            expect_translation=_flag("expect_translation", expect_translation),
        )
    except HarnessError as exc:
        return not_run(f"could not run: {exc}")
    return evaluate(evidence)


def not_run(reason: str) -> list[Check]:
    """Every check as an error with `reason` (the suite could not gather its evidence)."""
    return all_errors(NAME, EXPECTED, reason)


def translation_expected(lab: Lab) -> bool:
    """True when some host's `nft` script translates addresses (masquerade, snat, dnat)."""
    return any(_NAT.search(h.nft or "") for h in lab.topology.hosts.values())


def gather(
    lab: Lab,
    *,
    server: str | None = None,
    clients: Sequence[str] | None = None,
    connections: int = 1000,
    processes_per_client: int = 2,
    server_processes: int | None = None,
    udp_flows: int = 100,
    echo_sample: int = 64,
    family: int = 4,
    window: int = 64,
    timeout: float = 10.0,
    expect_translation: bool | None = None,
) -> Evidence:
    """Start the processes, open every connection and flow, and collect every account."""
    if family not in (4, 6):
        raise HarnessError(f"five_tuple: family must be 4 or 6, not {family!r}")
    started = time.perf_counter()
    roles = pick_roles(lab, server, clients)
    server_host = lab.hosts[roles.server]
    targets = {c: target_address(lab.hosts[c], server_host, family) for c in roles.clients}
    notes: list[str] = []
    cap = per_process_limit()
    per_host = math.ceil(connections / len(roles.clients))
    if per_host > processes_per_client * cap:
        processes_per_client = math.ceil(per_host / cap)
        notes.append(
            f"processes_per_client raised to {processes_per_client}: one process holds at "
            f"most {cap} connections under this machine's open-files limit"
        )
    if server_processes is None:
        # Two at least: one Python process accepting alone falls behind several that
        # connect, its accept queue overflows, and every SYN dropped then costs the
        # client a one-second retransmission.
        server_processes = max(2, math.ceil(connections / cap))
    if expect_translation is None:
        expect_translation = translation_expected(lab)
        source = "the topology's nft rules" if expect_translation else "no NAT in the topology"
    else:
        source = "the expect_translation option"
    unique_targets = set(targets.values())
    listen_address = (
        unique_targets.pop() if len(unique_targets) == 1 else ("0.0.0.0" if family == 4 else "::")
    )

    agents: list[Agent] = []

    def start(host: str) -> Agent:
        agent = lab.hosts[host].agent()
        agents.append(agent)
        return agent

    evidence: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        servers = parallel(lambda _i: start(roles.server), range(server_processes))
        client_agents = parallel(
            start, [c for c in roles.clients for _i in range(processes_per_client)]
        )
        infos = parallel(lambda a: a.info(), client_agents)
        port_ranges = {
            a.host: i.ip_local_port_range for a, i in zip(client_agents, infos, strict=True)
        }
        listeners, port = _listen(servers, listen_address, family)
        base = Evidence(
            server_host=roles.server,
            client_hosts=roles.clients,
            targets=targets,
            port=port,
            listen_address=listen_address,
            family=family,
            server_pids=tuple(a.pid for a in servers),
            client_pids={
                c: tuple(a.pid for a in client_agents if a.host == c) for c in roles.clients
            },
            port_ranges=port_ranges,
            expect_translation=expect_translation,
            expectation_source=source,
            notes=tuple(notes),
        )
        ctx = _Context(lab, base, servers, client_agents, listeners, window, timeout)
        for phase, collect in (
            ("tcp", lambda: _tcp(ctx, connections, echo_sample)),
            ("udp", lambda: _udp(ctx, udp_flows)),
            ("duplicate", lambda: _duplicate(ctx)),
        ):
            try:
                evidence[phase] = collect()
            except (HarnessError, OSError, ValueError, KeyError, TypeError) as exc:
                # The phase's checks become errors with this reason; the others still run.
                errors[phase] = f"{type(exc).__name__}: {exc}"
        _reset(ctx)
    finally:
        parallel(lambda agent: agent.close(), agents)
    return dataclasses.replace(
        base, **evidence, errors=errors, seconds=time.perf_counter() - started
    )


@dataclass
class _Context:
    lab: Lab
    base: Evidence
    servers: list[Agent]
    clients: list[Agent]
    listeners: dict[int, int]  # server pid → listener sock id
    window: int
    timeout: float
    opened: dict[int, list[int]] = field(default_factory=dict)  # client pid → socks to reset

    def host(self, name: str) -> LabHost:
        return self.lab.hosts[name]


def _listen(servers: Sequence[Agent], address: str, family: int) -> tuple[dict[int, int], int]:
    """One listener per server process, all on one address and port (SO_REUSEPORT when
    several processes share it, as a pre-forked server does)."""
    shared = len(servers) > 1
    v6only = True if family == 6 and address == "::" else None
    first = servers[0].listen(
        "tcp", 0, address, backlog=4096, reuseport=shared, v6only=v6only, echo=True
    )
    listeners = {servers[0].pid: first.id}
    rest = parallel(
        lambda a: a.listen(
            "tcp", first.port, address, backlog=4096, reuseport=True, v6only=v6only, echo=True
        ),
        servers[1:],
    )
    for agent, sock in zip(servers[1:], rest, strict=True):
        listeners[agent.pid] = sock.id
    return listeners, first.port


def _tcp(ctx: _Context, connections: int, echo_sample: int) -> TcpEvidence:
    base = ctx.base
    _preflight(ctx)
    shares = _split(connections, len(ctx.clients))

    def connect(job: tuple[Agent, int]) -> dict[str, Any]:
        agent, count = job
        return agent.request(
            "connect_many",
            proto="tcp",
            address=base.targets[agent.host],
            port=base.port,
            count=count,
            window=ctx.window,
            timeout=ctx.timeout,
        )

    started = time.perf_counter()
    replies = parallel(connect, list(zip(ctx.clients, shares, strict=True)))
    seconds = time.perf_counter() - started
    conns, failures, samples = _collect(ctx, "tcp", replies)
    _await_accepted(ctx, len(conns))
    accepted = _accepted(ctx)
    clients_kernel = {
        c: _kernel(ctx, c, "tcp", {"ESTABLISHED"}, peer=(base.targets[c], base.port))
        for c in base.client_hosts
    }
    server_kernel = _kernel(
        ctx, base.server_host, "tcp", {"ESTABLISHED"}, local=(base.listen_address, base.port)
    )
    echoes = _echo_sample(ctx, conns, echo_sample)
    return TcpEvidence(
        requested=connections,
        conns=tuple(conns),
        failures=failures,
        failure_samples=samples,
        seconds=seconds,
        accepted=accepted,
        clients_kernel=clients_kernel,
        server_kernel=server_kernel,
        echoes=echoes,
    )


def _preflight(ctx: _Context) -> None:
    """One connection and echo per client host first: an unreachable server is reported
    at once, with its errno, instead of after thousands of timeouts."""
    base = ctx.base
    firsts = {a.host: a for a in reversed(ctx.clients)}
    by_pid = {a.pid: a for a in ctx.servers}

    def probe(agent: Agent) -> None:
        target = base.targets[agent.host]
        try:
            sock = agent.connect("tcp", target, base.port, timeout=ctx.timeout)
            echo = sock.request("preflight", timeout=ctx.timeout)
        except AgentError as exc:
            raise HarnessError(
                f"{agent.host} cannot reach {_where((target, base.port))}: {exc}"
            ) from exc
        sock.close(linger0=True)
        # Its server socket must be gone before the server's account is taken.
        by_pid[echo.pid].wait_event("closed", lambda e: e.get("sock") == echo.sock)

    parallel(probe, list(firsts.values()))


def _collect(
    ctx: _Context, proto: str, replies: Sequence[Mapping[str, Any]]
) -> tuple[list[Conn], dict[str, int], tuple[str, ...]]:
    conns: list[Conn] = []
    failures: Counter[str] = Counter()
    samples: list[str] = []
    for agent, reply in zip(ctx.clients, replies, strict=True):
        mine = ctx.opened.setdefault(agent.pid, [])
        for result in reply["results"]:
            if "sock" in result:
                mine.append(int(result["sock"]))
                conns.append(
                    Conn(
                        host=agent.host,
                        pid=agent.pid,
                        sock=int(result["sock"]),
                        proto=proto,
                        local=_endpoint(result["local"]),
                        peer=_endpoint(result["peer"]),
                    )
                )
            else:
                name = str(result.get("errno") or result.get("kind") or "error")
                failures[name] += 1
                if len(samples) < SAMPLE:
                    samples.append(f"{agent.host} pid {agent.pid}: {result.get('message')}")
    return conns, dict(failures), tuple(samples)


def _await_accepted(ctx: _Context, expected: int) -> None:
    """Wait until the server processes hold (at least) every connection the clients made:
    a connection is established for the client before the server has accepted it."""
    deadline = time.monotonic() + ctx.timeout + max(5.0, expected / 2000)
    while True:
        held = sum(parallel(lambda a: a.info().sockets, ctx.servers)) - len(ctx.servers)
        if held >= expected or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _accepted(ctx: _Context) -> tuple[Served, ...]:
    def rows(agent: Agent) -> list[Served]:
        listener = ctx.listeners[agent.pid]
        return [
            Served(agent.pid, s.id, s.proto, s.local, s.peer)
            for s in agent.sockets()
            if s.parent == listener and s.peer is not None and s.state == "connected"
        ]

    return tuple(row for batch in parallel(rows, ctx.servers) for row in batch)


def _kernel(
    ctx: _Context,
    host: str,
    proto: diag.Proto,
    states: set[str] | None,
    *,
    peer: Endpoint | None = None,
    local: Endpoint | None = None,
) -> KernelView:
    """The kernel's sockets in `host` matching `peer`/`local` (a wildcard local address
    matches by port), with the pid of the process holding each, as far as /proc tells."""
    listed = diag.sockets(ctx.host(host), proto, ctx.base.family, states=states)
    if peer is not None:
        listed = [s for s in listed if s.peer == peer]
    if local is not None:
        wildcard = local[0] in ("0.0.0.0", "::")
        listed = [s for s in listed if s.local[1] == local[1] and (wildcard or s.local == local)]
    pids = [a.pid for a in ctx.servers + ctx.clients if a.host == host]
    return KernelView(host, tuple(listed), _owners(ctx.host(host), pids))


def _owners(host: LabHost, pids: Iterable[int]) -> dict[int, int] | None:
    """Socket inode → pid for the given processes, read from /proc/<pid>/fd; None when
    a pid is not visible here as a process in the host's namespace (e.g. in a container's
    own pid namespace)."""
    try:
        netns = os.stat(host.handle.netns_path).st_ino
    except OSError:
        return None
    owners: dict[int, int] = {}
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != netns:
                return None
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return None
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners[int(link[8:-1])] = pid
    return owners


def _echo_sample(ctx: _Context, conns: Sequence[Conn], sample: int) -> tuple[Echo, ...]:
    """Ask the server, over a sample of the connections (some from every process), which
    flow it sees each one as: its echo names the accepted socket and both endpoints."""
    by_pid: dict[int, list[Conn]] = {}
    for conn in conns:
        by_pid.setdefault(conn.pid, []).append(conn)
    per_process = max(1, math.ceil(sample / max(1, len(by_pid))))
    agents = {a.pid: a for a in ctx.clients}

    def ask(pid: int) -> list[Echo]:
        agent = agents[pid]
        picked = by_pid[pid][:: max(1, len(by_pid[pid]) // per_process)][:per_process]
        out = []
        for conn in picked:
            reply = agent.request("request", sock=conn.sock, data="five-tuple", timeout=5.0)
            out.append(Echo(conn, _served(reply["reply"], "tcp")))
        return out

    return tuple(e for batch in parallel(ask, list(by_pid)) for e in batch)


def _udp(ctx: _Context, flows: int) -> UdpEvidence:
    base = ctx.base
    owner = ctx.servers[0]
    try:  # the TCP port's number, which TCP does not take from UDP
        bound = owner.listen("udp", base.port, base.listen_address)
    except AgentError:
        bound = owner.listen("udp", 0, base.listen_address)
    shares = _split(flows, len(ctx.clients))

    def connect(job: tuple[Agent, int]) -> dict[str, Any]:
        agent, count = job
        return agent.request(
            "connect_many",
            proto="udp",
            address=base.targets[agent.host],
            port=bound.port,
            count=count,
            window=min(ctx.window, UDP_WINDOW),
            timeout=ctx.timeout,
            data="five-tuple",
        )

    replies = parallel(connect, list(zip(ctx.clients, shares, strict=True)))
    echoes: list[Echo] = []
    failures: Counter[str] = Counter()
    samples: list[str] = []
    for agent, reply in zip(ctx.clients, replies, strict=True):
        for result in reply["results"]:
            if "sock" not in result:
                failures[str(result.get("errno") or result.get("kind"))] += 1
                if len(samples) < SAMPLE:
                    samples.append(f"{agent.host} pid {agent.pid}: {result.get('message')}")
                continue
            conn = Conn(
                agent.host,
                agent.pid,
                int(result["sock"]),
                "udp",
                _endpoint(result["local"]),
                _endpoint(result["peer"]),
            )
            echoes.append(Echo(conn, _served(result["reply"], "udp")))
    clients_kernel = {
        c: _kernel(ctx, c, "udp", None, peer=(base.targets[c], bound.port))
        for c in base.client_hosts
    }
    server_kernel = _kernel(
        ctx, base.server_host, "udp", None, local=(base.listen_address, bound.port)
    )
    return UdpEvidence(
        requested=flows,
        target_port=bound.port,
        server_sock=bound.id,
        server_pid=owner.pid,
        echoes=tuple(echoes),
        failures=dict(failures),
        failure_samples=tuple(samples),
        clients_kernel=clients_kernel,
        server_kernel=server_kernel,
    )


def _duplicate(ctx: _Context) -> DuplicateEvidence:
    """Source address and port reused with SO_REUSEADDR: fine towards a second
    destination, refused (EADDRNOTAVAIL) towards one the port already talks to."""
    base = ctx.base
    agent = ctx.clients[0]
    host = agent.host
    target = base.targets[host]
    other = ctx.servers[0].listen("tcp", 0, base.listen_address, echo=True)
    # The client's own address towards the server: on a network they share, if any.
    own = target_address(ctx.host(base.server_host), ctx.host(host), base.family)
    opened = ctx.opened.setdefault(agent.pid, [])
    first = agent.connect("tcp", target, base.port, source=own, reuseaddr=True)
    opened.append(first.id)
    source, sport = first.local
    second = agent.connect("tcp", target, other.port, source=source, sport=sport, reuseaddr=True)
    opened.append(second.id)
    errno_name: str | None = None
    message = "the kernel accepted a duplicate five-tuple"
    try:
        third = agent.connect("tcp", target, base.port, source=source, sport=sport, reuseaddr=True)
        third_conn: Conn | None = Conn(
            host, agent.pid, third.id, "tcp", third.local, third.peer or ("", 0)
        )
        opened.append(third.id)
    except AgentError as exc:
        errno_name, message, third_conn = exc.errno, str(exc), None
    kernel = tuple(
        s for s in diag.sockets(ctx.host(host), "tcp", base.family) if s.local == (source, sport)
    )
    conns = [
        Conn(host, agent.pid, s.id, "tcp", s.local, s.peer or ("", 0)) for s in (first, second)
    ]
    if third_conn is not None:
        message = f"the third socket connected: {_show(third_conn.five_tuple)}"
    return DuplicateEvidence(host, agent.pid, conns[0], conns[1], errno_name, message, kernel)


def _reset(ctx: _Context) -> None:
    """Reset every client connection: no TIME_WAIT is left to hold the host's ports."""

    def close(agent: Agent) -> None:
        socks = ctx.opened.get(agent.pid)
        if socks:
            agent.request("close_many", socks=socks, linger0=True)

    with contextlib.suppress(HarnessError):  # the agents are ended next anyway
        parallel(close, ctx.clients)


# ---- judging -----------------------------------------------------------------------------


def evaluate(evidence: Evidence) -> list[Check]:
    """One record per check, judged from `evidence` alone."""
    rec = Recorder(NAME, CHECKS)
    judges: dict[str, Callable[[Evidence, Observation], None]] = {
        "tcp-concurrent-connections": _judge_concurrent,
        "tcp-client-view-is-kernel-view": _judge_client_kernel,
        "tcp-server-view-is-kernel-view": _judge_server_kernel,
        "tcp-client-view-is-server-view": _judge_client_server,
        "tcp-tuples-unique": _judge_unique,
        "source-ports-in-range": _judge_port_range,
        "kernel-refuses-duplicate-tuple": _judge_duplicate,
        "udp-flows-agree": _judge_udp,
        "translation": _judge_translation,
    }
    needs = {
        "source-ports-in-range": ("tcp", "udp"),
        "kernel-refuses-duplicate-tuple": ("duplicate",),
        "udp-flows-agree": ("udp",),
        "translation": ("tcp", "udp"),
    }
    for name in CHECKS:
        with rec.check(name, expected=EXPECTED[name]) as check:
            missing = [p for p in needs.get(name, ("tcp",)) if p in evidence.errors]
            if missing:
                check.error("; ".join(f"{p}: {evidence.errors[p]}" for p in missing))
                continue
            judges[name](evidence, check)
    return rec.results()


def _tcp_of(evidence: Evidence) -> TcpEvidence:
    if evidence.tcp is None:
        raise HarnessError("no TCP evidence was gathered")
    return evidence.tcp


def _judge_concurrent(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    ok = len(tcp.conns)
    per_host = Counter(c.host for c in tcp.conns)
    per_pid = Counter(c.pid for c in tcp.conns)
    accepted_per_pid = Counter(s.pid for s in tcp.accepted)
    where = _where((evidence.listen_address, evidence.port))
    processes = sum(len(p) for p in evidence.client_pids.values())
    observed = (
        f"{ok} of {tcp.requested} established at once from {len(evidence.client_hosts)} hosts "
        f"({processes} processes) to {where} in {tcp.seconds:.2f} s "
        f"({ok / tcp.seconds if tcp.seconds else 0:.0f}/s); {len(tcp.accepted)} accepted by "
        f"{len(evidence.server_pids)} server processes"
    )
    if tcp.failures:
        observed += "; failed: " + ", ".join(f"{n} x{k}" for n, k in sorted(tcp.failures.items()))
    check.observe(
        ok=ok == tcp.requested
        and len(tcp.accepted) == ok
        and all(per_host[h] for h in evidence.client_hosts)
        and len(per_pid) == processes,
        observed=observed,
        evidence={
            "requested": tcp.requested,
            "established": ok,
            "accepted": len(tcp.accepted),
            "seconds": round(tcp.seconds, 4),
            "per_second": round(ok / tcp.seconds) if tcp.seconds else None,
            "server": {"address": where, "pids": list(evidence.server_pids)},
            "server_accepted_per_pid": {str(p): n for p, n in sorted(accepted_per_pid.items())},
            "clients": {
                h: {
                    "target": evidence.targets[h],
                    "pids": list(evidence.client_pids[h]),
                    "connections": per_host[h],
                    "per_pid": {str(p): per_pid[p] for p in evidence.client_pids[h]},
                }
                for h in evidence.client_hosts
            },
            "failures": dict(tcp.failures),
            "failure_samples": list(tcp.failure_samples),
            "sample": [_conn_json(c) for c in tcp.conns[:SAMPLE]],
            "notes": list(evidence.notes),
        },
    )


def _compare_kernel(
    reported: Mapping[FiveTuple, int], view: KernelView
) -> tuple[list[FiveTuple], list[FiveTuple], list[str], list[str], Counter[FiveTuple]]:
    """missing (reported, not listed), extra (listed, not reported), not ESTABLISHED,
    held by another process, and the kernel's own duplicates."""
    listed = Counter(s.five_tuple for s in view.sockets)
    missing = [t for t in reported if t not in listed]
    extra = [t for t in listed if t not in reported]
    states = [f"{_show(s.five_tuple)} {s.state}" for s in view.sockets if s.state != "ESTABLISHED"]
    wrong_owner = []
    if view.owners is not None:
        for s in view.sockets:
            holder = view.owner(s)
            claimed = reported.get(s.five_tuple)
            if claimed is not None and holder != claimed:
                wrong_owner.append(
                    f"{_show(s.five_tuple)}: reported by pid {claimed}, inode {s.inode} "
                    f"held by {holder if holder is not None else 'no agent'}"
                )
    duplicates = Counter({t: n for t, n in listed.items() if n > 1})
    return missing, extra, states, wrong_owner, duplicates


def _judge_client_kernel(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    per_host: dict[str, Any] = {}
    problems = 0
    matched = 0
    owner_known = True
    for host in evidence.client_hosts:
        reported = {c.five_tuple: c.pid for c in tcp.conns if c.host == host}
        view = tcp.clients_kernel[host]
        missing, extra, states, wrong, dups = _compare_kernel(reported, view)
        owner_known &= view.owners is not None
        problems += len(missing) + len(extra) + len(states) + len(wrong) + len(dups)
        matched += len(reported) - len(missing)
        per_host[host] = {
            "reported": len(reported),
            "kernel_listed": len(view.sockets),
            "missing_from_kernel": [_show(t) for t in missing[:SAMPLE]],
            "not_reported_by_any_process": [_show(t) for t in extra[:SAMPLE]],
            "not_established": states[:SAMPLE],
            "held_by_another_process": wrong[:SAMPLE],
            "sample": [_kernel_json(s, view) for s in view.sockets[:SAMPLE]],
        }
    total = len(tcp.conns)
    ownership = (
        "each held by the process that reported it"
        if owner_known
        else "(which process holds each is not visible from here)"
    )
    check.observe(
        ok=problems == 0 and matched == total,
        observed=(
            f"{matched} of {total} client tuples ESTABLISHED in the kernel of "
            f"{len(evidence.client_hosts)} client hosts, {ownership}; {problems} discrepancies"
        ),
        evidence={"hosts": per_host, "ownership_checked": owner_known},
    )


def _judge_server_kernel(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    reported = {s.mirrored: s.pid for s in tcp.accepted}
    view = tcp.server_kernel
    # The kernel lists a server socket from the server's side: mirror it too.
    mirrored = KernelView(
        view.host,
        tuple(
            diag.KernelSocket(s.proto, s.family, s.state, s.peer, s.local, s.inode, s.uid)
            for s in view.sockets
        ),
        view.owners,
    )
    missing, extra, states, wrong, dups = _compare_kernel(reported, mirrored)
    problems = len(missing) + len(extra) + len(states) + len(wrong) + len(dups)
    ownership = (
        "each held by the process that accepted it"
        if view.owners is not None
        else "(which process holds each is not visible from here)"
    )
    check.observe(
        ok=problems == 0 and len(reported) == len(tcp.accepted),
        observed=(
            f"{len(reported) - len(missing)} of {len(tcp.accepted)} accepted connections "
            f"ESTABLISHED in the kernel of {evidence.server_host}, {ownership}; "
            f"{len(extra)} there that no server process holds; {problems} discrepancies"
        ),
        evidence={
            "accepted": len(tcp.accepted),
            "kernel_listed": len(view.sockets),
            "missing_from_kernel": [_show(t) for t in missing[:SAMPLE]],
            "not_accepted_by_any_process": [_show(t) for t in extra[:SAMPLE]],
            "not_established": states[:SAMPLE],
            "held_by_another_process": wrong[:SAMPLE],
            "duplicates": [_show(t) for t in list(dups)[:SAMPLE]],
            "sample": [_kernel_json(s, view) for s in view.sockets[:SAMPLE]],
            "ownership_checked": view.owners is not None,
        },
    )


@dataclass(frozen=True)
class _Mapping:
    """How the client tuples of one protocol map onto the server's."""

    identical: int
    translated: int
    unexplained: int  # server-side tuples without a client (or client tuples lost)
    per_host: Mapping[str, tuple[int, int]]  # host → (identical, translated)
    destination_rewritten: int  # echoes whose server-side destination is not the client's
    samples: tuple[str, ...]  # "client tuple -> server tuple" for translated echoes


def _map(conns: Sequence[Conn], served: Sequence[Served], echoes: Sequence[Echo]) -> _Mapping:
    server_side = Counter(s.mirrored for s in served)
    # An echo pairs a flow with the server's account of that very flow: where there is
    # one, it decides. The server holding the client's tuple does not: behind a NAT a
    # router's own flow can leave with the very address and port the NAT already gave a
    # flow it translated, and is then itself remapped.
    moved_by_echo = {
        (e.conn.host, e.conn.pid, e.conn.sock): (e.served.peer, e.served.local)
        != (e.conn.local, e.conn.peer)
        for e in echoes
    }
    per_host: dict[str, list[int]] = {}
    identical = 0
    for conn in conns:
        counts = per_host.setdefault(conn.host, [0, 0])
        moved = moved_by_echo.get((conn.host, conn.pid, conn.sock))
        if moved is None:
            moved = not server_side.get(conn.five_tuple)
        if moved:
            counts[1] += 1
        else:
            identical += 1
            counts[0] += 1
    translated = len(conns) - identical
    # One server-side tuple per client tuple: what is left on each side pairs up exactly.
    unexplained = abs((sum(server_side.values()) - identical) - translated)
    unexplained += sum(n - 1 for n in server_side.values() if n > 1)
    rewritten = sum(1 for e in echoes if e.served.local != e.conn.peer)
    translated_echoes = [
        e for e in echoes if (e.served.peer, e.served.local) != (e.conn.local, e.conn.peer)
    ]
    # Port remaps first: they show what a NAT does when two flows would collide.
    translated_echoes.sort(key=lambda e: e.served.peer[1] == e.conn.local[1])
    samples = tuple(_translated(e) for e in translated_echoes)
    return _Mapping(
        identical,
        translated,
        unexplained,
        {h: (c[0], c[1]) for h, c in per_host.items()},
        rewritten,
        samples,
    )


def _translated(e: Echo) -> str:
    """One translated flow, as "c1 10.0.10.11:40001 -> 198.18.0.1:40001" (the source
    as the client had it, then as the server saw it); both whole flows if the
    destination changed too."""
    if e.served.local == e.conn.peer:
        return f"{e.conn.host} {_where(e.conn.local)} -> {_where(e.served.peer)}"
    return (
        f"{e.conn.host} {_show_flow(e.conn.local, e.conn.peer)} seen by the server as "
        f"{_show_flow(e.served.peer, e.served.local)}"
    )


def _echo_disagreements(echoes: Sequence[Echo], translated_ok: bool) -> list[str]:
    """Echoes whose server-side account contradicts the client's (where a NAT is expected,
    a different account is the NAT's mapping, shown by the translation check)."""
    if translated_ok:
        return []
    bad = []
    for e in echoes:
        if e.served.peer == e.conn.local and e.served.local == e.conn.peer:
            continue
        bad.append(
            f"{e.conn.host} pid {e.conn.pid} {_show_flow(e.conn.local, e.conn.peer)} — "
            f"server pid {e.served.pid} sock {e.served.sock} saw "
            f"{_show_flow(e.served.peer, e.served.local)}"
        )
    return bad


def _judge_client_server(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    mapping = _map(tcp.conns, tcp.accepted, tcp.echoes)
    nat = evidence.expect_translation
    echo_bad = _echo_disagreements(tcp.echoes, nat)
    accepted_socks = {(s.pid, s.sock) for s in tcp.accepted}
    not_accepted = [e for e in tcp.echoes if (e.served.pid, e.served.sock) not in accepted_socks]
    ok = (
        mapping.unexplained == 0
        and not echo_bad
        and not not_accepted
        and (nat or mapping.translated == 0)
        and len(tcp.accepted) == len(tcp.conns)
    )
    if mapping.translated == 0:
        observed = f"all {len(tcp.conns)} connections: the same five-tuple at both ends"
    elif nat:
        observed = (
            f"{mapping.identical} connections the same at both ends, {mapping.translated} "
            f"translated by the NAT (see translation), {mapping.unexplained} unpaired"
        )
    else:
        observed = (
            f"{mapping.translated} of {len(tcp.conns)} connections reach the server as another "
            f"five-tuple, but no NAT is expected ({evidence.expectation_source})"
        )
    observed += (
        f"; {len(tcp.echoes) - len(echo_bad)} of {len(tcp.echoes)} sampled echoes "
        "confirm it connection by connection"
    )
    check.observe(
        ok=ok,
        observed=observed,
        evidence={
            "connections": len(tcp.conns),
            "accepted": len(tcp.accepted),
            "identical": mapping.identical,
            "translated": mapping.translated,
            "unexplained": mapping.unexplained,
            "translation_expected": nat,
            "expectation_from": evidence.expectation_source,
            "echoes": [_echo_json(e) for e in tcp.echoes[:SAMPLE]],
            "echo_disagreements": echo_bad[:SAMPLE],
            "echoed_by_socket_not_accepted": [_echo_json(e) for e in not_accepted[:SAMPLE]],
        },
    )


def _judge_unique(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    client = Counter(c.five_tuple for c in tcp.conns)
    server = Counter(s.mirrored for s in tcp.accepted)
    kernel: Counter[tuple[str, FiveTuple]] = Counter()
    for view in [*tcp.clients_kernel.values(), tcp.server_kernel]:
        kernel.update((view.host, s.five_tuple) for s in view.sockets)
    dup_client = [t for t, n in client.items() if n > 1]
    dup_server = [t for t, n in server.items() if n > 1]
    dup_kernel = [f"{h}: {_show(t)}" for (h, t), n in kernel.items() if n > 1]
    ports = Counter((c.host, c.local, c.peer) for c in tcp.conns)
    check.observe(
        ok=not dup_client and not dup_server and not dup_kernel and len(client) == len(tcp.conns),
        observed=(
            f"{len(client)} distinct of {len(tcp.conns)} client tuples, {len(server)} of "
            f"{len(tcp.accepted)} accepted, {len(kernel)} of {sum(kernel.values())} kernel "
            f"sockets; repeats: {len(dup_client)} client, {len(dup_server)} server, "
            f"{len(dup_kernel)} kernel"
        ),
        evidence={
            "client_tuples": len(tcp.conns),
            "distinct_client_tuples": len(client),
            "server_tuples": len(tcp.accepted),
            "distinct_server_tuples": len(server),
            "kernel_sockets": sum(kernel.values()),
            "distinct_source_endpoints": len(ports),
            "duplicates_client": [_show(t) for t in dup_client[:SAMPLE]],
            "duplicates_server": [_show(t) for t in dup_server[:SAMPLE]],
            "duplicates_kernel": dup_kernel[:SAMPLE],
        },
    )


def _judge_port_range(evidence: Evidence, check: Observation) -> None:
    conns: list[Conn] = []
    if evidence.tcp is not None:
        conns += evidence.tcp.conns
    if evidence.udp is not None:
        conns += [e.conn for e in evidence.udp.echoes]
    per_host: dict[str, Any] = {}
    outside: list[str] = []
    for host in evidence.client_hosts:
        port_range = evidence.port_ranges.get(host)
        if port_range is None:
            raise HarnessError(f"{host} did not report its ip_local_port_range")
        low, high = port_range
        ports = [c.local[1] for c in conns if c.host == host]
        bad = [c for c in conns if c.host == host and not low <= c.local[1] <= high]
        outside += [f"{_show(c.five_tuple)} outside {low}-{high}" for c in bad]
        per_host[host] = {
            "ip_local_port_range": [low, high],
            "ports": len(ports),
            "lowest": min(ports) if ports else None,
            "highest": max(ports) if ports else None,
            "outside": len(bad),
        }
    check.observe(
        ok=not outside and bool(conns),
        observed=(
            f"{len(conns) - len(outside)} of {len(conns)} source ports inside their host's "
            "range ("
            + ", ".join(
                f"{h} {v['ip_local_port_range'][0]}-{v['ip_local_port_range'][1]}: "
                f"{v['lowest']}..{v['highest']}"
                for h, v in per_host.items()
            )
            + ")"
        ),
        evidence={"hosts": per_host, "outside": outside[:SAMPLE]},
    )


def _judge_duplicate(evidence: Evidence, check: Observation) -> None:
    dup = evidence.duplicate
    if dup is None:
        raise HarnessError("no duplicate-tuple evidence was gathered")
    first, second = dup.first, dup.second
    if first is None or second is None:
        raise HarnessError("the first two sockets did not connect")
    listed = {(s.local, s.peer, s.state) for s in dup.kernel}
    both_listed = {
        (first.local, first.peer, "ESTABLISHED"),
        (second.local, second.peer, "ESTABLISHED"),
    } <= listed
    ok = (
        first.local == second.local
        and first.peer != second.peer
        and dup.third_errno == "EADDRNOTAVAIL"
        and both_listed
    )
    check.observe(
        ok=ok,
        observed=(
            f"on {dup.host} (pid {dup.pid}) {_show(first.five_tuple)} and "
            f"{_show(second.five_tuple)} share {_where(first.local)}"
            + (" (both ESTABLISHED in the kernel)" if both_listed else " (not both in the kernel)")
            + "; the same source to "
            + _where(first.peer)
            + (f" again: {dup.third_errno}" if dup.third_errno else f": {dup.third_message}")
        ),
        evidence={
            "host": dup.host,
            "pid": dup.pid,
            "first": _conn_json(first),
            "second": _conn_json(second),
            "third": {"errno": dup.third_errno, "message": dup.third_message},
            "kernel": [
                {"state": s.state, "local": list(s.local), "peer": list(s.peer), "inode": s.inode}
                for s in dup.kernel
            ],
        },
    )


def _judge_udp(evidence: Evidence, check: Observation) -> None:
    udp = evidence.udp
    if udp is None:
        raise HarnessError("no UDP evidence was gathered")
    nat = evidence.expect_translation
    conns = [e.conn for e in udp.echoes]
    problems: list[str] = []
    for host in evidence.client_hosts:
        reported = {c.five_tuple: c.pid for c in conns if c.host == host}
        missing, extra, states, wrong, dups = _compare_kernel(reported, udp.clients_kernel[host])
        problems += [f"{host}: not in the kernel: {_show(t)}" for t in missing]
        problems += [f"{host}: not reported: {_show(t)}" for t in extra]
        problems += [f"{host}: {s}" for s in states + wrong]
        problems += [f"{host}: listed twice: {_show(t)}" for t in dups]
    problems += [f"echo contradicts: {b}" for b in _echo_disagreements(udp.echoes, nat)]
    mapping = _map(conns, [e.served for e in udp.echoes], udp.echoes)
    if mapping.unexplained:
        problems.append(f"{mapping.unexplained} server-side tuples do not pair one-to-one")
    if mapping.translated and not nat:
        problems.append(
            f"{mapping.translated} flows translated but no NAT is expected "
            f"({evidence.expectation_source})"
        )
    client_dups = [t for t, n in Counter(c.five_tuple for c in conns).items() if n > 1]
    problems += [f"tuple used twice: {_show(t)}" for t in client_dups]
    server_socks = {(e.served.pid, e.served.sock) for e in udp.echoes}
    expected_sock = {(udp.server_pid, udp.server_sock)}
    if server_socks - expected_sock:
        problems.append(f"echoes from other sockets: {sorted(server_socks - expected_sock)}")
    kernel_server = udp.server_kernel
    holders = {kernel_server.owner(s) for s in kernel_server.sockets}
    if len(kernel_server.sockets) != 1 or (
        kernel_server.owners is not None and holders != {udp.server_pid}
    ):
        problems.append(
            f"the server's kernel lists {len(kernel_server.sockets)} UDP sockets on port "
            f"{udp.target_port} (held by {sorted(str(h) for h in holders)}), not one"
        )
    if udp.failures:
        problems.append(
            "failed: " + ", ".join(f"{n} x{k}" for n, k in sorted(udp.failures.items()))
        )
    translated = f", {mapping.translated} translated by the NAT" if mapping.translated else ""
    check.observe(
        ok=not problems and len(conns) == udp.requested,
        observed=(
            f"{len(conns)} of {udp.requested} connected UDP flows"
            + (
                f": client, kernel and server echo agree on each{translated}; one server "
                f"socket (pid {udp.server_pid}, sock {udp.server_sock}) answered all"
                if not problems
                else f"; {len(problems)} problems: {'; '.join(problems[:3])}"
            )
        ),
        evidence={
            "flows": len(conns),
            "requested": udp.requested,
            "identical": mapping.identical,
            "translated": mapping.translated,
            "server": {
                "pid": udp.server_pid,
                "sock": udp.server_sock,
                "port": udp.target_port,
                "kernel": [_kernel_json(s, kernel_server) for s in kernel_server.sockets[:3]],
            },
            "echoes": [_echo_json(e) for e in udp.echoes[:SAMPLE]],
            "problems": problems[:SAMPLE],
            "failure_samples": list(udp.failure_samples),
        },
    )


def _judge_translation(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    udp = evidence.udp
    if udp is None:
        raise HarnessError("no UDP evidence was gathered")
    tcp_map = _map(tcp.conns, tcp.accepted, tcp.echoes)
    udp_map = _map([e.conn for e in udp.echoes], [e.served for e in udp.echoes], udp.echoes)
    translated = tcp_map.translated + udp_map.translated
    hosts: dict[str, Any] = {}
    for host in evidence.client_hosts:
        t_same, t_moved = tcp_map.per_host.get(host, (0, 0))
        u_same, u_moved = udp_map.per_host.get(host, (0, 0))
        moved, total = t_moved + u_moved, t_same + t_moved + u_same + u_moved
        status = "not translated" if moved == 0 else f"{moved} of {total} flows translated"
        hosts[host] = {
            "status": status,
            "tcp": {"identical": t_same, "translated": t_moved},
            "udp": {"identical": u_same, "translated": u_moved},
        }
    samples = list(tcp_map.samples) + list(udp_map.samples)
    # Consistent: every translated flow pairs with exactly one server-side tuple, and at
    # least one echo shows a translated flow end to end.
    consistent = (
        tcp_map.unexplained == 0 and udp_map.unexplained == 0 and (translated == 0 or bool(samples))
    )
    rewritten = tcp_map.destination_rewritten + udp_map.destination_rewritten
    expected = evidence.expect_translation
    if translated == 0:
        observed = "no translation"
    else:
        more = f" (+{len(samples) - 2} more)" if len(samples) > 2 else ""
        observed = f"translated: {', '.join(samples[:2])}{more}; " + ", ".join(
            f"{h} {v['status']}" for h, v in hosts.items()
        )
        if rewritten:
            observed += f"; {rewritten} sampled flows had their destination rewritten too"
    if not consistent:
        observed += (
            f"; inconsistent: {tcp_map.unexplained + udp_map.unexplained} server-side tuples "
            "do not pair one-to-one with client tuples"
            + ("" if samples or not translated else ", and no echo shows a translated flow")
        )
    if (translated > 0) != expected:
        observed += (
            f"; translation {'expected' if expected else 'not expected'} "
            f"({evidence.expectation_source})"
        )
    check.observe(
        ok=consistent and (translated > 0) == expected,
        observed=observed,
        evidence={
            "translated_flows": translated,
            "expected": expected,
            "expectation_from": evidence.expectation_source,
            "hosts": hosts,
            "tcp": {
                "identical": tcp_map.identical,
                "translated": tcp_map.translated,
                "unpaired": tcp_map.unexplained,
            },
            "udp": {
                "identical": udp_map.identical,
                "translated": udp_map.translated,
                "unpaired": udp_map.unexplained,
            },
            "samples": samples[:10],
        },
    )


# ---- helpers -----------------------------------------------------------------------------


def per_process_limit() -> int:
    """Connections one process may hold: its open-files limit, less some room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else soft
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    return max(100, min(15_000, int(limit) - SPARE_FILES))


def parallel(call: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`call` on every item at once (agents answer concurrently), results in order."""
    work = list(items)
    if len(work) <= 1:
        return [call(item) for item in work]
    with concurrent.futures.ThreadPoolExecutor(min(len(work), 64)) as pool:
        return list(pool.map(call, work))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _served(reply: Mapping[str, Any], proto: str) -> Served:
    return Served(
        int(reply["pid"]),
        int(reply["sock"]),
        proto,
        _endpoint(reply["local"]),
        _endpoint(reply["peer"]),
    )


def _endpoint(value: Any) -> Endpoint:
    return (str(value[0]), int(value[1]))


def _where(endpoint: Endpoint) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _show(t: FiveTuple) -> str:
    return f"{t[0]} {_where((t[1], t[2]))} -> {_where((t[3], t[4]))}"


def _show_flow(local: Endpoint, peer: Endpoint) -> str:
    return f"{_where(local)} -> {_where(peer)}"


def _conn_json(c: Conn) -> dict[str, Any]:
    return {
        "host": c.host,
        "pid": c.pid,
        "sock": c.sock,
        "proto": c.proto,
        "local": list(c.local),
        "peer": list(c.peer),
    }


def _echo_json(e: Echo) -> dict[str, Any]:
    return {
        "client": _conn_json(e.conn),
        "server": {
            "pid": e.served.pid,
            "sock": e.served.sock,
            "local": list(e.served.local),
            "peer": list(e.served.peer),
        },
    }


def _kernel_json(s: diag.KernelSocket, view: KernelView) -> dict[str, Any]:
    return {
        "state": s.state,
        "local": list(s.local),
        "peer": list(s.peer),
        "inode": s.inode,
        "pid": view.owner(s),
    }


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HarnessError(f"five_tuple: {name} must be an integer >= {low}, not {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not number > 0:
        raise HarnessError(f"five_tuple: {name} must be a positive number, not {value!r}")
    return number


def _flag(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    if text in ("auto", ""):
        return None
    raise HarnessError(f"five_tuple: {name} must be true, false or auto, not {value!r}")
