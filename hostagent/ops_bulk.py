"""Bulk socket ops for the five-tuple suite: thousands of connections in one request.

Ops register themselves with `hostagent.ops.register` when this module is imported.

`connect_many` opens `count` connections to one address and port with non-blocking
connects on the agent's own selector, at most `window` in flight at a time, and answers
once every one has connected or failed. With `data`, each new connection first sends it
and waits for the echo server's identity reply, so the result carries the server's view
of the flow too (over UDP the probe is sent again every 0.25 s until answered or out of
time; a late duplicate echo then stays queued on the socket). The agent keeps serving
other requests meanwhile: no call blocks, and connections are started in slices between
turns of the loop.

Result: `{"results": [...], "connected": n, "failed": m, "errors": {errno: count},
"seconds": s, "pid": p}`, `results[i]` for the i-th connection being either
`{"sock", "local", "peer"}` (plus `"reply"`: `{"pid", "sock", "local", "peer"}` with
`data`) or `{"errno", "message", "kind"}`.

`close_many` closes a list of socket ids in one request (`linger0`: RST, no TIME_WAIT).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import selectors
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hostagent.net import Deadlines, endpoint, raw_socket, resolve
from hostagent.ops import MAX_SOCK_ID, PROTOS, register
from hostagent.protocol import DEFERRED, OpError, Request

if TYPE_CHECKING:
    from collections.abc import Callable

    from hostagent.agent import HostAgent
    from hostagent.net import Timer
    from hostagent.protocol import Deferred

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0o4000)  # non-blocking from the start
MAX_COUNT = 1 << 20
SLICE = 256  # connections started per turn of the loop, at most
RESEND = 0.25  # seconds before a UDP probe without an echo is sent again
READ_LIMIT = 1 << 16
_OK_CONNECT = (0, errno.EINPROGRESS)

# The cyclic garbage collector is paused while a connect_many runs: tens of thousands of
# new long-lived objects would otherwise trigger collection after collection over a heap
# that only grows (about a tenth of the op's time). It resumes when the last one answers.
_gc_pause = {"holds": 0, "resume": False}


def _pause_gc() -> None:
    if _gc_pause["holds"] == 0:
        _gc_pause["resume"] = gc.isenabled()
        gc.disable()
    _gc_pause["holds"] += 1


def _resume_gc() -> None:
    _gc_pause["holds"] -= 1
    if _gc_pause["holds"] == 0 and _gc_pause["resume"]:
        gc.enable()


@register(
    "connect_many", "proto", "address", "port", "count", "source", "timeout", "window", "data"
)
def op_connect_many(agent: HostAgent, req: Request) -> Deferred:
    proto = req.choice("proto", PROTOS)
    address = req.text("address")
    port = req.port("port")
    count = req.integer("count", None, 0, MAX_COUNT)
    source = req.opt_text("source")
    timeout = req.number("timeout", 5.0)
    window = req.integer("window", 256, 1, 65536)
    data = req.opt_text("data")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family, target = resolve(address, port, kind)
    bind_to = None
    if source is not None:
        source_family, bind_to = resolve(source, 0, kind)
        if source_family != family:
            raise OpError(f"source {source!r} and address {address!r} differ in family")
    payload = None
    if data is not None:
        if proto == "tcp" and "\n" in data:
            raise OpError("TCP data must not contain a newline (it ends the message)")
        try:
            payload = data.encode("utf-8") + (b"\n" if proto == "tcp" else b"")
        except UnicodeEncodeError:
            raise OpError("argument 'data' must be encodable as UTF-8") from None
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    order = _Order(
        proto,
        family,
        kind,
        target,
        bind_to,
        count,
        timeout,
        window,
        payload,
        f"connect {proto} {where}",
    )
    bulk = _Bulk(agent, req.id, order)
    agent.log(f"connect_many: {count} x {bulk.order.what}, window {window}")
    _pause_gc()
    try:
        bulk.fill()
    except BaseException:
        if not bulk.replied:  # never answered: the agent reports an internal error
            bulk.replied = True
            _resume_gc()
        raise
    return DEFERRED


@register("close_many", "socks", "linger0")
def op_close_many(agent: HostAgent, req: Request) -> dict[str, Any]:
    ids = req.args.get("socks")
    linger0 = req.flag("linger0", False)
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_SOCK_ID for i in ids
    ):
        raise OpError("argument 'socks' must be a list of socket ids")
    missing = []
    closed = 0
    for sid in ids:
        s = agent.socks.get(sid)
        if s is None:
            missing.append(sid)
            continue
        if s.wbuf and not linger0:
            agent.write_stream(s)
        agent.forget(s, linger0)
        closed += 1
    return {"closed": closed, "missing": missing}


@dataclass(frozen=True)
class _Order:
    """What one connect_many request asks for."""

    proto: str
    family: int
    kind: int
    target: Any
    bind_to: Any
    count: int
    timeout: float
    window: int
    payload: bytes | None
    what: str


class _Bulk:
    """One connect_many request: its connections, how many are in flight, the results."""

    def __init__(self, agent: HostAgent, rid: int | str, order: _Order) -> None:
        self.agent = agent
        self.rid = rid
        self.order = order
        self.results: list[dict[str, Any] | None] = [None] * order.count
        self.next = 0  # index of the next connection to start
        self.active = 0  # connections in flight
        self.finished = 0
        self.failures: dict[str, int] = {}
        self.inflight = Deadlines(agent, self._expire)
        self.resend_timer: Timer | None = None
        self.scheduled = False
        self.started = time.monotonic()
        self.replied = False

    # -- starting -------------------------------------------------------------------------

    def fill(self) -> None:
        """Start connections until `window` are in flight, one slice per loop turn."""
        self.scheduled = False
        started = 0
        while self.active < self.order.window and self.next < self.order.count:
            if started >= SLICE:
                self._schedule_fill()
                break
            index = self.next
            self.next += 1
            started += 1
            self._open(index)
        self.inflight.arm()
        self._maybe_reply()

    def _schedule_fill(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.agent.call_later(0, self.fill)

    def _open(self, index: int) -> None:
        try:
            sock = raw_socket(self.order.family, self.order.kind | SOCK_NONBLOCK)
        except OSError as exc:
            self.failed(index, OpError.from_os(exc, self.order.what))
            return
        try:
            if self.order.bind_to is not None:
                if self.order.family == socket.AF_INET and self.order.kind == socket.SOCK_STREAM:
                    # the port is chosen at connect, per destination, as without a bind
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind(self.order.bind_to)
            status = sock.connect_ex(self.order.target)
        except OSError as exc:
            sock.close()
            self.failed(index, OpError.from_os(exc, self.order.what))
            return
        if status not in _OK_CONNECT:
            sock.close()
            self.failed(
                index, OpError.from_os(OSError(status, os.strerror(status)), self.order.what)
            )
            return
        peer: list[Any] | None
        try:
            # Over a veth path the kernel often completes the handshake inside connect():
            # then there is nothing to wait for.
            peer = endpoint(sock.getpeername())
        except OSError:  # ENOTCONN: still under way
            peer = None
        if peer is not None and self.order.payload is None:
            self.adopt(index, sock, peer, None)
            return
        conn = _Conn(self, index, sock, time.monotonic() + self.order.timeout)
        self.active += 1
        self.agent.pending.add(sock)
        self.inflight.items.append(conn)
        if peer is not None:
            conn.connected(peer)
        else:
            conn.want(selectors.EVENT_WRITE, conn.on_writable)

    def adopt(
        self, index: int, sock: socket.socket, peer: list[Any], reply: dict[str, Any] | None
    ) -> None:
        """A connected socket becomes an ordinary socket of the agent."""
        if self.order.kind == socket.SOCK_STREAM:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                sock.close()
                self.failed(index, OpError.from_os(exc, self.order.what))
                return
            s = self.agent.add_sock(sock, self.order.proto, "stream", echo=False, server=False)
        else:
            s = self.agent.add_sock(sock, self.order.proto, "datagram", echo=False, server=False)
        s.peer = peer
        s.state = "connected"
        result: dict[str, Any] = {"sock": s.id, "local": s.local, "peer": peer}
        if reply is not None:
            result["reply"] = reply
        self.results[index] = result
        self.finished += 1

    # -- ending -----------------------------------------------------------------------------

    def failed(self, index: int, error: OpError) -> None:
        name = error.errno or error.kind
        self.failures[name] = self.failures.get(name, 0) + 1
        self.results[index] = {"errno": error.errno, "message": error.message, "kind": error.kind}
        self.finished += 1

    def released(self) -> None:
        """A connection in flight ended (either way): make room for the next."""
        self.active -= 1
        if self.next < self.order.count:
            self._schedule_fill()
        else:
            self._maybe_reply()

    def _expire(self, conn: _Conn) -> None:
        what = "echo reply" if conn.waiting_reply else "answer"
        conn.fail(OpError.timeout(f"{self.order.what}: no {what} within {self.order.timeout:g} s"))

    def arm_resend(self) -> None:
        if self.resend_timer is None:
            self.resend_timer = self.agent.call_later(RESEND, self._resend)

    def _resend(self) -> None:
        """Datagrams get lost (a full receive buffer drops them): send again what has
        not been answered, until each connection's own deadline."""
        self.resend_timer = None
        now = time.monotonic()
        waiting = False
        for conn in self.inflight.items:
            if conn.done or not conn.waiting_reply:
                continue
            waiting = True
            if now - conn.sent_at >= RESEND:
                conn.send_payload()
        if waiting:
            self.arm_resend()

    def _maybe_reply(self) -> None:
        if self.replied or self.finished < self.order.count:
            return
        self.replied = True
        try:
            self._reply()
        except BaseException:
            _resume_gc()
            raise
        # Once the answer has left: the collector, paused since the start, catches up on
        # everything made meanwhile at its first allocation (milliseconds at 2,500
        # connections), which must not hold the answer back.
        self.agent.when_flushed(_resume_gc)

    def _reply(self) -> None:
        self.inflight.cancel()
        if self.resend_timer is not None:
            self.resend_timer.cancel()
        self.resend_timer = None
        seconds = time.monotonic() - self.started
        self.agent.log(
            f"connect_many: {self.order.count - sum(self.failures.values())} connected, "
            f"failures {self.failures or 'none'}, {seconds:.3f} s"
        )
        self.agent.reply(
            self.rid,
            {
                "results": self.results,
                "connected": self.order.count - sum(self.failures.values()),
                "failed": sum(self.failures.values()),
                "errors": self.failures,
                "seconds": seconds,
                "pid": self.agent.pid,
            },
        )


