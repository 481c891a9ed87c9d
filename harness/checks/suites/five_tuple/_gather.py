"""The five_tuple suite, running: connections opened by many client processes, the
server's and the kernel's accounts collected, a duplicate tried; all in `Evidence`."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import (
    endpoint,
    parallel,
    pick_roles,
    show,
    target_address,
)
from harness.checks.suites._service import RealService, real_service, wait_accepted
from harness.errors import AgentError, HarnessError, UsageError
from harness.observe import diag
from harness.observe.sockets import unmapped

if TYPE_CHECKING:
    from harness.core.agent import Agent
    from harness.lab import Lab, LabHost
    from harness.observe.sockets import OwnedSocket, Owner
from harness.checks.suites.five_tuple._evidence import (
    SAMPLE,
    UDP_WINDOW,
    Conn,
    DuplicateEvidence,
    Echo,
    Endpoint,
    Evidence,
    KernelView,
    Served,
    TcpEvidence,
    UdpEvidence,
    _served,
    _show,
    _split,
    per_process_limit,
    translation_expected,
)


def gather(  # noqa: PLR0913 - keyword-only options: the suite's API (--set)
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
    service: str | None = None,
) -> Evidence:
    """Start the processes, open every connection and flow, and collect every account.
    With `service` (HOST:PORT/PROTO) the server is the user's process listening there,
    and no server agent is started."""
    if family not in (4, 6):
        raise HarnessError(f"five_tuple: family must be 4 or 6, not {family!r}")
    started = time.perf_counter()
    real = _real_service(lab, service, server)
    roles = pick_roles(lab, real.host if real else server, clients)
    server_host = lab.hosts[roles.server]
    fixed = real.listen_address(family) if real else None
    targets = {c: fixed or target_address(lab.hosts[c], server_host, family) for c in roles.clients}
    processes_per_client, server_processes, notes = _processes(
        connections, len(roles.clients), processes_per_client, server_processes
    )
    if real is not None:
        server_processes = 0
        notes.append(f"the server is {real.label}, held by {real.describe()}")
    expect_translation, source = _expectation(lab, expect_translation)
    unique_targets = set(targets.values())
    listen_address = (
        unique_targets.pop() if len(unique_targets) == 1 else ("0.0.0.0" if family == 4 else "::")
    )

    agents: list[Agent] = []

    def start(host: str) -> Agent:
        agent = lab.hosts[host].agent()
        agents.append(agent)
        return agent

    try:
        servers = parallel(lambda _i: start(roles.server), range(server_processes))
        client_agents = parallel(
            start, [c for c in roles.clients for _i in range(processes_per_client)]
        )
        infos = parallel(lambda a: a.info(), client_agents)
        port_ranges = {
            a.host: i.ip_local_port_range for a, i in zip(client_agents, infos, strict=True)
        }
        listeners, port = ({}, real.port) if real else _listen(servers, listen_address, family)
        base = Evidence(
            server_host=roles.server,
            client_hosts=roles.clients,
            targets=targets,
            port=port,
            listen_address=listen_address,
            family=family,
            server_pids=real.pids if real else tuple(a.pid for a in servers),
            client_pids={
                c: tuple(a.pid for a in client_agents if a.host == c) for c in roles.clients
            },
            port_ranges=port_ranges,
            expect_translation=expect_translation,
            expectation_source=source,
            notes=tuple(notes),
            service=real.label if real else None,
            service_owner=real.describe() if real else "",
        )
        ctx = _Context(lab, base, servers, client_agents, listeners, window, timeout, real)
        evidence, errors = _phases(ctx, connections, echo_sample, udp_flows)
        _reset(ctx)
    finally:
        parallel(lambda agent: agent.close(), agents)
    return dataclasses.replace(
        base, **evidence, errors=errors, seconds=time.perf_counter() - started
    )


def _real_service(lab: Lab, service: str | None, server: str | None) -> RealService | None:
    """The user's server that `service` names; it must be TCP (see the package's docs)."""
    if service is None:
        return None
    real = real_service(lab, service, suite="five_tuple", server=server)
    if real.proto != "tcp":
        raise UsageError(
            f"five_tuple: service={service!r} is UDP: the suite measures a real server's "
            "TCP connections; a real UDP server keeps no per-flow state (one unconnected "
            "socket) and does not echo, so it has no account of a flow to compare. Name a "
            "TCP service, or leave service= out for netharness's own echo server."
        )
    return real


NOT_UDP = (
    "not measured: the server is {label}, a TCP service of the user's; a UDP flow needs a "
    "UDP server, and a real one keeps no per-flow state and echoes nothing to compare "
    "(leave service= out for netharness's echo server)"
)


def _phases(
    ctx: _Context, connections: int, echo_sample: int, udp_flows: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """TCP, UDP and the duplicate, in turn: each phase's evidence, or why it has none."""
    evidence: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if ctx.service is not None:
        evidence["not_measured"] = {"udp": NOT_UDP.format(label=ctx.service.label)}
    for phase, collect in (
        ("tcp", lambda: _tcp(ctx, connections, echo_sample)),
        ("udp", lambda: None if ctx.service else _udp(ctx, udp_flows)),
        ("duplicate", lambda: _duplicate(ctx)),
    ):
        try:
            evidence[phase] = collect()
        except (HarnessError, OSError, ValueError, KeyError, TypeError) as exc:
            # The phase's checks become errors with this reason; the others still run.
            errors[phase] = f"{type(exc).__name__}: {exc}"
    return evidence, errors


