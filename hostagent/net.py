"""Sockets as the agent holds them, and the address plumbing they need.

Addresses are numeric only (resolving names would block the loop): "10.0.1.12",
"fd00:1::12", "fe80::1%eth0". Endpoints on the wire are `[address, port]` lists.
"""

from __future__ import annotations

import _socket
import collections
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from hostagent.protocol import OpError

if TYPE_CHECKING:
    from hostagent.agent import HostAgent

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python does not export it
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
CMSG_BUFFER = socket.CMSG_SPACE(64)

READ_CAP = 4 << 20  # a stream socket stops reading when this much is unread (TCP backs off)
WRITE_CAP = 4 << 20  # an echoing socket stops reading while this much is unsent
DATAGRAM_CAP = 1024  # unread datagrams kept per socket; the oldest are dropped beyond it
# The family as the int the C socket holds: `socket.family` converts it to an enum on
# every read, a third of a new socket's record's cost (one per connection, thousands).
_raw_family = _socket.socket.family.__get__


def raw_socket(family: int, kind: int, fileno: int | None = None) -> socket.socket:
    """A socket without Python's wrapper class around it (`_socket.socket`, the C type
    `socket.socket` subclasses): it has every method the agent calls on a connection,
    and costs ~2.7 us less to make and close, per connection, thousands a second. Typed
    as `socket.socket` for its callers; nothing here uses what only the wrapper adds
    (makefile, dup, accept, enum-valued family and type, a context manager)."""
    return cast("socket.socket", _socket.socket(family, kind, 0, fileno))


# A stream or a listener never queues a datagram: one shared queue that holds none.
_NO_DATAGRAMS: collections.deque[Any] = collections.deque(maxlen=0)


