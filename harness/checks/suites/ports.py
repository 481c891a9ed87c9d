"""The ports suite: who may bind which port, and what happens when ports run out.

    from harness.checks.suites import ports
    checks = ports.run(lab, server="h3")

Every bind is made by a real process (a host agent) in a lab host and reported with its
pid, address, port, socket options and the kernel's answer (`bound` or the errno name).
Expectations are Linux's documented behaviour (socket(7), ip(7), ipv6(7), tcp(7)).

Some checks need a host configured for them, and take it from the lab when there is one:

- `unprivileged-port-start-lowered` needs a host whose `net.ipv4.ip_unprivileged_port_start`
  is below 1024 (option `lowered_host`; by default the first such host);
- the `ephemeral-*` checks need a host whose `net.ipv4.ip_local_port_range` spans at most
  64 ports (option `ephemeral_host`; by default the first such host).

On a lab without one they report verdict "error" naming the sysctl to add, e.g.

    hosts:
      h1:
        sysctls:
          net.ipv4.ip_local_port_range: "40000 40009"
          net.ipv4.ip_unprivileged_port_start: 80

`privileged-port-eacces` runs on `privileged_host` (default: the server, or the first host
that has privileged ports) and binds `privileged_port` (default: the highest privileged
port, ip_unprivileged_port_start - 1).

The checks that count TIME_WAIT sockets (`reuseaddr-time-wait` on the server,
`ephemeral-*` on the client) set `net.ipv4.tcp_rfc1337 = 1` there for their duration, as
they set a small ip_local_port_range: otherwise a RST (drawn by a FIN sent again because
its ACK was late, as on a loaded machine) ends a TIME_WAIT early. Existing machines keep
their settings.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import (
    Check,
    Recorder,
    Roles,
    all_errors,
    exchange,
    parallel,
    pick_roles,
    show,
    target_address,
)
from harness.errors import AgentError, HarnessError, UsageError

if TYPE_CHECKING:
    from harness.core.agent import Agent, AgentInfo, Socket
    from harness.lab import Lab
    from harness.observe.diag import KernelSocket

NAME = "ports"
CHECKS: tuple[str, ...] = (
    "second-bind-tcp",
    "second-bind-udp",
    "tcp-udp-same-port",
    "wildcard-vs-specific",
    "wildcard-vs-specific-reuseaddr",
    "v6-wildcard-dual-stack",
    "v6only-coexists",
    "reuseaddr-time-wait",
    "reuseport-shares-connections",
    "reuseport-needs-option",
    "privileged-port-eacces",
    "unprivileged-port-start-lowered",
    "port-zero-in-range",
    "ephemeral-exhaustion",
    "ephemeral-other-destination",
    "ephemeral-time-wait",
)

EXPECTED: Mapping[str, str] = {
    "second-bind-tcp": (
        "a second TCP bind of the same address and port fails with EADDRINUSE, from the same "
        "process and from another one"
    ),
    "second-bind-udp": (
        "a second UDP bind of the same address and port fails with EADDRINUSE, from the same "
        "process and from another one"
    ),
    "tcp-udp-same-port": (
        "TCP and UDP on the same port number do not conflict: both bind, in either order, "
        "and each answers its own protocol"
    ),
    "wildcard-vs-specific": (
        "without SO_REUSEADDR, 0.0.0.0:P and a specific address:P conflict (EADDRINUSE) in "
        "both orders, for TCP and UDP; two different specific addresses do not"
    ),
    "wildcard-vs-specific-reuseaddr": (
        "with SO_REUSEADDR on both sockets, TCP still refuses (EADDRINUSE: the first socket "
        "is listening, socket(7)) in both orders, and UDP lets both bind"
    ),
    "v6-wildcard-dual-stack": (
        "[::]:P with IPV6_V6ONLY off covers IPv4 too, so it and 0.0.0.0:P conflict "
        "(EADDRINUSE) in both orders, for TCP and UDP"
    ),
    "v6only-coexists": (
        "[::]:P with IPV6_V6ONLY on and 0.0.0.0:P both bind, in both orders, for TCP and UDP"
    ),
    "reuseaddr-time-wait": (
        "a server (bound with SO_REUSEADDR) that closed its connection first leaves it in "
        "TIME_WAIT (sock_diag); restarted as a new process, it fails with EADDRINUSE "
        "without SO_REUSEADDR and binds with it"
    ),
    "reuseport-shares-connections": (
        "two processes bind one TCP port with SO_REUSEPORT and the kernel hands M "
        "connections to both of them (every connection to one of the two)"
    ),
    "reuseport-needs-option": (
        "while two processes share a port with SO_REUSEPORT, a third without the option "
        "gets EADDRINUSE, and so does one of another user with it"
    ),
    "privileged-port-eacces": (
        "an unprivileged process gets EACCES binding a port below the host's "
        "ip_unprivileged_port_start (TCP and UDP); root binds it; the same process binds "
        "an unprivileged port"
    ),
    "unprivileged-port-start-lowered": (
        "on a host whose ip_unprivileged_port_start is below 1024, an unprivileged process "
        "binds the port at that threshold (TCP and UDP) and gets EACCES just below it"
    ),
    "port-zero-in-range": (
        "binding port 0 gets a distinct kernel-chosen port inside the host's "
        "ip_local_port_range, for TCP and UDP"
    ),
    "ephemeral-exhaustion": (
        "a host with R ephemeral ports opens R connections to one server address and port, "
        "each from a distinct port of its range; connection R+1 fails with EADDRNOTAVAIL"
    ),
    "ephemeral-other-destination": (
        "with every ephemeral port in use toward one destination, connections to a second "
        "server port and to a second server address still succeed, reusing those ports"
    ),
    "ephemeral-time-wait": (
        "after the client closes the R connections, their ports sit in TIME_WAIT on the "
        "client (sock_diag), and (tcp_tw_reuse != 1) a new connection to that destination "
        "still fails with EADDRNOTAVAIL"
    ),
}

MAX_SMALL_RANGE = 64  # a range an exhaustion check may use up (R connections, one by one)
TIME_WAIT_WAIT = 5.0  # seconds to wait for a closed connection to reach TIME_WAIT
REUSEADDR = "SO_REUSEADDR"
REUSEPORT = "SO_REUSEPORT"


def run(
    lab: Lab,
    *,
    server: str | None = None,
    clients: Sequence[str] | None = None,
    connections: int = 32,
    privileged_host: str | None = None,
    privileged_port: int | None = None,
    lowered_host: str | None = None,
    ephemeral_host: str | None = None,
    user: str = "nobody",
    only: Sequence[str] | str | None = None,
) -> list[Check]:
    """Run the ports checks on `lab`. `server` binds (default: pick_roles); the first of
    `clients` with a full ephemeral range connects; `connections` is M of the SO_REUSEPORT
    check; `user` is the unprivileged user; `only` names the checks to carry out (the
    others are reported as not run; the ephemeral-* checks after the first need it as
    their set-up, so it runs with them)."""
    selected = _selected(only)
    if not isinstance(connections, int) or connections < 2:
        raise UsageError(f"ports: connections must be an integer >= 2, not {connections!r}")
    if privileged_port is not None and (
        not isinstance(privileged_port, int) or not 1 <= privileged_port <= 65535
    ):
        raise UsageError("ports: privileged_port must be a port from 1 to 65535")
    rec = Recorder(NAME, CHECKS)
    try:
        roles = pick_roles(lab, server, clients, min_clients=1)
        for name in (privileged_host, lowered_host, ephemeral_host):
            if name is not None and name not in lab.hosts:
                raise HarnessError(f"no host {name!r} in lab {lab.id}")
        ctx = _Context(lab, roles, user)
    except HarnessError as exc:
        return all_errors(NAME, EXPECTED, f"could not run: {exc}")
    options = _Options(connections, privileged_host, privileged_port, lowered_host)
    try:
        for name, judge in _JUDGES:
            with rec.check(name, expected=EXPECTED[name]) as check:
                if name not in selected:
                    check.error(f"not run: left out by only={sorted(selected)}")
                    continue
                try:
                    with ctx.scope():
                        ok, observed, evidence = judge(ctx, options)
                except _Unavailable as exc:
                    check.error(str(exc))
                    continue
                check.observe(ok=ok, observed=observed, evidence=evidence)
        with _small_range(ctx, ephemeral_host) as host, _time_wait_kept(ctx, host):
            _ephemeral(ctx, rec, host, selected)
    finally:
        ctx.close()
    return rec.results()


# Above Linux's default ephemeral range (32768-60999), so no port-0 socket holds one.
SUITE_RANGE = "61000 61009"


@contextlib.contextmanager
def _small_range(ctx: _Context, ephemeral_host: str | None) -> Iterator[str | None]:
    """The host for the ephemeral checks: the one named, or one whose topology gives it a
    small range, or else a client given a 10-port range for these checks only."""
    if ephemeral_host is not None:
        yield ephemeral_host
        return
    for host in ctx.lab.hosts:
        port_range = ctx.info(host).ip_local_port_range
        if port_range is not None and port_range[1] - port_range[0] + 1 <= MAX_SMALL_RANGE:
            yield host
            return
    # Existing machines (ssh hosts) are not ours to change: only a client made here.
    settable = [h for h in ctx.roles.clients if ctx.lab.hosts[h].handle.netns_path]
    if not settable:
        yield None
        return
    with _sysctl_for_check(ctx, settable[0], "net.ipv4.ip_local_port_range", SUITE_RANGE):
        yield settable[0]


@contextlib.contextmanager
def _time_wait_kept(ctx: _Context, host: str | None) -> Iterator[None]:
    """TIME_WAIT that only its timer ends, on `host` for one check. With tcp_rfc1337 = 0
    (Linux's default) a RST kills a TIME_WAIT socket (RFC 1337's "TIME-WAIT assassination"):
    on a loaded machine an ACK late by more than the peer's retransmission timeout makes
    the peer send its FIN again, the second ACK finds no socket there and draws a RST, and
    the port is free a minute early. The checks that count TIME_WAIT sockets turn RFC 1337's
    remedy on for their duration on the host they watch (not on existing machines)."""
    if host is None or not ctx.lab.hosts[host].handle.netns_path:
        yield
        return
    with _sysctl_for_check(ctx, host, "net.ipv4.tcp_rfc1337", "1"):
        yield


class _Unavailable(HarnessError):
    """The lab lacks what a check needs (a host with some sysctl): reported as "error"."""


def _selected(only: Sequence[str] | str | None) -> set[str]:
    if only is None:
        return set(CHECKS)
    names = [n.strip() for n in only.split(",")] if isinstance(only, str) else list(only)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise UsageError(f"ports: no check named {', '.join(unknown)}; checks: {', '.join(CHECKS)}")
    return set(names)


@dataclass(frozen=True)
class _Options:
    connections: int
    privileged_host: str | None
    privileged_port: int | None
    lowered_host: str | None


# ---- processes, binds and their evidence --------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """One bind attempt by one process, and what the kernel said."""

    host: str
    pid: int
    user: str
    proto: str
    address: str
    port: int
    options: tuple[str, ...]
    result: str  # "bound" or the errno name
    expected: str | None = None
    socket: Socket | None = None

    @property
    def ok(self) -> bool:
        return self.expected is None or self.result == self.expected

    def row(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "user": self.user,
            "proto": self.proto,
            "bind": show((self.address, self.port)),
            "options": list(self.options),
            "result": self.result,
            **({"expected": self.expected} if self.expected is not None else {}),
        }

    def line(self) -> str:
        options = f" {'+'.join(self.options)}" if self.options else ""
        user = f" {self.user}" if self.user != "root" else ""
        return (
            f"{self.proto} {show((self.address, self.port))}{options} pid {self.pid}{user}: "
            f"{self.result}"
        )


class _Context:
    """The lab, the roles, and the agents a check starts (closed when the check ends)."""

    def __init__(self, lab: Lab, roles: Roles, user: str) -> None:
        self.lab = lab
        self.roles = roles
        self.user = user
        self.server = roles.server
        self._scopes: list[list[Agent]] = [[]]
        self._info: dict[str, AgentInfo] = {}
        self._users: dict[int, str] = {}  # agent pid -> the user it runs as

    @functools.cached_property
    def client(self) -> str:
        """The client host that connects: one with a full ephemeral range if there is one
        (a host kept small for the exhaustion checks would run out of ports)."""
        return next(
            (c for c in self.roles.clients if _range_size(self.info(c)) > MAX_SMALL_RANGE),
            self.roles.clients[0],
        )

    def agent(self, host: str, user: str | None = None) -> Agent:
        agent = self.lab.hosts[host].agent(user=user)
        self._scopes[-1].append(agent)
        self._users[agent.pid] = user or "root"
        return agent

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        self._scopes.append([])
        try:
            yield
        finally:
            parallel(lambda agent: agent.close(), self._scopes.pop())

    def close(self) -> None:
        while self._scopes:
            parallel(lambda agent: agent.close(), self._scopes.pop())

    def forget_info(self, host: str) -> None:
        """The host's settings changed: read them again next time."""
        self._info.pop(host, None)

    def info(self, host: str) -> AgentInfo:
        """The host's port settings, read by an agent in it (once per host)."""
        if host not in self._info:
            agent = self.lab.hosts[host].agent()
            try:
                self._info[host] = agent.info()
            finally:
                agent.close()
        return self._info[host]

    def address(self, host: str, family: int = 4) -> str:
        return self.lab.hosts[host].address(family=family)

    def target(self, client: str, server: str, family: int = 4) -> str:
        return target_address(self.lab.hosts[client], self.lab.hosts[server], family)

    def bind(
        self,
        agent: Agent,
        proto: str,
        address: str,
        port: int,
        *,
        reuseaddr: bool = False,
        reuseport: bool = False,
        v6only: bool | None = None,
        expected: str | None = None,
    ) -> Bind:
        options = tuple(
            name
            for name, on in (
                (REUSEADDR, reuseaddr),
                (REUSEPORT, reuseport),
                ("IPV6_V6ONLY=1", v6only is True),
                ("IPV6_V6ONLY=0", v6only is False),
            )
            if on
        )
        sock: Socket | None = None
        try:
            sock = agent.listen(
                proto, port, address, reuseaddr=reuseaddr, reuseport=reuseport, v6only=v6only
            )
            result = "bound"
            port = sock.port
        except AgentError as exc:
            if exc.kind != "os" or exc.errno is None:
                raise
            result = exc.errno
        user = self._users.get(agent.pid, "root")
        return Bind(
            agent.host, agent.pid, user, proto, address, port, options, result, expected, sock
        )


