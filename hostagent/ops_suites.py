"""Socket ops the multiplexing and ports suites need.

Ops register themselves with `hostagent.ops.register` when this module is imported.

`exchange` is the batch client: one request opens many client sockets at once (TCP
connections or connected UDP sockets), sends each of them tagged messages to an echo
server, collects every echo with the identity it carries (pid, socket, flow as the server
saw it), and answers once with all of it. Fifty ports times several clients then cost one
controller round trip per client process instead of one per message.

    > {"id": 7, "op": "exchange", "messages": 2, "flows": [
         {"proto": "tcp", "address": "10.0.1.13", "port": 40001, "tag": "a"},
         {"proto": "udp", "address": "10.0.1.13", "port": 40002, "tag": "b"}]}
    < {"id": 7, "ok": true, "result": {"pid": 4242, "seconds": 0.01, "flows": [
         {"tag": "a", "proto": "tcp", "local": [...], "peer": [...], "error": null,
          "lost": [], "echoes": [{"sent": "a#0", "reply": {...}, "rtt": 0.0003, "tries": 1},
                                 ...]}, ...]}}

A flow that fails (refused, unreachable, timed out) carries `error` (`errno`, `message`)
and whatever it got before; the request itself only fails for a bad argument. TCP
connections stay open until every flow is done, so the connections of one request
coexist (a client's two connections to one port are open at the same time); then they
close with a FIN (or an RST with `linger0`).

`sysctl` reads network sysctls of the agent's namespace (`{"names": ["net.ipv4.tcp_tw_reuse"]}`
→ `{"values": {"net.ipv4.tcp_tw_reuse": "2"}}`; null where unreadable); it writes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import selectors
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from hostagent.net import endpoint, resolve
from hostagent.ops import PROTOS, register
from hostagent.protocol import DEFERRED, OpError

if TYPE_CHECKING:
    from hostagent.agent import HostAgent
    from hostagent.net import Timer
    from hostagent.protocol import Deferred, Request

SYSCTL_NAME = re.compile(r"^net(\.[A-Za-z0-9_-]+)+$")
MAX_FLOWS = 20000
MAX_TAG = 200
READ_LIMIT = 1 << 20  # a TCP reply line longer than this ends the flow with an error


@register("sysctl", "names")
def op_sysctl(agent: HostAgent, req: Request) -> dict[str, Any]:
    """Read network sysctls of the agent's namespace: `{"values": {name: text | null}}`."""
    names = req.args.get("names")
    if not isinstance(names, list) or not names or len(names) > 100:
        raise OpError("sysctl: argument 'names' must be a list of 1 to 100 sysctl names")
    values: dict[str, str | None] = {}
    for name in names:
        if not isinstance(name, str) or not SYSCTL_NAME.match(name):
            raise OpError(f"sysctl: {name!r} is not a network sysctl name (net.ipv4.…)")
        try:
            with open("/proc/sys/" + name.replace(".", "/")) as handle:
                values[name] = " ".join(handle.read().split())
        except OSError:
            values[name] = None
    return {"values": values}


@register("exchange", "flows", "messages", "timeout", "retries", "retry_after", "linger0")
def op_exchange(agent: HostAgent, req: Request) -> Deferred:
    flows = _flow_specs(req)
    messages = req.integer("messages", 1, 1, 10000)
    timeout = req.number("timeout", 10.0, 0.001)
    retries = req.integer("retries", 2, 0, 100)
    retry_after = req.number("retry_after", 0.5, 0.001)
    linger0 = req.flag("linger0", False)
    _Exchange(agent, req.id, flows, messages, retries, retry_after, linger0).start(timeout)
    return DEFERRED


