"""The agent's operations: one function each, registered in `OPS` with the arguments it takes.

A new op is one decorated function: it reads its arguments from the `Request` (which
checks their types), returns its result as a dict, raises `OpError` to refuse, or returns
`DEFERRED` and answers later through `agent.reply`/`agent.fail`.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hostagent.net import Waiter, enable_pktinfo, endpoint, resolve, resolve_for
from hostagent.protocol import AGENT_NAME, DEFERRED, PROTOCOL_VERSION, OpError, Request

if TYPE_CHECKING:
    from hostagent.agent import HostAgent
    from hostagent.net import Sock, Timer
    from hostagent.protocol import Deferred

    Handler = Callable[[HostAgent, Request], dict[str, Any] | Deferred]


class OpSpec:
    __slots__ = ("args", "handler", "name")

    def __init__(self, name: str, handler: Handler, args: frozenset[str]) -> None:
        self.name = name
        self.handler = handler
        self.args = args


OPS: dict[str, OpSpec] = {}
PROTOS = ("tcp", "udp")
MAX_SOCK_ID = 1 << 62


def register(name: str, *args: str) -> Callable[[Handler], Handler]:
    """Register `name` taking exactly `args` (anything else is refused as a bad request)."""

    def decorate(handler: Handler) -> Handler:
        if name in OPS:
            raise ValueError(f"op {name!r} is registered twice")
        OPS[name] = OpSpec(name, handler, frozenset(args))
        return handler

    return decorate


def _where(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _sock(agent: HostAgent, req: Request) -> Sock:
    return agent.get_sock(req.integer("sock", None, 0, MAX_SOCK_ID))


def _new_socket(family: int, kind: int, what: str) -> socket.socket:
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        raise OpError.from_os(exc, what) from None
    sock.setblocking(False)
    return sock


def _read_sysctl(name: str) -> list[int] | None:
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as handle:
            return [int(part) for part in handle.read().split()]
    except (OSError, ValueError):
        return None


@register("ping")
def op_ping(agent: HostAgent, req: Request) -> dict[str, Any]:
    return {}


@register("info")
def op_info(agent: HostAgent, req: Request) -> dict[str, Any]:
    port_range = _read_sysctl("ip_local_port_range")
    unprivileged = _read_sysctl("ip_unprivileged_port_start")
    try:
        netns: str | None = os.readlink("/proc/self/ns/net")
    except OSError:
        netns = None
    return {
        "pid": agent.pid,
        "uid": os.getuid(),
        "hostname": socket.gethostname(),
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "agent": AGENT_NAME,
        "version": PROTOCOL_VERSION,
        "ip_local_port_range": port_range if port_range and len(port_range) == 2 else None,
        "ip_unprivileged_port_start": unprivileged[0] if unprivileged else None,
        "sockets": sum(1 for s in agent.socks.values() if s.open),
        "netns": netns,
    }


def _reuse(sock: socket.socket, reuseaddr: bool, reuseport: bool) -> None:
    """SO_REUSEADDR and SO_REUSEPORT as asked, before the socket binds."""
    if reuseaddr:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


@register(
    "listen",
    "proto",
    "address",
    "port",
    "backlog",
    "reuseaddr",
    "reuseport",
    "v6only",
    "echo",
    "events",
)
def op_listen(agent: HostAgent, req: Request) -> dict[str, Any]:
    proto = req.choice("proto", PROTOS)
    address = req.text("address", "0.0.0.0")
    port = req.port("port", 0)
    backlog = req.integer("backlog", 128, 0, 65535)
    reuseaddr = req.flag("reuseaddr", False)
    reuseport = req.flag("reuseport", False)
    v6only = req.opt_flag("v6only")
    echo = req.flag("echo", True)
    events = req.flag("events", True)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family, sockaddr = resolve(address, port, kind)
    if v6only is not None and family != socket.AF_INET6:
        raise OpError(f"listen: v6only applies to IPv6 addresses, not {address!r}")
    what = f"listen {proto} {_where(address, port)}"
    sock = _new_socket(family, kind, what)
    try:
        _reuse(sock, reuseaddr, reuseport)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(sockaddr)
        if proto == "tcp":
            sock.listen(backlog)
        else:
            enable_pktinfo(sock)
    except OSError as exc:
        sock.close()
        raise OpError.from_os(exc, what) from None
    s = agent.add_sock(
        sock, proto, "listener" if proto == "tcp" else "datagram", echo=echo, server=True
    )
    # Without events, thousands of accepts cost no frame each: the `sockets` op lists
    # every accepted socket with its listener (`parent`) all the same.
    s.announce = events
    agent.log(f"{what}: sock {s.id} on {_where(*s.local)}")
    return {"sock": s.id, "local": s.local}


@register(
    "connect", "proto", "address", "port", "source", "sport", "timeout", "reuseaddr", "reuseport"
)
def op_connect(agent: HostAgent, req: Request) -> dict[str, Any] | Deferred:
    proto = req.choice("proto", PROTOS)
    address = req.text("address")
    port = req.port("port")
    source = req.opt_text("source")
    sport = req.port("sport", 0)
    timeout = req.number("timeout", 5.0)
    reuseaddr = req.flag("reuseaddr", False)
    reuseport = req.flag("reuseport", False)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family, target = resolve(address, port, kind)
    bind_to = None
    if source is not None or sport:
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        source_family, bind_to = resolve(source or wildcard, sport, kind)
        if source_family != family:
            raise OpError(f"connect: source {source!r} and address {address!r} differ in family")
    what = f"connect {proto} {_where(address, port)}"
    sock = _new_socket(family, kind, what)
    try:
        _reuse(sock, reuseaddr, reuseport)
        if bind_to is not None:
            sock.bind(bind_to)
        if proto == "udp":
            sock.connect(target)
            return _connected(agent, sock, proto, what)
        status = sock.connect_ex(target)
    except OSError as exc:
        sock.close()
        raise OpError.from_os(exc, what) from None
    if status == 0:
        return _connected(agent, sock, proto, what)
    if status != errno.EINPROGRESS:
        sock.close()
        raise OpError.from_os(OSError(status, os.strerror(status)), what)
    _Connecting(agent, sock, req.id, proto, what).start(timeout)
    return DEFERRED


def _connected(agent: HostAgent, sock: socket.socket, proto: str, what: str) -> dict[str, Any]:
    try:
        peer = endpoint(sock.getpeername())
        if proto == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # reset between the handshake and now
        sock.close()
        raise OpError.from_os(exc, what) from None
    s = agent.add_sock(
        sock, proto, "stream" if proto == "tcp" else "datagram", echo=False, server=False
    )
    s.peer = peer
    s.state = "connected"
    return {"sock": s.id, "local": s.local, "peer": s.peer}


class _Connecting:
    """A TCP connect in progress: answered when the socket turns writable or time runs out."""

    def __init__(
        self, agent: HostAgent, sock: socket.socket, rid: int | str, proto: str, what: str
    ) -> None:
        self.agent = agent
        self.sock = sock
        self.rid = rid
        self.proto = proto
        self.what = what
        self.timeout = 0.0
        self.done = False
        self.timer: Timer | None = None

    def start(self, timeout: float) -> None:
        self.timeout = timeout
        self.agent.pending.add(self.sock)
        self.agent.set_interest(self.sock.fileno(), selectors.EVENT_WRITE, self.on_ready)
        self.timer = self.agent.call_later(timeout, self.on_timeout)

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.agent.set_interest(self.sock.fileno(), 0, self.on_ready)
        self.agent.pending.discard(self.sock)

    def on_ready(self, mask: int) -> None:
        if self.done:
            return
        self._finish()
        status = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if status:
            self.sock.close()
            self.agent.fail(
                self.rid, OpError.from_os(OSError(status, os.strerror(status)), self.what)
            )
            return
        try:
            result = _connected(self.agent, self.sock, self.proto, self.what)
        except OpError as exc:
            self.agent.fail(self.rid, exc)
            return
        self.agent.reply(self.rid, result)

    def on_timeout(self) -> None:
        if self.done:
            return
        self._finish()
        self.sock.close()
        message = f"{self.what}: no answer within {self.timeout:g} s"
        self.agent.fail(self.rid, OpError.timeout(message))


@register("send", "sock", "data", "data_b64", "to")
def op_send(agent: HostAgent, req: Request) -> dict[str, Any]:
    s = _sock(agent, req)
    data = req.payload()
    to = req.endpoint("to")
    if s.kind == "listener":
        raise OpError(f"send: sock {s.id} is a listener")
    if s.sock is None:
        raise s.error or OpError(f"send: sock {s.id} is closed", kind="closed")
    if s.proto == "tcp":
        if to is not None:
            raise OpError("send: 'to' is for UDP sockets")
        if s.error is not None:
            raise s.error
        s.wbuf += data
        agent.write_stream(s)
        if s.error is not None:
            raise s.error
        return {"sent": len(data)}
    try:
        if to is not None:
            sent = s.sock.sendto(data, resolve_for(s.sock, to[0], to[1]))
        else:
            sent = s.sock.send(data)
    except OSError as exc:
        raise OpError.from_os(exc, f"send on sock {s.id}") from None
    return {"sent": sent}


@register("recv", "sock", "timeout", "max")
def op_recv(agent: HostAgent, req: Request) -> Deferred:
    s = _sock(agent, req)
    timeout = req.number("timeout", 5.0)
    limit = req.integer("max", 65536, 1, 1 << 24)
    if s.kind == "listener":
        raise OpError(f"recv: sock {s.id} is a listener; wait for 'accepted' events instead")
    if s.echo:
        raise OpError(f"recv: sock {s.id} echoes what it receives; listen with echo=false")
    agent.add_waiter(s, Waiter(req.id, "recv", limit, time.monotonic()), timeout)
    return DEFERRED


@register("request", "sock", "data", "timeout")
def op_request(agent: HostAgent, req: Request) -> Deferred:
    s = _sock(agent, req)
    text = req.text("data", "")
    timeout = req.number("timeout", 5.0)
    if s.kind == "listener" or s.peer is None or s.echo:
        raise OpError(f"request: sock {s.id} is not a connected client socket")
    if s.proto == "tcp" and "\n" in text:
        raise OpError("request: TCP data must not contain a newline (it ends the message)")
    try:
        payload = text.encode("utf-8") + (b"\n" if s.proto == "tcp" else b"")
    except UnicodeEncodeError:
        raise OpError("request: 'data' must be encodable as UTF-8") from None
    waiter = Waiter(req.id, "request", 0, time.monotonic())
    if s.sock is not None and s.proto == "tcp":
        if s.error is None and not s.eof:
            s.wbuf += payload
            agent.write_stream(s)
    elif s.sock is not None:
        try:
            s.sock.send(payload)
        except OSError as exc:
            raise OpError.from_os(exc, f"request on sock {s.id}") from None
    agent.add_waiter(s, waiter, timeout)
    return DEFERRED


@register("close", "sock", "linger0")
def op_close(agent: HostAgent, req: Request) -> dict[str, Any]:
    s = _sock(agent, req)
    linger0 = req.flag("linger0", False)
    if s.wbuf and not linger0:
        agent.write_stream(s)
    agent.forget(s, linger0)
    return {}


@register("sockets")
def op_sockets(agent: HostAgent, req: Request) -> dict[str, Any]:
    return {"sockets": [s.describe() for s in agent.socks.values()]}