Judgement = tuple[bool, str, dict[str, Any]]


def _range_size(info: AgentInfo) -> int:
    if info.ip_local_port_range is None:
        return 1 << 16
    low, high = info.ip_local_port_range
    return high - low + 1


def _rows(binds: Sequence[Bind], what: str) -> Judgement:
    """Judge binds that each carry their expected result."""
    wrong = [b for b in binds if not b.ok]
    if wrong:
        observed = f"{len(wrong)} of {len(binds)} {what} differ: " + "; ".join(
            f"{b.line()} (expected {b.expected})" for b in wrong
        )
    else:
        observed = f"{len(binds)} {what} as expected: " + "; ".join(b.line() for b in binds)
    return not wrong, observed, {"binds": [b.row() for b in binds]}


def _first_bound(bind: Bind) -> Bind:
    if bind.result != "bound":
        raise HarnessError(f"the first bind of the pair failed: {bind.line()}")
    return bind


# ---- bind conflicts ---------------------------------------------------------------------


def _second_bind(proto: str) -> Callable[[_Context, _Options], Judgement]:
    def judge(ctx: _Context, options: _Options) -> Judgement:
        first, other = ctx.agent(ctx.server), ctx.agent(ctx.server)
        address = ctx.address(ctx.server)
        bound = _first_bound(ctx.bind(first, proto, address, 0, expected="bound"))
        binds = [
            bound,
            ctx.bind(first, proto, address, bound.port, expected="EADDRINUSE"),
            ctx.bind(other, proto, address, bound.port, expected="EADDRINUSE"),
        ]
        return _rows(binds, "binds")

    return judge


