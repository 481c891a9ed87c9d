"""The agent's loop: one poller (epoll), non-blocking sockets, replies when each request is done.

`serve()` owns everything it uses (selector, sockets, buffers, timers), so a fork server can
call it in a freshly forked child. No thread, no socket of its own: the only sockets are
the ones requests ask for, and all of them close when stdin reaches EOF.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import json
import os
import select
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from hostagent import (  # noqa: F401  - they register more ops
    ops_bulk,
    ops_diag,
    ops_probe,
    ops_suites,
)
from hostagent.net import (
    CMSG_BUFFER,
    READ_CAP,
    WRITE_CAP,
    Datagram,
    Sock,
    Timer,
    Waiter,
    endpoint,
    pktinfo_address,
    raw_socket,
    source_pktinfo,
)
from hostagent.ops import OPS
from hostagent.poller import READ, WRITE, Poller
from hostagent.protocol import (
    AGENT_NAME,
    MAX_LINE,
    PROTOCOL_VERSION,
    Deferred,
    FrameError,
    LineReader,
    OpError,
    encode,
    encode_data,
    error_reply,
    ok_reply,
    parse_request,
)

ACCEPT_BATCH = 64
DATAGRAM_BATCH = 64
WILDCARDS = ("0.0.0.0", "::")


class HostAgent:
    """One agent: the stdio channel, the sockets it holds, pending requests and timers."""

    def __init__(self, infd: int, outfd: int) -> None:
        self.pid = os.getpid()
        self.infd = infd
        self.outfd = outfd
        self.selector = Poller()
        self.socks: dict[int, Sock] = {}
        self.pending: set[socket.socket] = set()  # sockets not yet in `socks` (connecting)
        self.status = 0
        self.running = True
        self._next_id = 1
        self._interest: dict[int, int] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = 0
        self._lines = LineReader(MAX_LINE)
        self._out = bytearray()
        self._out_blocked = False
        self._out_was_blocking = True
        self._drained: list[Callable[[], None]] = []  # see when_flushed

    # ---- logging and output -------------------------------------------------------------

    def log(self, message: str) -> None:
        """One line to stderr; dropped rather than block if nobody drains stderr."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line = f"{stamp}.{int(now % 1 * 1000):03d}Z hostagent[{self.pid}] {message}\n"
        try:
            poller = select.poll()
            poller.register(2, select.POLLOUT)
            if poller.poll(0):
                os.write(2, line.encode("utf-8", "replace")[:4000])
        except OSError:
            pass

    def emit(self, frame: dict[str, Any]) -> None:
        self._out += encode(frame)

    def reply(self, rid: int | str, result: dict[str, Any]) -> None:
        self.emit(ok_reply(rid, result))

    def fail(self, rid: int | str | None, error: OpError) -> None:
        self.emit(error_reply(rid, error))

    def flush(self) -> None:
        while self._out:
            try:
                written = os.write(self.outfd, self._out)
            except BlockingIOError:
                break
            except OSError as exc:  # the controller is gone
                self.log(f"stdout closed ({exc.strerror}); exiting")
                self._out.clear()
                self.running = False
                self.status = 1
                break
            del self._out[:written]
        blocked = bool(self._out)
        if blocked != self._out_blocked:
            self._out_blocked = blocked
            self._set_stdio_interest()
        if not blocked and self._drained:
            waiting, self._drained = self._drained, []
            for callback in waiting:
                self._guard(callback)

    def pending_output(self) -> int:
        """Bytes emitted and not yet written."""
        return len(self._out)

    def when_flushed(self, callback: Callable[[], None]) -> None:
        """Call `callback` once everything emitted so far has been written (now, if so)."""
        self._drained.append(callback)
        self.flush()

    def _final_flush(self, budget: float = 1.0) -> None:
        deadline = time.monotonic() + budget
        while self._out and self.status == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                select.select([], [self.outfd], [], left)
                written = os.write(self.outfd, self._out)
            except BlockingIOError:
                continue
            except OSError:
                break
            del self._out[:written]

    # ---- selector and timers ------------------------------------------------------------

    def set_interest(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        old = self._interest.get(fd, 0)
        if events == old:
            return
        if old == 0:
            self.selector.register(fd, events, handler)
        elif events == 0:
            self.selector.unregister(fd)
        else:
            self.selector.modify(fd, events, handler)
        if events:
            self._interest[fd] = events
        else:
            self._interest.pop(fd, None)

    def _set_stdio_interest(self) -> None:
        want_out = WRITE if self._out_blocked else 0
        if self.infd == self.outfd:
            self.set_interest(self.infd, READ | want_out, self._on_stdio)
        else:
            self.set_interest(self.infd, READ, self._on_stdio)
            self.set_interest(self.outfd, want_out, self._on_stdio)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(delay, 0.0), callback)
        self._timer_seq += 1
        heapq.heappush(self._timers, (timer.deadline, self._timer_seq, timer))
        return timer

    def _run_timers(self) -> float | None:
        """Fire due timers; return seconds until the next one (None: no timer)."""
        while self._timers:
            deadline, _seq, timer = self._timers[0]
            if timer.cancelled:
                heapq.heappop(self._timers)
                continue
            now = time.monotonic()
            if deadline > now:
                return deadline - now
            heapq.heappop(self._timers)
            self._guard(timer.callback)
        return None

    def _guard(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception:  # a bug must not take the agent (and every socket) down
            self.log("internal error:\n" + traceback.format_exc().rstrip())

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        self.emit(
            {
                "event": "hello",
                "agent": AGENT_NAME,
                "version": PROTOCOL_VERSION,
                "pid": self.pid,
                "python": ".".join(str(part) for part in sys.version_info[:3]),
                "hostname": socket.gethostname(),
                "ops": sorted(OPS),
            }
        )
        self._setup_stdio()
        self.log(f"started (python {sys.version.split()[0]}, protocol {PROTOCOL_VERSION})")
        self.flush()
        while self.running:
            timeout = self._run_timers()
            # What the timers wrote goes out now: with no timer left, select may wait for
            # ever, and a reply made by a timer (a probe's last deadline) would wait too.
            self.flush()
            if not self.running:
                break
            for handler, mask in self.selector.select(timeout):
                self._guard(handler, mask)
                if not self.running:
                    break
            self._run_timers()
            self.flush()
        self._final_flush()
        return self.status

    def _setup_stdio(self) -> None:
        try:
            self._out_was_blocking = os.get_blocking(self.outfd)
            os.set_blocking(self.outfd, False)
        except OSError:
            pass
        try:
            self._set_stdio_interest()
        except PermissionError:  # stdin is a regular file: epoll refuses it, poll does not
            self._interest.clear()
            self.selector.use_poll()
            self._set_stdio_interest()

    def _on_stdio(self, mask: int) -> None:
        if mask & WRITE:
            self.flush()
        if mask & READ:
            try:
                data = os.read(self.infd, 1 << 18)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._on_eof()
                return
            for line in self._lines.feed(data):
                self._on_frame(line)

    def _on_eof(self) -> None:
        if self._lines.leftover().strip():
            self.fail(None, OpError("input ended in the middle of a request", kind="truncated"))
        self.running = False

    def _on_frame(self, line: bytes | None) -> None:
        if line is None:
            self.fail(
                None, OpError(f"request longer than {MAX_LINE} bytes discarded", kind="too-large")
            )
            self.log("discarded an oversized request")
            return
        if not line.strip():
            return
        try:
            request = parse_request(line)
        except FrameError as exc:
            self.fail(exc.rid, exc.error)
            self.log(f"bad frame: {exc.error.message}")
            return
        spec = OPS.get(request.op)
        if spec is None:
            known = ", ".join(sorted(OPS))
            self.fail(
                request.id,
                OpError(f"unknown op {request.op!r} (known: {known})", kind="unknown-op"),
            )
            return
        unknown = sorted(set(request.args) - spec.args)
        if unknown:
            self.fail(request.id, OpError(f"{request.op}: unknown argument(s) {unknown}"))
            return
        try:
            result = spec.handler(self, request)
        except OpError as exc:
            if not exc.message.startswith(request.op):
                exc.message = f"{request.op}: {exc.message}"
            self.fail(request.id, exc)
            return
        except Exception as exc:
            self.log("internal error:\n" + traceback.format_exc().rstrip())
            self.fail(
                request.id, OpError(f"{request.op}: internal error: {exc!r}", kind="internal")
            )
            return
        if not isinstance(result, Deferred):
            self.reply(request.id, result)

    def shutdown(self) -> None:
        """Close every socket (held or still connecting) and the selector."""
        for sock in list(self.socks.values()):
            self.close_sock(sock)
        for pending in list(self.pending):
            pending.close()
        self.pending.clear()
        self.selector.close()
        with contextlib.suppress(OSError):
            os.set_blocking(self.outfd, self._out_was_blocking)
        self.log(f"exiting with status {self.status}")

    # ---- sockets --------------------------------------------------------------------------

    def add_sock(
        self,
        sock: socket.socket,
        proto: str,
        kind: str,
        *,
        echo: bool,
        server: bool,
        parent: int | None = None,
        local: list[Any] | None = None,
    ) -> Sock:
        s = Sock(
            self._next_id, sock, proto, kind, echo=echo, server=server, parent=parent, local=local
        )
        self._next_id += 1
        self.socks[s.id] = s
        s.handler = lambda mask: self._on_sock(s, mask)
        self.update(s)
        return s

    def get_sock(self, sid: int) -> Sock:
        s = self.socks.get(sid)
        if s is None:
            raise OpError(f"no socket {sid} in this agent", kind="no-such-socket", errno="EBADF")
        return s

    def update(self, s: Sock) -> None:
        """Register what `s` needs from the selector now."""
        if s.sock is None:
            return
        events = 0
        if s.kind == "listener":
            events = 0 if s.paused else READ
        elif s.kind == "datagram":
            events = READ
        else:
            if not s.eof and s.error is None and len(s.rbuf) < READ_CAP and len(s.wbuf) < WRITE_CAP:
                events |= READ
            if s.wbuf:
                events |= WRITE
        self.set_interest(s.sock.fileno(), events, s.handler)

    def close_sock(self, s: Sock, linger0: bool = False) -> None:
        """Close the file descriptor (the record stays until `forget`)."""
        if s.sock is None:
            return
        sock, s.sock = s.sock, None
        fd = sock.fileno()
        if fd in self._interest:
            self.selector.unregister(fd)
            del self._interest[fd]
        if linger0:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        s.state = "closed"

    def forget(self, s: Sock, linger0: bool = False) -> None:
        self.close_sock(s, linger0)
        self.socks.pop(s.id, None)
        for waiter in list(s.waiters):
            self.end_waiter(s, waiter, error=OpError(f"socket {s.id} closed", kind="closed"))

    def _on_sock(self, s: Sock, mask: int) -> None:
        if s.sock is None:
            return
        if s.kind == "listener":
            self._accept(s)
            return
        if s.kind == "datagram":
            self._read_datagrams(s)
            return
        if mask & WRITE:
            self.write_stream(s)
        if mask & READ and s.sock is not None:
            self._read_stream(s)

    def _accept(self, s: Sock) -> None:
        assert s.sock is not None
        # A listener bound to one address accepts on exactly that address and port: its
        # own local endpoint is every accepted socket's, with no getsockname per socket.
        local = None if s.local[0] in WILDCARDS else s.local
        family = socket.AF_INET6 if s.family == 6 else socket.AF_INET
        for _ in range(ACCEPT_BATCH):
            try:
                # socket.accept() reads the listener's family and type as enums (a
                # conversion each) to wrap the new socket: the ints are known here.
                fd, _addr = s.sock._accept()  # type: ignore[attr-defined]  # CPython's own
                conn = raw_socket(family, socket.SOCK_STREAM, fd)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log(f"sock {s.id}: accept paused for 0.1 s: {exc.strerror}")
                    s.paused = True
                    self.update(s)
                    self.call_later(0.1, lambda: self._resume(s))
                    return
                if exc.errno in (errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO):
                    continue
                raise
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            child = self.add_sock(
                conn, s.proto, "stream", echo=s.echo, server=True, parent=s.id, local=local
            )
            child.peer = endpoint(_addr)
            child.state = "connected"
            if s.announce:
                self.emit(
                    {
                        "event": "accepted",
                        "listener": s.id,
                        "sock": child.id,
                        "local": child.local,
                        "peer": child.peer,
                    }
                )

    def _resume(self, s: Sock) -> None:
        s.paused = False
        self.update(s)

    def _read_stream(self, s: Sock) -> None:
        assert s.sock is not None
        try:
            data = s.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._stream_failed(s, OpError.from_os(exc, f"sock {s.id}"))
            return
        if not data:
            s.eof = True
            self.emit({"event": "closed", "sock": s.id, "by": "peer", "errno": None})
            if s.echo:
                if s.rbuf:
                    self._echo_stream(s, bytes(s.rbuf))
                    s.rbuf.clear()
                s.close_when_flushed = True
                self.write_stream(s)
            self.update(s)
            self.pump(s)
            return
        s.rbuf += data
        if s.echo:
            while True:
                end = s.rbuf.find(b"\n")
                if end < 0:
                    if len(s.rbuf) >= MAX_LINE:  # no newline in sight: echo what we have
                        self._echo_stream(s, bytes(s.rbuf))
                        s.rbuf.clear()
                    break
                message = bytes(s.rbuf[:end])
                del s.rbuf[: end + 1]
                self._echo_stream(s, message)
            self.write_stream(s)
        else:
            self.pump(s)
        self.update(s)

    def _echo_stream(self, s: Sock, message: bytes) -> None:
        s.wbuf += self.echo_line(s, s.local, s.peer, message) + b"\n"

    def echo_line(self, s: Sock, local: Any, peer: Any, message: bytes) -> bytes:
        """The identity reply: which process and which socket answered, and for whom."""
        reply = {
            "pid": self.pid,
            "sock": s.id,
            "local": local,
            "peer": peer,
            "data": message.decode("utf-8", "replace"),
        }
        return json.dumps(reply, separators=(",", ":")).encode("ascii")

    def write_stream(self, s: Sock) -> None:
        """Send what `s` has buffered; close it after if it was asked to."""
        if s.sock is None:
            return
        while s.wbuf:
            try:
                sent = s.sock.send(s.wbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                s.wbuf.clear()
                self._stream_failed(s, OpError.from_os(exc, f"sock {s.id}"))
                return
            del s.wbuf[:sent]
        if not s.wbuf and s.close_when_flushed:
            self.forget(s)  # an echoing socket the peer closed: nothing left to ask of it
            return
        self.update(s)

    def _stream_failed(self, s: Sock, error: OpError) -> None:
        s.error = error
        self.emit({"event": "closed", "sock": s.id, "by": "error", "errno": error.errno})
        if s.echo:
            self.forget(s)
            return
        self.close_sock(s)
        self.pump(s)

    def _read_datagrams(self, s: Sock) -> None:
        assert s.sock is not None
        for _ in range(DATAGRAM_BATCH):
            try:
                data, ancdata, _flags, addr = s.sock.recvmsg(1 << 16, CMSG_BUFFER)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP port unreachable
                s.error = OpError.from_os(exc, f"sock {s.id}")
                break
            peer = endpoint(addr) if addr else s.peer
            dest, ifindex = pktinfo_address(ancdata)
            local = [dest, s.local[1]] if dest else s.local
            if s.server:
                self.emit(
                    {
                        "event": "datagram",
                        "sock": s.id,
                        "local": local,
                        "peer": peer,
                        "size": len(data),
                    }
                )
            gram = Datagram(data, peer or ["", 0], local)
            if s.echo and addr:
                self._echo_datagram(s, gram, addr, dest, ifindex)
            else:
                s.datagrams.append(gram)
        self.pump(s)

    def _echo_datagram(
        self, s: Sock, gram: Datagram, addr: Any, dest: str | None, ifindex: int
    ) -> None:
        assert s.sock is not None
        peer = gram.peer
        reply = self.echo_line(s, gram.local, peer, gram.data)
        anc = source_pktinfo(s.sock, dest, ifindex) if dest else []
        try:
            s.sock.sendmsg([reply], anc, 0, addr)
        except BlockingIOError:
            self.log(f"sock {s.id}: echo to {peer} dropped (send buffer full)")
        except OSError as exc:
            if not anc:
                self.log(f"sock {s.id}: echo to {peer} failed: {exc.strerror}")
                return
            try:  # e.g. a datagram to a broadcast address: reply from the default source
                s.sock.sendto(reply, addr)
            except OSError as again:
                self.log(f"sock {s.id}: echo to {peer} failed: {again.strerror}")

    # ---- waiters (recv and request) -----------------------------------------------------

    def add_waiter(self, s: Sock, waiter: Waiter, timeout: float) -> None:
        s.waiters.append(waiter)
        waiter.timer = self.call_later(timeout, lambda: self._expire(s, waiter, timeout))
        self.pump(s)

    def _expire(self, s: Sock, waiter: Waiter, timeout: float) -> None:
        if waiter in s.waiters:
            what = "reply" if waiter.mode == "request" else "data"
            self.end_waiter(
                s, waiter, error=OpError.timeout(f"sock {s.id}: no {what} within {timeout:g} s")
            )

    def end_waiter(
        self,
        s: Sock,
        waiter: Waiter,
        result: dict[str, Any] | None = None,
        error: OpError | None = None,
    ) -> None:
        try:
            s.waiters.remove(waiter)
        except ValueError:
            return
        if waiter.timer is not None:
            waiter.timer.cancel()
        if error is not None:
            self.fail(waiter.rid, error)
        else:
            self.reply(waiter.rid, result or {})

    def pump(self, s: Sock) -> None:
        """Answer the waiters of `s` in order with what has arrived."""
        while s.waiters:
            waiter = s.waiters[0]
            if s.kind == "datagram":
                if not self._pump_datagram(s, waiter):
                    break
            elif not self._pump_stream(s, waiter):
                break
        self.update(s)

    def _pump_stream(self, s: Sock, waiter: Waiter) -> bool:
        if waiter.mode == "recv" and s.rbuf:
            data = bytes(s.rbuf[: waiter.limit])
            del s.rbuf[: waiter.limit]
            self.end_waiter(s, waiter, {**encode_data(data), "peer": s.peer})
        elif waiter.mode == "request" and b"\n" in s.rbuf:
            end = s.rbuf.find(b"\n")
            line = bytes(s.rbuf[:end])
            del s.rbuf[: end + 1]
            self._answer_request(s, waiter, line)
        elif s.error is not None:
            self.end_waiter(s, waiter, error=s.error)
        elif s.sock is None:
            self.end_waiter(s, waiter, error=OpError(f"sock {s.id} is closed", kind="closed"))
        elif s.eof and waiter.mode == "recv":
            self.end_waiter(s, waiter, {"data": "", "eof": True, "peer": s.peer})
        elif s.eof:
            self.end_waiter(
                s,
                waiter,
                error=OpError(
                    f"sock {s.id}: connection closed by the peer before a reply", kind="eof"
                ),
            )
        else:
            return False
        return True

    def _pump_datagram(self, s: Sock, waiter: Waiter) -> bool:
        if s.datagrams:
            gram = s.datagrams.popleft()
            if waiter.mode == "request":
                self._answer_request(s, waiter, gram.data)
            else:
                result: dict[str, Any] = {
                    **encode_data(gram.data[: waiter.limit]),
                    "peer": gram.peer,
                    "local": gram.local,
                }
                if len(gram.data) > waiter.limit:
                    result["truncated"] = True
                self.end_waiter(s, waiter, result)
        elif s.error is not None:
            error, s.error = s.error, None  # a datagram socket's error is reported once
            self.end_waiter(s, waiter, error=error)
        elif s.sock is None:
            self.end_waiter(s, waiter, error=OpError(f"sock {s.id} is closed", kind="closed"))
        else:
            return False
        return True

    def _answer_request(self, s: Sock, waiter: Waiter, raw: bytes) -> None:
        rtt = time.monotonic() - waiter.started
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            shown = raw[:200].decode("utf-8", "replace")
            self.end_waiter(
                s,
                waiter,
                error=OpError(
                    f"sock {s.id}: reply is not an echo JSON object: {shown!r}", kind="bad-reply"
                ),
            )
            return
        self.end_waiter(s, waiter, {"reply": reply, "rtt": rtt})


def serve(infd: int = 0, outfd: int = 1) -> int:
    """Run an agent on `infd`/`outfd` until EOF of `infd`; returns the exit status."""
    _raise_fd_limit()
    agent = HostAgent(infd, outfd)
    try:
        return agent.run()
    finally:
        agent.shutdown()


def _raise_fd_limit() -> None:
    """Thousands of sockets need thousands of descriptors: take the hard limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