def _flow_specs(req: Request) -> list[tuple[str, int, Any, str]]:
    """(proto, family, sockaddr, tag) per flow, every argument checked before anything opens."""
    raw = req.args.get("flows")
    if not isinstance(raw, list) or not raw:
        raise OpError("exchange: argument 'flows' must be a non-empty list of flows")
    if len(raw) > MAX_FLOWS:
        raise OpError(f"exchange: at most {MAX_FLOWS} flows per request, not {len(raw)}")
    specs = []
    for index, flow in enumerate(raw):
        where = f"exchange: flows[{index}]"
        if not isinstance(flow, dict):
            raise OpError(f"{where} must be an object with proto, address, port and tag")
        unknown = sorted(set(flow) - {"proto", "address", "port", "tag"})
        if unknown:
            raise OpError(f"{where}: unknown key(s) {unknown}")
        proto, address, port = flow.get("proto"), flow.get("address"), flow.get("port")
        tag = flow.get("tag", str(index))
        if proto not in PROTOS:
            raise OpError(f"{where}.proto must be 'tcp' or 'udp', not {proto!r}")
        if not isinstance(address, str):
            raise OpError(f"{where}.address must be a numeric address, not {address!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise OpError(f"{where}.port must be an integer from 1 to 65535, not {port!r}")
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG or "\n" in tag:
            raise OpError(f"{where}.tag must be a one-line string of 1 to {MAX_TAG} characters")
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        family, sockaddr = resolve(address, port, kind)
        specs.append((proto, family, sockaddr, tag))
    return specs


class _Exchange:
    """One `exchange` request: its flows, its deadline, and the single reply at the end."""

    def __init__(
        self,
        agent: HostAgent,
        rid: int | str,
        specs: list[tuple[str, int, Any, str]],
        messages: int,
        retries: int,
        retry_after: float,
        linger0: bool,
    ) -> None:
        self.agent = agent
        self.rid = rid
        self.messages = messages
        self.retries = retries
        self.retry_after = retry_after
        self.linger0 = linger0
        self.flows = [_Flow(self, *spec) for spec in specs]
        self.running = len(self.flows)
        self.started = time.monotonic()
        self.done = False
        self.timer: Timer | None = None

    def start(self, timeout: float) -> None:
        self.timer = self.agent.call_later(timeout, self.on_timeout)
        for flow in self.flows:
            if self.done:
                break
            flow.start()

    def flow_done(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.finish()

    def on_timeout(self) -> None:
        if self.done:
            return
        for flow in self.flows:
            if not flow.finished:
                flow.fail_with("ETIMEDOUT", "the exchange's timeout ran out", notify=False)
        self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        for flow in self.flows:
            flow.close(self.linger0)
        self.agent.reply(
            self.rid,
            {
                "pid": self.agent.pid,
                "seconds": time.monotonic() - self.started,
                "flows": [flow.describe() for flow in self.flows],
            },
        )


class _Flow:
    """One client socket of an exchange: connect, then message, echo, message, echo, ..."""

    def __init__(
        self, exchange: _Exchange, proto: str, family: int, sockaddr: Any, tag: str
    ) -> None:
        self.exchange = exchange
        self.agent = exchange.agent
        self.proto = proto
        self.family = family
        self.sockaddr = sockaddr
        self.tag = tag
        self.sock: socket.socket | None = None
        self.local: list[Any] | None = None
        self.peer: list[Any] | None = None
        self.echoes: list[dict[str, Any]] = []
        self.lost: list[str] = []
        self.strays = 0
        self.error: dict[str, Any] | None = None
        self.finished = False
        self.index = 0  # the message being exchanged
        self.tries = 0
        self.sent_at = 0.0
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.timer: Timer | None = None
        self.interest = 0

    # ---- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
        try:
            sock = socket.socket(self.family, kind)
        except OSError as exc:
            self.fail_os(exc)
            return
        sock.setblocking(False)
        self.sock = sock
        self.agent.pending.add(sock)  # closed by the agent's shutdown if we never finish
        try:
            if self.proto == "udp":
                sock.connect(self.sockaddr)
                self._connected()
                return
            status = sock.connect_ex(self.sockaddr)
        except OSError as exc:
            self.fail_os(exc)
            return
        if status == 0:
            self._connected()
        elif status == errno.EINPROGRESS:
            self._want(selectors.EVENT_WRITE)
        else:
            self.fail_os(OSError(status, os.strerror(status)))

    def _connected(self) -> None:
        assert self.sock is not None
        try:
            self.local = endpoint(self.sock.getsockname())
            self.peer = endpoint(self.sock.getpeername())
            if self.proto == "tcp":
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self.fail_os(exc)
            return
        self._send_current()

    def _complete(self) -> None:
        """Every message is done: keep the socket (closed with the others) and report."""
        self.finished = True
        self._cancel_timer()
        self._want(0)
        self.exchange.flow_done()

    def fail_os(self, exc: OSError) -> None:
        code = exc.errno
        name = errno.errorcode.get(code) if code is not None else None
        self.fail_with(name, exc.strerror or str(exc))

    def fail_with(self, name: str | None, message: str, notify: bool = True) -> None:
        if self.finished:
            return
        self.error = {"errno": name, "message": message, "at_message": self.index}
        self.finished = True
        self._cancel_timer()
        self.close(linger0=False)
        if notify:
            self.exchange.flow_done()

    def close(self, linger0: bool) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self._cancel_timer()
        self._want(0, sock)
        self.agent.pending.discard(sock)
        if linger0 and self.proto == "tcp":
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def describe(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "proto": self.proto,
            "target": endpoint(self.sockaddr),
            "local": self.local,
            "peer": self.peer,
            "echoes": self.echoes,
            "lost": self.lost,
            "strays": self.strays,
            "error": self.error,
        }

    # ---- messages ----------------------------------------------------------------------

    def _current(self) -> str:
        return f"{self.tag}#{self.index}"

    def _send_current(self) -> None:
        if self.index >= self.exchange.messages:
            self._complete()
            return
        assert self.sock is not None
        self.tries += 1
        self.sent_at = time.monotonic()
        payload = self._current().encode("utf-8")
        if self.proto == "tcp":
            self.wbuf += payload + b"\n"
            self._flush()
            return
        try:
            self.sock.send(payload)
        except BlockingIOError:
            pass  # counted as a try; the retry timer sends it again
        except OSError as exc:
            self.fail_os(exc)
            return
        self._cancel_timer()
        self.timer = self.agent.call_later(self.exchange.retry_after, self._on_retry)
        self._want(selectors.EVENT_READ)

    def _flush(self) -> None:
        assert self.sock is not None
        while self.wbuf:
            try:
                sent = self.sock.send(self.wbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                self.fail_os(exc)
                return
            del self.wbuf[:sent]
        self._want(selectors.EVENT_READ | (selectors.EVENT_WRITE if self.wbuf else 0))

    def _on_retry(self) -> None:
        if self.finished or self.sock is None:
            return
        if self.tries > self.exchange.retries:
            self.lost.append(self._current())
            self.index += 1
            self.tries = 0
        self._send_current()

    def _answer(self, raw: bytes) -> None:
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            shown = raw[:200].decode("utf-8", "replace")
            self.fail_with(None, f"the reply is not an echo JSON object: {shown!r}")
            return
        if self.proto == "udp" and reply.get("data") != self._current():
            self.strays += 1  # the echo of an earlier try of an earlier message
            return
        self.echoes.append(
            {
                "sent": self._current(),
                "reply": reply,
                "rtt": time.monotonic() - self.sent_at,
                "tries": self.tries,
            }
        )
        self.index += 1
        self.tries = 0
        self._cancel_timer()
        self._send_current()

    # ---- the selector ------------------------------------------------------------------

    def _want(self, events: int, sock: socket.socket | None = None) -> None:
        sock = sock or self.sock
        if sock is None or events == self.interest:
            return
        self.interest = events
        self.agent.set_interest(sock.fileno(), events, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        if self.finished or self.sock is None:
            return
        if self.local is None:  # a TCP connect finished, one way or the other
            status = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if status:
                self.fail_os(OSError(status, os.strerror(status)))
                return
            self._want(0)
            self._connected()
            return
        if mask & selectors.EVENT_WRITE:
            self._flush()
            if self.finished or self.sock is None:
                return
        if mask & selectors.EVENT_READ:
            if self.proto == "tcp":
                self._read_stream()
            else:
                self._read_datagrams()

    def _read_stream(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail_os(exc)
            return
        if not data:
            self.fail_with(None, "the server closed the connection before every echo came")
            return
        self.rbuf += data
        while not self.finished:
            end = self.rbuf.find(b"\n")
            if end < 0:
                if len(self.rbuf) > READ_LIMIT:
                    self.fail_with(None, f"a reply line longer than {READ_LIMIT} bytes")
                return
            line = bytes(self.rbuf[:end])
            del self.rbuf[: end + 1]
            self._answer(line)

    def _read_datagrams(self) -> None:
        for _ in range(64):
            if self.finished or self.sock is None:
                return
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:  # ECONNREFUSED: ICMP port unreachable
                self.fail_os(exc)
                return
            self._answer(data)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