class _Conn:
    """One connection of a connect_many, until it is handed to the agent or fails."""

    __slots__ = (
        "bulk",
        "deadline",
        "done",
        "fd",
        "index",
        "peer",
        "rbuf",
        "sent_at",
        "sock",
        "waiting_reply",
    )

    def __init__(self, bulk: _Bulk, index: int, sock: socket.socket, deadline: float) -> None:
        self.bulk = bulk
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.deadline = deadline
        self.done = False
        self.waiting_reply = False
        self.peer: list[Any] | None = None
        self.rbuf = b""
        self.sent_at = 0.0

    def want(self, events: int, handler: Callable[[int], None]) -> None:
        self.bulk.agent.set_interest(self.fd, events, handler)

    def on_writable(self, mask: int) -> None:
        if self.done:
            return
        status = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        try:
            if status:
                raise OSError(status, os.strerror(status))
            peer = endpoint(self.sock.getpeername())
        except OSError as exc:  # refused, unreachable, or reset between then and now
            self.fail(OpError.from_os(exc, self.bulk.order.what))
            return
        self.connected(peer)

    def connected(self, peer: list[Any]) -> None:
        bulk = self.bulk
        self.peer = peer
        if bulk.order.payload is None:
            self.hand_over(None)
            return
        self.waiting_reply = True
        if not self.send_payload():
            return
        self.want(selectors.EVENT_READ, self.on_readable)
        if bulk.order.kind == socket.SOCK_DGRAM:
            bulk.arm_resend()

    def send_payload(self) -> bool:
        """Send the probe (a fresh socket's buffer takes a short line); False if it failed."""
        assert self.bulk.order.payload is not None
        self.sent_at = time.monotonic()
        try:
            self.sock.send(self.bulk.order.payload)
        except BlockingIOError:
            return True  # UDP: as if lost; sent again
        except OSError as exc:
            self.fail(OpError.from_os(exc, self.bulk.order.what))
            return False
        return True

    def on_readable(self, mask: int) -> None:
        if self.done:
            return
        bulk = self.bulk
        try:
            chunk = self.sock.recv(READ_LIMIT)
        except BlockingIOError:
            return
        except OSError as exc:  # ECONNREFUSED from an ICMP port unreachable, a reset
            self.fail(OpError.from_os(exc, bulk.order.what))
            return
        if bulk.order.kind == socket.SOCK_STREAM:
            if not chunk:
                self.fail(
                    OpError(f"{bulk.order.what}: closed by the peer before a reply", kind="eof")
                )
                return
            self.rbuf += chunk
            end = self.rbuf.find(b"\n")
            if end < 0:
                return
            line = self.rbuf[:end]
        else:
            line = chunk
        try:
            reply = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            shown = line[:200].decode("utf-8", "replace")
            self.fail(OpError(f"{bulk.order.what}: not an echo reply: {shown!r}", kind="bad-reply"))
            return
        self.hand_over({k: reply.get(k) for k in ("pid", "sock", "local", "peer")})

    def _end(self) -> None:
        self.done = True
        agent = self.bulk.agent
        agent.set_interest(self.fd, 0, self.on_writable)
        agent.pending.discard(self.sock)

    def hand_over(self, reply: dict[str, Any] | None) -> None:
        """Connected (and answered): from now on an ordinary socket of the agent."""
        self._end()
        assert self.peer is not None
        self.bulk.adopt(self.index, self.sock, self.peer, reply)
        self.bulk.released()

    def fail(self, error: OpError) -> None:
        self._end()
        self.sock.close()
        self.bulk.failed(self.index, error)
        self.bulk.released()