def _tcp_udp_same_port(ctx: _Context, options: _Options) -> Judgement:
    binds: list[Bind] = []
    served: dict[str, Any] = {}
    for first_proto, second_proto in (("tcp", "udp"), ("udp", "tcp")):
        a, b = ctx.agent(ctx.server), ctx.agent(ctx.server)
        first = _first_bound(ctx.bind(a, first_proto, "0.0.0.0", 0, expected="bound"))
        second = ctx.bind(b, second_proto, "0.0.0.0", first.port, expected="bound")
        binds += [first, second]
        if second.result != "bound":
            continue
        # Both answer, each its own protocol: the echo names the process.
        client = ctx.agent(ctx.client)
        address = ctx.target(ctx.client, ctx.server)
        flows = exchange(
            client,
            [
                {"proto": p, "address": address, "port": first.port, "tag": f"{p}-{first.port}"}
                for p in ("tcp", "udp")
            ],
        )
        owner = {first.proto: first.pid, second.proto: second.pid}
        for flow in flows:
            pid = flow.replies[0].pid if flow.replies else None
            served[f"{flow.proto} {show(flow.target)}"] = {
                "answered_by": pid,
                "owner": owner[flow.proto],
                "error": flow.error,
            }
    ok, observed, evidence = _rows(binds, "binds")
    wrong = [k for k, v in served.items() if v["answered_by"] != v["owner"]]
    if wrong:
        ok = False
        observed += f"; not answered by the socket's owner: {', '.join(wrong)}"
    else:
        observed += f"; each protocol answered by its own process ({len(served)} exchanges)"
    return ok, observed, {**evidence, "served": served}