def _processes(
    connections: int, clients: int, per_client: int, servers: int | None
) -> tuple[int, int, list[str]]:
    """Client processes per host and server processes enough for `connections` under
    this machine's open-files limit, with a note for what was raised."""
    notes: list[str] = []
    cap = per_process_limit()
    per_host = math.ceil(connections / clients)
    if per_host > per_client * cap:
        per_client = math.ceil(per_host / cap)
        notes.append(
            f"processes_per_client raised to {per_client}: one process holds at "
            f"most {cap} connections under this machine's open-files limit"
        )
    if servers is None:
        # Two at least: one Python process accepting alone falls behind several that
        # connect, its accept queue overflows, and every SYN dropped then costs the
        # client a one-second retransmission.
        servers = max(2, math.ceil(connections / cap))
    return per_client, servers, notes


def _expectation(lab: Lab, expected: bool | None) -> tuple[bool, str]:
    """Whether a translation is expected, and what says so."""
    if expected is not None:
        return expected, "the expect_translation option"
    expected = translation_expected(lab)
    return expected, ("the topology's nft rules" if expected else "no NAT in the topology")


@dataclass
class _Context:
    lab: Lab
    base: Evidence
    servers: list[Agent]
    clients: list[Agent]
    listeners: dict[int, int]  # server pid → listener sock id
    window: int
    timeout: float
    service: RealService | None = None  # the user's server (service=), or agents
    opened: dict[int, list[int]] = field(default_factory=dict)  # client pid → socks to reset

    def host(self, name: str) -> LabHost:
        return self.lab.hosts[name]