def endpoint(sockaddr: Any) -> list[Any]:
    """A kernel sockaddr as `[address, port]` (IPv6 without flowinfo and scope)."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host = sockaddr[0]
        if isinstance(host, str) and "%" in host:
            host = host.split("%", 1)[0]
        return [host, sockaddr[1]]
    return [str(sockaddr), 0]


def resolve(address: str, port: int, kind: int) -> tuple[int, Any]:
    """(family, sockaddr) for a numeric IPv4/IPv6 address; bad-request for anything else."""
    try:
        infos = socket.getaddrinfo(
            address, port, socket.AF_UNSPEC, kind, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        )
    except (socket.gaierror, UnicodeError, ValueError):
        raise OpError(f"not a numeric IPv4 or IPv6 address: {address!r}") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return int(family), sockaddr


def resolve_for(sock: socket.socket, address: str, port: int) -> Any:
    """A destination sockaddr usable with `sock` (IPv4 becomes v4-mapped on IPv6 sockets)."""
    family, sockaddr = resolve(address, port, sock.type)
    if sock.family == socket.AF_INET6 and family == socket.AF_INET:
        _f, sockaddr = resolve("::ffff:" + address, port, sock.type)
    return sockaddr


def enable_pktinfo(sock: socket.socket) -> None:
    """Ask the kernel for each datagram's destination address (for echo's `local`)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def pktinfo_address(ancdata: list[tuple[int, int, bytes]]) -> tuple[str | None, int]:
    """(destination address, arrival interface) of a datagram, from its PKTINFO message."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            ifindex = struct.unpack("I", data[:4])[0]
            return socket.inet_ntop(socket.AF_INET, data[8:12]), ifindex
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            ifindex = struct.unpack("I", data[16:20])[0]
            return socket.inet_ntop(socket.AF_INET6, data[:16]), ifindex
    return None, 0


def source_pktinfo(sock: socket.socket, address: str, ifindex: int) -> list[tuple[int, int, bytes]]:
    """Ancillary data that makes a reply leave from `address` (where the request arrived).

    The interface is pinned only for IPv6 link-local addresses, which need it; anything
    else leaves the way the routing table says.
    """
    try:
        if sock.family == socket.AF_INET6:
            packed = socket.inet_pton(socket.AF_INET6, address)
            link_local = packed[0] == 0xFE and packed[1] & 0xC0 == 0x80
            info = struct.pack("16sI", packed, ifindex if link_local else 0)
            return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)]
        packed = socket.inet_pton(socket.AF_INET, address)
        return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("I4s4s", 0, packed, b"\0" * 4))]
    except OSError:
        return []


class Waiter:
    """A recv or request waiting on a socket; answered by the loop when data arrives."""

    __slots__ = ("limit", "mode", "rid", "started", "timer")

    def __init__(self, rid: int | str, mode: str, limit: int, started: float) -> None:
        self.rid = rid
        self.mode = mode  # "recv" or "request"
        self.limit = limit
        self.started = started
        self.timer: Timer | None = None


class Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Deadlines:
    """What a bulk op has in flight, oldest first (all share one timeout), with one timer
    for the oldest deadline. Items have `done` and `deadline`; `on_expire(item)` is called
    for each one not done by its deadline, and `late` keeps how far behind the loop was."""

    def __init__(self, agent: HostAgent, on_expire: Callable[[Any], None]) -> None:
        self.agent = agent
        self.on_expire = on_expire
        self.items: collections.deque[Any] = collections.deque()
        self.timer: Timer | None = None
        self.late = 0.0

    def add(self, item: Any) -> None:
        self.items.append(item)
        self.arm()

    def arm(self) -> None:
        while self.items and self.items[0].done:
            self.items.popleft()
        if self.timer is not None or not self.items:
            return
        delay = self.items[0].deadline - time.monotonic()
        self.timer = self.agent.call_later(delay, self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = time.monotonic()
        try:
            while self.items and (self.items[0].done or self.items[0].deadline <= now):
                item = self.items.popleft()
                if not item.done:
                    self.late = max(self.late, now - item.deadline)
                    self.on_expire(item)
        finally:  # one item's failure must not leave the others without a timer
            self.arm()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Datagram:
    __slots__ = ("data", "local", "peer")

    def __init__(self, data: bytes, peer: list[Any], local: list[Any]) -> None:
        self.data = data
        self.peer = peer
        self.local = local


class Sock:
    """One socket the agent holds. `kind`: listener, stream or datagram."""

    # Slots: one record per connection, made thousands of times a second by a listener.
    __slots__ = (
        "announce",
        "close_when_flushed",
        "datagrams",
        "echo",
        "eof",
        "error",
        "family",
        "handler",
        "id",
        "kind",
        "local",
        "parent",
        "paused",
        "peer",
        "proto",
        "rbuf",
        "server",
        "sock",
        "state",
        "waiters",
        "wbuf",
    )

    def __init__(
        self,
        sid: int,
        sock: socket.socket,
        proto: str,
        kind: str,
        *,
        echo: bool,
        server: bool,
        parent: int | None = None,
        local: list[Any] | None = None,
    ) -> None:
        self.id = sid
        self.sock: socket.socket | None = sock
        self.proto = proto
        self.kind = kind
        self.family = 6 if _raw_family(sock) == socket.AF_INET6 else 4
        self.echo = echo
        self.server = server  # made by listen (or accepted from a listener)
        self.parent = parent  # the listener an accepted socket came from
        self.local = local if local is not None else endpoint(sock.getsockname())
        self.peer: list[Any] | None = None
        self.state = "listening" if kind == "listener" else "bound"
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.datagrams: collections.deque[Datagram] = (
            collections.deque(maxlen=DATAGRAM_CAP) if kind == "datagram" else _NO_DATAGRAMS
        )
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.eof = False  # the peer sent FIN
        self.error: OpError | None = None  # a stream's fatal error, a datagram's pending one
        self.close_when_flushed = False
        self.paused = False  # a listener out of file descriptors, resumed by a timer
        self.announce = True  # a listener: an `accepted` event per connection it accepts
        self.handler: Callable[[int], None] = lambda mask: None

    @property
    def open(self) -> bool:
        return self.sock is not None

    def describe(self) -> dict[str, Any]:
        return {
            "sock": self.id,
            "proto": self.proto,
            "family": self.family,
            "kind": self.kind,
            "local": self.local,
            "peer": self.peer,
            "state": self.state,
            "echo": self.echo,
            "parent": self.parent,
            "eof": self.eof,
        }
