"""The five_tuple suite's names, expectations and evidence: what `gather` collects and
`evaluate` judges, as plain data (tests build it by hand), and the helpers both use."""

from __future__ import annotations

import math
import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import (
    endpoint,
    show,
)
from harness.errors import HarnessError
from harness.observe import diag

if TYPE_CHECKING:
    from harness.lab import Lab

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
    # A server of the user's (service=): its label, who holds it, and the phases that do
    # not apply to it (phase → why), reported as "skip".
    service: str | None = None
    service_owner: str = ""
    not_measured: Mapping[str, str] = field(default_factory=dict)


# ---- helpers -----------------------------------------------------------------------------


def per_process_limit() -> int:
    """Connections one process may hold: its open-files limit, less some room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else soft
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    return max(100, min(15_000, int(limit) - SPARE_FILES))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _served(reply: Mapping[str, Any], proto: str) -> Served:
    return Served(
        int(reply["pid"]),
        int(reply["sock"]),
        proto,
        endpoint(reply["local"]),
        endpoint(reply["peer"]),
    )


def _show(t: FiveTuple) -> str:
    return f"{t[0]} {show((t[1], t[2]))} -> {show((t[3], t[4]))}"


def _show_flow(local: Endpoint, peer: Endpoint) -> str:
    return f"{show(local)} -> {show(peer)}"


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


def translation_expected(lab: Lab) -> bool:
    """True when some host's `nft` script translates addresses (masquerade, snat, dnat)."""
    return any(_NAT.search(h.nft or "") for h in lab.topology.hosts.values())