def _listen(servers: Sequence[Agent], address: str, family: int) -> tuple[dict[int, int], int]:
    """One listener per server process, all on one address and port (SO_REUSEPORT when
    several processes share it, as a pre-forked server does). No `accepted` event per
    connection: the server's account is its `sockets` listing, read once all are in."""
    shared = len(servers) > 1
    v6only = True if family == 6 and address == "::" else None
    options: dict[str, Any] = {"backlog": 4096, "v6only": v6only, "echo": True, "events": False}
    first = servers[0].listen("tcp", 0, address, reuseport=shared, **options)
    listeners = {servers[0].pid: first.id}
    rest = parallel(
        lambda a: a.listen("tcp", first.port, address, reuseport=True, **options), servers[1:]
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
    if ctx.service is None:
        _await_accepted(ctx, len(conns))
        accepted = _accepted(ctx)
        pids = None
    else:  # the user's server says nothing: its accepted sockets, read while held open
        accepted, pids = _accepted_by_service(ctx, ctx.service, len(conns))
    clients_kernel = {
        c: _kernel(ctx, c, "tcp", {"ESTABLISHED"}, peer=(base.targets[c], base.port))
        for c in base.client_hosts
    }
    server_kernel = _kernel(
        ctx,
        base.server_host,
        "tcp",
        {"ESTABLISHED"},
        local=(base.listen_address, base.port),
        pids=pids,
    )
    echoes = () if ctx.service else _echo_sample(ctx, conns, echo_sample)
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
    at once, with its errno, instead of after thousands of timeouts. (A server of the
    user's echoes nothing: connecting is the test; its reset socket is no longer
    ESTABLISHED, so no account counts it.)"""
    base = ctx.base
    firsts = {a.host: a for a in reversed(ctx.clients)}
    by_pid = {a.pid: a for a in ctx.servers}

    def probe(agent: Agent) -> None:
        target = base.targets[agent.host]
        try:
            sock = agent.connect("tcp", target, base.port, timeout=ctx.timeout)
            if ctx.service is not None:
                sock.close(linger0=True)
                return
            echo = sock.request("preflight", timeout=ctx.timeout)
        except AgentError as exc:
            raise HarnessError(
                f"{agent.host} cannot reach {show((target, base.port))}: {exc}"
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
                        local=endpoint(result["local"]),
                        peer=endpoint(result["peer"]),
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


def _accepted_by_service(
    ctx: _Context, service: RealService, expected: int
) -> tuple[tuple[Served, ...], list[int]]:
    """The server's account, for a server of the user's: its port's established sockets
    from the host's socket table (sock_diag, holders from /proc), those held by the
    service's processes or their descendants, each with the holder's pid; and every pid
    that holds one, for the kernel's view to look at."""
    # Patient: a server of the user's may accept slowly (python's http.server listens
    # with a backlog of 5), and what it leaves waiting comes in as the kernel retries.
    limit = 3 * ctx.timeout + expected / 100
    mine, others = wait_accepted(ctx.lab, service, expected, ctx.timeout, limit)
    served = tuple(
        Served(_holder(s, service).pid, s.inode, "tcp", unmapped(s.local), unmapped(s.peer))
        for s in mine
    )
    pids = {o.pid for s in [*mine, *others] for o in s.owners} | set(service.pids)
    return served, sorted(pids)


def _holder(s: OwnedSocket, service: RealService) -> Owner:
    """The holder of `s` that belongs to the service (a worker rather than the master
    that forked it, when both hold it: the deepest one)."""
    mine = [o for o in s.owners if any(o.descends_from(p) for p in service.pids)]
    return max(mine, key=lambda o: len(o.ancestors))


def _kernel(
    ctx: _Context,
    host: str,
    proto: diag.Proto,
    states: set[str] | None,
    *,
    peer: Endpoint | None = None,
    local: Endpoint | None = None,
    pids: Sequence[int] | None = None,
) -> KernelView:
    """The kernel's sockets in `host` matching `peer`/`local` (a wildcard local address
    matches by port), with the pid of the process holding each, as far as /proc tells:
    of the suite's agents there, or of `pids`."""
    listed = diag.sockets(ctx.host(host), proto, ctx.base.family, states=states)
    if ctx.service is not None and ctx.base.family == 4 and host == ctx.service.host:
        # A dual-stack listener ([::]) holds its IPv4 clients as IPv4-mapped IPv6 sockets.
        mapped = diag.sockets(ctx.host(host), proto, 6, states=states)
        listed += [
            dataclasses.replace(s, family=4, local=unmapped(s.local), peer=unmapped(s.peer))
            for s in mapped
            if unmapped(s.local) != s.local
        ]
    if peer is not None:
        listed = [s for s in listed if s.peer == peer]
    if local is not None:
        wildcard = local[0] in ("0.0.0.0", "::")
        listed = [s for s in listed if s.local[1] == local[1] and (wildcard or s.local == local)]
    if pids is None:
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
                endpoint(result["local"]),
                endpoint(result["peer"]),
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
    # The client's own address towards the server: on a network they share, if any.
    own = target_address(ctx.host(base.server_host), ctx.host(host), base.family)
    other_target, other_port = _second_destination(ctx, own)
    opened = ctx.opened.setdefault(agent.pid, [])
    first = agent.connect("tcp", target, base.port, source=own, reuseaddr=True)
    opened.append(first.id)
    source, sport = first.local
    second = agent.connect(
        "tcp", other_target, other_port, source=source, sport=sport, reuseaddr=True
    )
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
    listed = diag.sockets(ctx.host(host), "tcp", base.family, port=sport)
    kernel = tuple(s for s in listed if s.local == (source, sport))
    conns = [
        Conn(host, agent.pid, s.id, "tcp", s.local, s.peer or ("", 0)) for s in (first, second)
    ]
    if third_conn is not None:
        message = f"the third socket connected: {_show(third_conn.five_tuple)}"
    return DuplicateEvidence(host, agent.pid, conns[0], conns[1], errno_name, message, kernel)


def _second_destination(ctx: _Context, own: str) -> Endpoint:
    """Another destination that accepts: a second port of the server's agents, or, with a
    server of the user's (no agent of ours there), a listener of the last client process
    on its own address (the kernel's rule is the client's: any second destination does)."""
    base = ctx.base
    if ctx.service is None:
        other = ctx.servers[0].listen("tcp", 0, base.listen_address, echo=True)
        return base.targets[ctx.clients[0].host], other.port
    # a host whose own rules let the connection in: none of its rules, ideally its own
    listener = min(
        reversed(ctx.clients),
        key=lambda a: (_filters_input(ctx.host(a.host)), a.host != ctx.clients[0].host),
    )
    if listener.host == ctx.clients[0].host:
        address = own
    else:
        address = target_address(ctx.host(ctx.clients[0].host), ctx.host(listener.host))
    other = listener.listen("tcp", 0, address, echo=True)
    return address, other.port


def _filters_input(host: LabHost) -> bool:
    """Whether the topology filters what reaches the host (a firewall or an nft script)."""
    firewall = host.spec.firewall
    return host.spec.nft is not None or (firewall is not None and firewall.input is not None)


def _reset(ctx: _Context) -> None:
    """Reset every client connection: no TIME_WAIT is left to hold the host's ports."""

    def close(agent: Agent) -> None:
        socks = ctx.opened.get(agent.pid)
        if socks:
            agent.request("close_many", socks=socks, linger0=True)

    with contextlib.suppress(HarnessError):  # the agents are ended next anyway
        parallel(close, ctx.clients)