def _pair(
    ctx: _Context,
    proto: str,
    first: tuple[str, bool | None],
    second: tuple[str, bool | None],
    expected: str,
    reuseaddr: bool = False,
) -> list[Bind]:
    """Bind `first` (address, v6only) to a fresh port, then `second` to the same port from
    another process."""
    a, b = ctx.agent(ctx.server), ctx.agent(ctx.server)
    one = _first_bound(
        ctx.bind(a, proto, first[0], 0, reuseaddr=reuseaddr, v6only=first[1], expected="bound")
    )
    two = ctx.bind(
        b, proto, second[0], one.port, reuseaddr=reuseaddr, v6only=second[1], expected=expected
    )
    return [one, two]


def _wildcard_vs_specific(reuseaddr: bool) -> Callable[[_Context, _Options], Judgement]:
    def judge(ctx: _Context, options: _Options) -> Judgement:
        specific = ctx.address(ctx.server)
        binds: list[Bind] = []
        for proto in ("tcp", "udp"):
            expected = "bound" if reuseaddr and proto == "udp" else "EADDRINUSE"
            for first, second in (("0.0.0.0", specific), (specific, "0.0.0.0")):
                binds += _pair(ctx, proto, (first, None), (second, None), expected, reuseaddr)
            if not reuseaddr:  # the control: two specific addresses never overlap
                binds += _pair(ctx, proto, (specific, None), ("127.0.0.1", None), "bound")
        return _rows(binds, "binds")

    return judge


def _v6_wildcard(v6only: bool) -> Callable[[_Context, _Options], Judgement]:
    def judge(ctx: _Context, options: _Options) -> Judgement:
        expected = "bound" if v6only else "EADDRINUSE"
        binds: list[Bind] = []
        for proto in ("tcp", "udp"):
            binds += _pair(ctx, proto, ("0.0.0.0", None), ("::", v6only), expected)
            binds += _pair(ctx, proto, ("::", v6only), ("0.0.0.0", None), expected)
        return _rows(binds, "binds")

    return judge


# ---- SO_REUSEADDR and TIME_WAIT ---------------------------------------------------------


def _time_wait_after_server_close(
    ctx: _Context, reuseaddr: bool
) -> tuple[Bind, list[KernelSocket], dict[str, Any]]:
    """A server (with or without SO_REUSEADDR) closes its connection first, then ends:
    the server's side of the connection waits in TIME_WAIT."""
    old = ctx.agent(ctx.server)
    listener = _first_bound(
        ctx.bind(old, "tcp", "0.0.0.0", 0, reuseaddr=reuseaddr, expected="bound")
    )
    assert listener.socket is not None
    client = ctx.agent(ctx.client)
    conn = client.connect("tcp", ctx.target(ctx.client, ctx.server), listener.port)
    echo = conn.request("before the restart")
    old.request("close", sock=echo.sock)  # the server closes first ...
    if conn.recv(timeout=5.0) != b"":
        raise HarnessError("the client did not see the server's FIN")
    conn.close()  # ... and the client answers with its own FIN
    old.close()  # the server process ends, its listener with it
    waiting = _wait_for(
        lambda: [
            s
            for s in _tcp_sockets(ctx, ctx.server)
            if s.state == "TIME_WAIT" and s.local[1] == listener.port
        ]
    )
    connection = {
        "server_pid": old.pid,
        "client_pid": client.pid,
        "client": show(conn.local),
        "server": show(conn.peer),
        "closed_first_by": "server",
    }
    return listener, waiting, connection


def _reuseaddr_time_wait(ctx: _Context, options: _Options) -> Judgement:
    with _time_wait_kept(ctx, ctx.server):
        return _judge_reuseaddr_time_wait(ctx)


