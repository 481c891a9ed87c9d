"""The ports suite's names and expectations, and what every check runs on: `_Context`
(agents per scope, binds with their evidence, sysctls set for one check) and `Bind`."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import (
    Roles,
    parallel,
    show,
    target_address,
)
from harness.errors import AgentError, HarnessError, RootlessLimit, UsageError

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
    "service-port-in-use",
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
    "service-port-in-use": (
        "for each service a process of the user's listens on (`process:` in the topology, or "
        "service=): a second process binding its address and port gets EADDRINUSE, and one "
        "of the socket's own user binding with SO_REUSEPORT gets in exactly when the "
        "service's socket set SO_REUSEPORT (read from the socket where its process is on "
        "this machine)"
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


class _NotApplicable(HarnessError):
    """The check's claim has nothing to apply to in this lab: reported as "skip"."""


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
    service: str | None = None


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
        try:
            agent = self.lab.hosts[host].agent(user=user)
        except RootlessLimit as exc:
            raise _NotApplicable(f"not applicable: {exc}") from None
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


def _listing(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{host}: {value}" for host, value in values.items())


def _verdict(problems: list[str], observed: str, evidence: dict[str, Any]) -> Judgement:
    """Passed when nothing is wrong; what is wrong is told after what was observed."""
    if problems:
        observed += "; " + "; ".join(problems)
    return not problems, observed, evidence