def _judge_reuseaddr_time_wait(ctx: _Context) -> Judgement:
    listener, waiting, connection = _time_wait_after_server_close(ctx, reuseaddr=True)
    port = listener.port
    new = ctx.agent(ctx.server)
    binds = [
        listener,
        ctx.bind(new, "tcp", "0.0.0.0", port, expected="EADDRINUSE"),
        ctx.bind(new, "tcp", "0.0.0.0", port, reuseaddr=True, expected="bound"),
    ]
    ok, observed, evidence = _rows(binds, "binds")
    time_wait = [f"{s.state} {show(s.local)} {show(s.peer)}" for s in waiting]
    if not waiting:
        ok = False
        observed = f"no TIME_WAIT socket on port {port} of {ctx.server}; " + observed
    else:
        observed = (
            f"{len(waiting)} TIME_WAIT socket(s) on {ctx.server} port {port} after the old "
            f"server (pid {listener.pid}) closed first; restarted as pid {new.pid}: " + observed
        )
    # A Linux detail, reported and not judged: the socket that went into TIME_WAIT must
    # have had the option too, or even a new socket with it is refused.
    with ctx.scope():
        bare, bare_waiting, _ = _time_wait_after_server_close(ctx, reuseaddr=False)
        retry = ctx.agent(ctx.server)
        detail = ctx.bind(retry, "tcp", "0.0.0.0", bare.port, reuseaddr=True)
    return (
        ok,
        observed,
        {
            **evidence,
            "connection": connection,
            "time_wait": time_wait,
            "old_socket_without_option": {
                "note": (
                    "reported, not judged: Linux wants SO_REUSEADDR on the socket that went "
                    "into TIME_WAIT too, or even a new socket with it is refused"
                ),
                "time_wait": len(bare_waiting),
                "rebind_with_option": detail.row(),
            },
        },
    )


def _wait_for(
    probe: Callable[[], list[KernelSocket]], timeout: float = TIME_WAIT_WAIT
) -> list[KernelSocket]:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _tcp_sockets(ctx: _Context, host: str) -> list[KernelSocket]:
    """The host's IPv4 TCP sockets as the kernel lists them (sock_diag)."""
    from harness.observe import diag

    return diag.sockets(ctx.lab.hosts[host], "tcp", 4)


# ---- SO_REUSEPORT -----------------------------------------------------------------------


def _reuseport_pair(ctx: _Context) -> list[Bind]:
    a, b = ctx.agent(ctx.server), ctx.agent(ctx.server)
    one = _first_bound(ctx.bind(a, "tcp", "0.0.0.0", 0, reuseport=True, expected="bound"))
    two = _first_bound(ctx.bind(b, "tcp", "0.0.0.0", one.port, reuseport=True, expected="bound"))
    return [one, two]


def _reuseport_shares(ctx: _Context, options: _Options) -> Judgement:
    binds = _reuseport_pair(ctx)
    port = binds[0].port
    client = ctx.agent(ctx.client)
    address = ctx.target(ctx.client, ctx.server)
    flows = exchange(
        client,
        [
            {"proto": "tcp", "address": address, "port": port, "tag": f"c{i}"}
            for i in range(options.connections)
        ],
    )
    split: Counter[int] = Counter(f.replies[0].pid for f in flows if f.replies)
    failed = [f"{f.tag}: {f.error}" for f in flows if not f.replies]
    owners = {b.pid for b in binds}
    ok = not failed and set(split) == owners and sum(split.values()) == options.connections
    shown = ", ".join(f"pid {pid}: {split.get(pid, 0)}" for pid in sorted(owners))
    observed = (
        f"{options.connections} connections to {show((address, port))} shared by two "
        f"SO_REUSEPORT processes: {shown}"
    )
    strangers = set(split) - owners
    if strangers:
        observed += f"; answered by other processes {sorted(strangers)}"
    if failed:
        observed += f"; {len(failed)} failed: {failed[0]}"
    return (
        ok,
        observed,
        {
            "binds": [b.row() for b in binds],
            "connections": options.connections,
            "split": {str(pid): split.get(pid, 0) for pid in sorted(owners)},
            "sample": [
                {"client": show(f.local), "answered_by": f.replies[0].pid}
                for f in flows[:8]
                if f.replies
            ],
        },
    )


def _reuseport_needs_option(ctx: _Context, options: _Options) -> Judgement:
    pair = _reuseport_pair(ctx)
    port = pair[0].port
    third = ctx.agent(ctx.server)
    stranger = ctx.agent(ctx.server, user=ctx.user)
    binds = [
        *pair,
        ctx.bind(third, "tcp", "0.0.0.0", port, expected="EADDRINUSE"),
        ctx.bind(
            stranger,
            "tcp",
            "0.0.0.0",
            port,
            reuseport=True,
            expected="EADDRINUSE",
        ),
    ]
    return _rows(binds, "binds")


# ---- privileged ports -------------------------------------------------------------------


def _unprivileged(ctx: _Context, host: str) -> tuple[Agent, AgentInfo]:
    agent = ctx.agent(host, user=ctx.user)
    info = agent.info()
    if info.uid == 0:
        raise _Unavailable(f"user {ctx.user!r} is root; name an unprivileged user (user=)")
    return agent, info


def _privileged(ctx: _Context, options: _Options) -> Judgement:
    if options.privileged_host is not None:
        host = options.privileged_host
    else:
        candidates = [ctx.server, *(h for h in ctx.lab.hosts if h != ctx.server)]
        host = next(
            (h for h in candidates if (ctx.info(h).ip_unprivileged_port_start or 0) > 1),
            ctx.server,
        )
    start = ctx.info(host).ip_unprivileged_port_start
    if start is None:
        raise HarnessError(f"cannot read net.ipv4.ip_unprivileged_port_start on {host}")
    port = options.privileged_port
    if port is None:
        if start <= 1:
            raise _Unavailable(
                f"{host} has no privileged ports (ip_unprivileged_port_start = {start}); "
                "name a host that has (privileged_host=)"
            )
        port = start - 1
    user, info = _unprivileged(ctx, host)
    root = ctx.agent(host)
    binds = [ctx.bind(user, proto, "0.0.0.0", port, expected="EACCES") for proto in ("tcp", "udp")]
    binds += [ctx.bind(root, proto, "0.0.0.0", port, expected="bound") for proto in ("tcp", "udp")]
    binds.append(ctx.bind(user, "tcp", "0.0.0.0", 0, expected="bound"))
    ok, observed, evidence = _rows(binds, "binds")
    observed = f"{host} (ip_unprivileged_port_start = {start}), port {port}: " + observed
    return (
        ok,
        observed,
        {**evidence, "host": host, "ip_unprivileged_port_start": start, "uid": info.uid},
    )


def _lowered(ctx: _Context, options: _Options) -> Judgement:
    if options.lowered_host is not None:
        host = options.lowered_host
        start = ctx.info(host).ip_unprivileged_port_start
        if start is None or start >= 1024:
            raise _Unavailable(
                f"{host} has net.ipv4.ip_unprivileged_port_start = {start}, not below 1024"
            )
    else:
        starts = {h: ctx.info(h).ip_unprivileged_port_start for h in ctx.lab.hosts}
        lowered = [h for h, s in starts.items() if s is not None and s < 1024]
        if not lowered:
            # No host of the topology lowers it: lower it on a client for this check only.
            host = ctx.roles.clients[0]
            with _sysctl_for_check(ctx, host, "net.ipv4.ip_unprivileged_port_start", "80"):
                ok, observed, evidence = _lowered_on(ctx, host, 80)
            return ok, observed, {**evidence, "set_by_suite": "ip_unprivileged_port_start 80"}
        host = lowered[0]
        start = starts[host]
    assert start is not None
    return _lowered_on(ctx, host, start)


@contextlib.contextmanager
def _sysctl_for_check(ctx: _Context, host: str, key: str, value: str) -> Iterator[None]:
    """Set a sysctl in `host` for one check and put the old value back afterwards."""
    if not ctx.lab.hosts[host].handle.netns_path:
        raise _Unavailable(
            f"{host} is an existing machine: netharness does not change its {key}; "
            "set it there, or use a lab host for this check"
        )
    before = ctx.lab.hosts[host].sysctl(key, value)
    ctx.forget_info(host)
    try:
        yield
    finally:
        ctx.lab.hosts[host].sysctl(key, before)
        ctx.forget_info(host)


def _lowered_on(ctx: _Context, host: str, start: int) -> Judgement:
    port = start if start > 0 else 80
    user, info = _unprivileged(ctx, host)
    binds = [ctx.bind(user, proto, "0.0.0.0", port, expected="bound") for proto in ("tcp", "udp")]
    if start > 1:
        binds += [
            ctx.bind(user, proto, "0.0.0.0", start - 1, expected="EACCES")
            for proto in ("tcp", "udp")
        ]
    ok, observed, evidence = _rows(binds, "binds")
    observed = f"{host} (ip_unprivileged_port_start = {start}): " + observed
    return (
        ok,
        observed,
        {**evidence, "host": host, "ip_unprivileged_port_start": start, "uid": info.uid},
    )


def _listing(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{host}: {value}" for host, value in values.items())


# ---- port 0 -----------------------------------------------------------------------------


def _port_zero(ctx: _Context, options: _Options) -> Judgement:
    info = ctx.info(ctx.server)
    if info.ip_local_port_range is None:
        raise HarnessError(f"cannot read net.ipv4.ip_local_port_range on {ctx.server}")
    low, high = info.ip_local_port_range
    agent = ctx.agent(ctx.server)
    binds = [ctx.bind(agent, proto, "0.0.0.0", 0) for proto in ("tcp", "udp") for _i in range(3)]
    problems = [f"{b.line()}" for b in binds if b.result != "bound"]
    problems += [f"{b.line()}: outside {low}-{high}" for b in binds if not low <= b.port <= high]
    for proto in ("tcp", "udp"):
        ports = [b.port for b in binds if b.proto == proto and b.result == "bound"]
        if len(set(ports)) != len(ports):
            problems.append(f"{proto} port 0 gave one port twice: {ports}")
    assigned = {proto: [b.port for b in binds if b.proto == proto] for proto in ("tcp", "udp")}
    observed = (
        f"{ctx.server} ip_local_port_range {low}-{high}: port 0 gave TCP {assigned['tcp']}, "
        f"UDP {assigned['udp']}"
    )
    if problems:
        observed += "; " + "; ".join(problems)
    return (
        not problems,
        observed,
        {"binds": [b.row() for b in binds], "ip_local_port_range": [low, high]},
    )


# ---- ephemeral ports --------------------------------------------------------------------

EPHEMERAL = ("ephemeral-exhaustion", "ephemeral-other-destination", "ephemeral-time-wait")


@dataclass
class _Exhaustion:
    host: str
    server: str
    low: int
    high: int
    address: str
    port: int
    second_port: int
    second_address: str
    second_address_port: int
    conns: list[Socket]
    refused: str | None  # errno of connection R+1 ("connected" if it was not refused)
    client_pid: int


def _ephemeral(
    ctx: _Context, rec: Recorder, ephemeral_host: str | None, selected: set[str]
) -> None:
    """The three ephemeral checks share one client and its R connections: selecting either
    of the later two runs ephemeral-exhaustion too (it is their set-up)."""
    if not selected & set(EPHEMERAL):
        for name in EPHEMERAL:
            with rec.check(name, expected=EXPECTED[name]) as check:
                check.error(f"not run: left out by only={sorted(selected)}")
        return
    with ctx.scope():
        state: _Exhaustion | None = None
        missing = "the exhausted host of ephemeral-exhaustion could not be set up (its record)"
        with rec.check("ephemeral-exhaustion", expected=EXPECTED["ephemeral-exhaustion"]) as c:
            try:
                state = _exhaust(ctx, ephemeral_host)
            except _Unavailable as exc:
                missing = str(exc)
                c.error(missing)
            else:
                ok, observed, evidence = _judge_exhaustion(state)
                c.observe(ok=ok, observed=observed, evidence=evidence)
        for name, judge in (
            ("ephemeral-other-destination", _other_destination),
            ("ephemeral-time-wait", _ephemeral_time_wait),
        ):
            with rec.check(name, expected=EXPECTED[name]) as c:
                if name not in selected:
                    c.error(f"not run: left out by only={sorted(selected)}")
                elif state is None:
                    c.error(missing)
                else:
                    ok, observed, evidence = judge(ctx, state)
                    c.observe(ok=ok, observed=observed, evidence=evidence)


def _exhaust(ctx: _Context, ephemeral_host: str | None) -> _Exhaustion:
    ranges = {h: ctx.info(h).ip_local_port_range for h in ctx.lab.hosts}

    def size(port_range: tuple[int, int] | None) -> int:
        return port_range[1] - port_range[0] + 1 if port_range else 1 << 16

    if ephemeral_host is not None:
        host = ephemeral_host
        if size(ranges[host]) > MAX_SMALL_RANGE:
            raise _Unavailable(
                f"{host}'s ip_local_port_range {ranges[host]} spans {size(ranges[host])} "
                f"ports; exhaustion needs at most {MAX_SMALL_RANGE}"
            )
    else:
        small = [h for h, r in ranges.items() if size(r) <= MAX_SMALL_RANGE]
        if not small:
            shown = _listing({h: f"{r[0]}-{r[1]}" if r else "?" for h, r in ranges.items()})
            raise _Unavailable(
                f"needs a host whose net.ipv4.ip_local_port_range spans at most "
                f"{MAX_SMALL_RANGE} ports, and this lab has none ({shown}); add one to the "
                'topology, e.g. sysctls: {net.ipv4.ip_local_port_range: "40000 40009"}'
            )
        host = small[0]
    port_range = ranges[host]
    assert port_range is not None
    low, high = port_range
    others = [h for h in ctx.lab.hosts if h != host]
    if not others:
        raise _Unavailable("ephemeral exhaustion needs a server host besides the client")
    server = ctx.server if ctx.server != host else others[0]
    address = ctx.target(host, server)
    listener = ctx.agent(server)
    first = _first_bound(ctx.bind(listener, "tcp", "0.0.0.0", 0, expected="bound"))
    second = _first_bound(ctx.bind(listener, "tcp", "0.0.0.0", 0, expected="bound"))
    second_address, far = _second_address(ctx, host, server, address)
    far_agent = ctx.agent(far)
    far_listener = _first_bound(
        ctx.bind(far_agent, "tcp", "::" if ":" in second_address else "0.0.0.0", 0)
    )
    client = ctx.agent(host)
    conns: list[Socket] = []
    refused: str | None = None
    for _attempt in range(high - low + 2):
        try:
            conns.append(client.connect("tcp", address, first.port))
        except AgentError as exc:
            if exc.kind != "os":
                raise
            refused = exc.errno
            break
    else:
        refused = "connected"
    return _Exhaustion(
        host=host,
        server=server,
        low=low,
        high=high,
        address=address,
        port=first.port,
        second_port=second.port,
        second_address=second_address,
        second_address_port=far_listener.port,
        conns=conns,
        refused=refused,
        client_pid=client.pid,
    )


def _second_address(ctx: _Context, host: str, server: str, used: str) -> tuple[str, str]:
    """Another address a client on `host` can reach: the server's other IPv4 address, or
    another host's, or the server's IPv6 address; with the host that owns it."""
    client = ctx.lab.hosts[host]
    mine = {i.network for i in client.spec.interfaces}
    for interface in ctx.lab.hosts[server].spec.interfaces:
        address = interface.address
        reachable = interface.network in mine or bool(client.spec.routes)
        if address is not None and str(address.ip) != used and reachable:
            return str(address.ip), server
    for name, other in ctx.lab.hosts.items():
        if name in (host, server):
            continue
        for interface in other.spec.interfaces:
            if interface.network in mine and interface.address is not None:
                return str(interface.address.ip), name
    return ctx.target(host, server, 6), server


def _judge_exhaustion(state: _Exhaustion) -> Judgement:
    size = state.high - state.low + 1
    sports = [c.local[1] for c in state.conns]
    problems = []
    if len(state.conns) != size:
        problems.append(f"{len(state.conns)} connections succeeded, not R = {size}")
    outside = [p for p in sports if not state.low <= p <= state.high]
    if outside:
        problems.append(f"source ports outside the range: {outside}")
    if len(set(sports)) != len(sports):
        problems.append(f"a source port used twice: {sorted(sports)}")
    if state.refused != "EADDRNOTAVAIL":
        problems.append(f"connection R+1 gave {state.refused}, not EADDRNOTAVAIL")
    target = show((state.address, state.port))
    observed = (
        f"{state.host} (ip_local_port_range {state.low}-{state.high}, R = {size}) opened "
        f"{len(state.conns)} connections to {target} from ports {sorted(sports)}; "
        f"connection {len(state.conns) + 1}: {state.refused}"
    )
    if problems:
        observed += "; " + "; ".join(problems)
    return (
        not problems,
        observed,
        {
            "client_host": state.host,
            "client_pid": state.client_pid,
            "ip_local_port_range": [state.low, state.high],
            "server": target,
            "connections": [f"{show(c.local)} -> {show(c.peer)}" for c in state.conns],
            "next_connection": state.refused,
        },
    )


def _other_destination(ctx: _Context, state: _Exhaustion) -> Judgement:
    client = state.conns[0].agent if state.conns else ctx.agent(state.host)
    busy = {c.local[1] for c in state.conns}
    rows: list[dict[str, Any]] = []
    problems = []
    for address, port, what in (
        (state.address, state.second_port, "second port"),
        (state.second_address, state.second_address_port, "second address"),
    ):
        try:
            conn = client.connect("tcp", address, port)
        except AgentError as exc:
            if exc.kind != "os":
                raise
            rows.append({"to": show((address, port)), "what": what, "result": exc.errno})
            problems.append(f"{what} {show((address, port))}: {exc.errno}")
            continue
        sport = conn.local[1]
        rows.append(
            {
                "to": show((address, port)),
                "what": what,
                "result": "connected",
                "from": show(conn.local),
                "reuses_busy_port": sport in busy,
            }
        )
        if not state.low <= sport <= state.high:
            problems.append(f"{what}: source port {sport} outside the range")
    observed = f"with all {len(busy)} ports busy toward {show((state.address, state.port))}: " + (
        "; ".join(
            f"{r['what']} {r['to']}: {r['result']}" + (f" from {r['from']}" if "from" in r else "")
            for r in rows
        )
    )
    if problems:
        observed += "; " + "; ".join(problems)
    return not problems, observed, {"client_pid": state.client_pid, "connections": rows}


def _ephemeral_time_wait(ctx: _Context, state: _Exhaustion) -> Judgement:
    ports = sorted(c.local[1] for c in state.conns)
    for conn in state.conns:
        conn.close()  # the client closes first: TIME_WAIT is on its side
    target = (state.address, state.port)
    wanted = set(ports)

    def waiting() -> list[KernelSocket]:
        rows = [
            s
            for s in _tcp_sockets(ctx, state.host)
            if s.state == "TIME_WAIT" and s.peer == target and s.local[1] in wanted
        ]
        return rows if {s.local[1] for s in rows} == wanted else []

    rows = _wait_for(waiting)
    if not rows:  # report what there is
        rows = [
            s for s in _tcp_sockets(ctx, state.host) if s.peer == target and s.local[1] in wanted
        ]
    states = Counter(s.state for s in rows)
    in_time_wait = sorted(s.local[1] for s in rows if s.state == "TIME_WAIT")
    problems = []
    if not ports:
        problems.append("no connections to close")
    if in_time_wait != ports:
        problems.append(
            f"TIME_WAIT on ports {in_time_wait}, expected {ports} (states: {dict(states)})"
        )
    client = ctx.agent(state.host)
    settings = client.request("sysctl", names=["net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_rfc1337"])[
        "values"
    ]
    tw_reuse = settings.get("net.ipv4.tcp_tw_reuse")
    try:
        again = show(client.connect("tcp", *target).local)
        result = "connected"
    except AgentError as exc:
        if exc.kind != "os":
            raise
        again, result = "-", str(exc.errno)
    if tw_reuse != "1" and result != "EADDRNOTAVAIL":
        problems.append(f"a new connection to {show(target)} gave {result}, not EADDRNOTAVAIL")
    observed = (
        f"after closing, {len(in_time_wait)} of {len(ports)} ports in TIME_WAIT on "
        f"{state.host} toward {show(target)}; a new connection there (tcp_tw_reuse = "
        f"{tw_reuse}): {result}"
    )
    if problems:
        observed += "; " + "; ".join(problems)
    return (
        not problems,
        observed,
        {
            "client_host": state.host,
            "kernel_sockets": [f"{s.state} {show(s.local)} {show(s.peer)}" for s in rows],
            "tcp_tw_reuse": tw_reuse,
            "tcp_rfc1337": settings.get("net.ipv4.tcp_rfc1337"),
            "new_connection": {"result": result, "from": again},
        },
    )


_JUDGES: tuple[tuple[str, Callable[[_Context, _Options], Judgement]], ...] = (
    ("second-bind-tcp", _second_bind("tcp")),
    ("second-bind-udp", _second_bind("udp")),
    ("tcp-udp-same-port", _tcp_udp_same_port),
    ("wildcard-vs-specific", _wildcard_vs_specific(reuseaddr=False)),
    ("wildcard-vs-specific-reuseaddr", _wildcard_vs_specific(reuseaddr=True)),
    ("v6-wildcard-dual-stack", _v6_wildcard(v6only=False)),
    ("v6only-coexists", _v6_wildcard(v6only=True)),
    ("reuseaddr-time-wait", _reuseaddr_time_wait),
    ("reuseport-shares-connections", _reuseport_shares),
    ("reuseport-needs-option", _reuseport_needs_option),
    ("privileged-port-eacces", _privileged),
    ("unprivileged-port-start-lowered", _lowered),
    ("port-zero-in-range", _port_zero),
)
