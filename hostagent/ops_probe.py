"""The `probe` op: classify many ports of many targets the way a port scanner does.

Ops register themselves with `hostagent.ops.register` when this module is imported.

    > {"id": 9, "op": "probe", "timeout": 1.0, "targets": [
         {"address": "10.0.1.12", "proto": "tcp", "ports": [22, 443, [8000, 8100]]},
         {"address": "fd00:1::12", "proto": "udp", "ports": [53]}]}
    < {"id": 9, "ok": true, "result": {"seconds": 1.02, "pid": 4242, "late": 0.001,
         "kinds": [{"state": "open", "reason": "SYN-ACK", "attempts": 1},
                   {"state": "closed", "reason": "RST", "attempts": 1,
                    "errno": "ECONNREFUSED"}, ...],
         "results": [[0, 212], [1, 35], ...]}}

`results` has one `[kind, elapsed µs]` per port in the order the targets list them
(ranges expanded); `kinds` holds each distinct verdict once (`state`, `reason`,
`attempts`, and where known `errno`, `icmp`, `from`), so a sweep's answer stays small.
TCP: open = the handshake completed, closed = RST (or ICMP port unreachable), filtered =
no answer before the timeout or an ICMP error (admin-prohibited, host or net unreachable).
UDP: open = a datagram came back (the agent's echo services answer anything), closed =
ICMP port unreachable, filtered = another ICMP error, open|filtered = no answer (the
datagram is sent again halfway to the deadline; `attempts` counts them). As with
nmap, a port unreachable from anyone but the target (a router's reject) is filtered.

How it stays honest under load: each probe's `timeout` starts when connect()/send() has
returned, i.e. when its packet has left; before a probe is called filtered or
open|filtered its socket is asked what really happened (SO_ERROR, TCP_INFO's state, the
error queue, a last read), so a busy loop that noticed an answer late cannot turn it into
silence; at most `concurrency` probes are in flight. ICMP errors are read from the error
queue (IP_RECVERR/IPV6_RECVERR) to name the ICMP type and who sent it.

`ratelimited: true` says the target's ICMP rate limits are not ours (e.g. an ssh host):
UDP probes to one address then leave at most one per `udp_interval` seconds (default 1),
and an open|filtered result says an ICMP answer may have been suppressed.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import functools
import os
import selectors
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from hostagent.net import Deadlines, resolve
from hostagent.ops import PROTOS, register
from hostagent.protocol import DEFERRED, OpError

if TYPE_CHECKING:
    from hostagent.agent import HostAgent
    from hostagent.protocol import Deferred, Request

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # Linux values; older Pythons lack them
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
RECVERR_OPTIONS: dict[int, tuple[int, int, int]] = {
    socket.AF_INET: (socket.IPPROTO_IP, IP_RECVERR, 1),
    socket.AF_INET6: (socket.IPPROTO_IPV6, IPV6_RECVERR, 1),
}
RECVERR_CMSGS = ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR))
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
TCP_INFO = getattr(socket, "TCP_INFO", 11)
SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0o4000)
TCP_ESTABLISHED = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
MAX_TARGETS = 1 << 18
SLICE = 512  # probes started per turn of the loop, at most
PAYLOAD = b"netharness-probe\n"
# A real UDP server answers only its own protocol: on its well-known ports a probe says
# something that server replies to (as nmap's payloads do), anywhere else PAYLOAD, which
# the agents' echo services return. Any datagram back means open.
UDP_PAYLOADS = {
    # DNS: a standard query (id 0x6e68, recursion desired) for the root's NS records
    53: bytes.fromhex("6e68 0100 0001 0000 0000 0000 00 0002 0001"),
    # NTP: a version 4 client request, the rest zero
    123: bytes([0x23]) + bytes(47),
    # SNMP v1: get-request, community "public", for sysDescr.0
    161: bytes.fromhex(
        "3026 020100 0406 7075626c6963 a019 0204 6e680001 020100 020100"
        " 300b 3009 0605 2b06010201 0500"
    ),
}
RETRY_SHORTAGE = 0.01
SHORTAGE = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN, errno.EADDRNOTAVAIL}
)
SUPPRESSED = "an ICMP answer may have been suppressed by rate limiting"

# ICMP "destination unreachable" codes by name (type 3 for IPv4, type 1 for IPv6).
ICMP4_UNREACH = {
    0: "net-unreachable",
    1: "host-unreachable",
    2: "prot-unreachable",
    3: "port-unreachable",
    9: "net-prohibited",
    10: "host-prohibited",
    13: "admin-prohibited",
}
ICMP6_UNREACH = {
    0: "no-route",
    1: "admin-prohibited",
    3: "addr-unreachable",
    4: "port-unreachable",
    5: "policy-fail",
    6: "reject-route",
}
# Errors that say "something in the path refused" rather than "nobody listens".
FILTERED_ERRNOS = frozenset(
    {
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EACCES,
        errno.EPERM,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.ETIMEDOUT,
        errno.ENOPROTOOPT,
    }
)


@register("probe", "targets", "timeout", "concurrency", "ratelimited", "udp_interval")
def op_probe(agent: HostAgent, req: Request) -> Deferred:
    specs = _targets(req.args.get("targets"))
    timeout = req.number("timeout", 1.0, 0.001, 600.0)
    concurrency = req.integer("concurrency", 512, 1, 65536)
    ratelimited = req.flag("ratelimited", False)
    interval = req.number("udp_interval", 1.0, 0.0, 60.0) if ratelimited else 0.0
    scan = _Scan(agent, req.id, specs, timeout, concurrency, interval, ratelimited)
    agent.log(f"probe: {len(specs)} ports, timeout {timeout:g} s, concurrency {concurrency}")
    scan.fill()
    return DEFERRED


def _targets(value: Any) -> list[tuple[str, int, str, int, Any]]:
    """Expand the targets into (address, port, proto, family, sockaddr), in order."""
    bad = OpError(
        "argument 'targets' must be a list of {address, proto, ports: [port or [low, high]]}"
    )
    if not isinstance(value, list):
        raise bad
    out: list[tuple[str, int, str, int, Any]] = []
    for target in value:
        if not isinstance(target, dict) or set(target) - {"address", "proto", "ports"}:
            raise bad
        address, proto, ports = target.get("address"), target.get("proto"), target.get("ports")
        if not isinstance(address, str) or proto not in PROTOS or not isinstance(ports, list):
            raise bad
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        family, base = resolve(address, 1, kind)  # once: getaddrinfo per port is slow
        for item in ports:
            low, high = (item, item) if not isinstance(item, list) else [*item, None, None][:2]
            if not (_is_port(low) and _is_port(high) and 1 <= low <= high):
                raise OpError(f"probe: a port must be 1-65535 or [low, high], not {item!r}")
            if len(out) + high - low + 1 > MAX_TARGETS:
                raise OpError(f"probe: more than {MAX_TARGETS} ports in one request")
            for port in range(low, high + 1):
                out.append((address, port, proto, family, (base[0], port, *base[2:])))
    return out


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535


class _Scan:
    """One probe request: its probes, how many are in flight, the results so far."""

    def __init__(
        self,
        agent: HostAgent,
        rid: int | str,
        specs: list[tuple[str, int, str, int, Any]],
        timeout: float,
        concurrency: int,
        interval: float,
        ratelimited: bool,
    ) -> None:
        self.agent = agent
        self.rid = rid
        self.specs = specs
        self.timeout = timeout
        self.concurrency = concurrency
        self.interval = interval
        self.ratelimited = ratelimited
        # Results are [kind, elapsed in µs]; a kind is one distinct verdict (state, reason,
        # ...), sent once: a sweep's 65000 "closed, RST" cost a few bytes each.
        self.results: list[list[int] | None] = [None] * len(specs)
        self.kinds: list[dict[str, Any]] = []
        self.kind_index: dict[tuple[Any, ...], int] = {}
        self.next = 0
        self.active = 0
        self.finished = 0
        self.inflight = Deadlines(agent, lambda probe: probe.expire())
        self.scheduled = False
        self.next_udp: dict[str, float] = {}  # paced: when the next UDP probe may leave
        self.started = time.monotonic()
        self.replied = False

    def fill(self) -> None:
        self.scheduled = False
        started = 0
        while self.active < self.concurrency and self.next < len(self.specs):
            if started >= SLICE:
                self._schedule_fill()
                break
            index = self.next
            self.next += 1
            started += 1
            self.active += 1
            address, _port, proto, _family, _sa = self.specs[index]
            delay = self._pace(address) if proto == "udp" and self.interval else 0.0
            if delay > 0:
                self.agent.call_later(delay, functools.partial(self._start, index))
            else:
                self._start(index)
        self.inflight.arm()
        self._maybe_reply()

    def _pace(self, address: str) -> float:
        now = time.monotonic()
        slot = max(now, self.next_udp.get(address, now))
        self.next_udp[address] = slot + self.interval
        return slot - now

    def _schedule_fill(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.agent.call_later(0, self.fill)

    def _start(self, index: int) -> None:
        _address, _port, proto, family, sockaddr = self.specs[index]
        probe = _Probe(self, index, proto, family, sockaddr[0]) if proto == "udp" else None
        try:
            if probe is None:
                self._start_tcp(index, family, sockaddr)
                return
            probe.start(sockaddr)
        except OSError as exc:
            if exc.errno in SHORTAGE and (probe is None or probe.sent_at == 0.0):
                # Out of descriptors, buffers or source ports: this says nothing about
                # the target, so try again shortly instead of guessing a state.
                if probe is not None:
                    probe.discard()
                self.agent.call_later(RETRY_SHORTAGE, functools.partial(self._start, index))
                return
            if probe is None:
                raise
            probe.classify(exc.errno or errno.EIO, None)
        if not probe.done:
            self.inflight.add(probe)

    def _start_tcp(self, index: int, family: int, sockaddr: Any) -> None:
        """Send the SYN; most of a sweep is answered by an RST before connect() returns,
        and those are recorded here without anything else (it is the hot path)."""
        sock = _socket.socket(family, socket.SOCK_STREAM | SOCK_NONBLOCK)
        try:
            sock.setsockopt(*RECVERR_OPTIONS[family])
            status = sock.connect_ex(sockaddr)
            if status in SHORTAGE:
                raise OSError(status, os.strerror(status))
        except BaseException:
            sock.close()
            raise
        sent = time.monotonic()
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if status else 0
        if status != errno.EINPROGRESS:
            error = status
        detail = _read_errqueue(sock) if error else None
        if error == errno.ECONNREFUSED and detail is None:
            sock.close()
            self.record(index, ("closed", "RST", 1, ("errno", "ECONNREFUSED")), sent)
            return
        probe = _Probe(self, index, "tcp", family, sockaddr[0])
        probe.adopt(sock, sent)
        if error:
            probe.classify(error, detail)
        elif status == 0:
            probe.classify(0, None)  # over a veth the handshake may finish inside connect()
        elif not probe.check_tcp():
            probe.wait_for(selectors.EVENT_WRITE)
        if not probe.done:
            self.inflight.add(probe)

    def record(self, index: int, key: tuple[Any, ...], sent_at: float) -> None:
        """Result `index` is the verdict `key` (state, reason, attempts, extra items)."""
        kind = self.kind_index.get(key)
        if kind is None:
            kind = self.kind_index[key] = len(self.kinds)
            state, reason, attempts, *extra = key
            self.kinds.append(
                {"state": state, "reason": reason, "attempts": attempts, **dict(extra)}
            )
        elapsed = time.monotonic() - sent_at if sent_at else 0.0
        self.results[index] = [kind, round(elapsed * 1e6)]
        self.finished += 1
        self.active -= 1
        if self.next < len(self.specs):
            self._schedule_fill()
        else:
            self._maybe_reply()

    def finish(self, probe: _Probe, state: str, reason: str, extra: dict[str, Any]) -> None:
        self.record(
            probe.index, (state, reason, probe.attempts, *sorted(extra.items())), probe.sent_at
        )

    def _maybe_reply(self) -> None:
        if self.replied or self.finished < len(self.specs):
            return
        self.replied = True
        self.inflight.cancel()
        seconds = time.monotonic() - self.started
        counts: dict[str, int] = {}
        for result in self.results:
            assert result is not None
            state = self.kinds[result[0]]["state"]
            counts[state] = counts.get(state, 0) + 1
        self.agent.log(
            f"probe: {counts} in {seconds:.3f} s (latest check {self.inflight.late:.3f} s late)"
        )
        self.agent.reply(
            self.rid,
            {
                "kinds": self.kinds,
                "results": self.results,
                "seconds": seconds,
                "late": self.inflight.late,
                "pid": self.agent.pid,
            },
        )


class _Probe:
    """One port of one target: a socket from its first packet until it is classified."""

    __slots__ = (
        "address",
        "attempts",
        "deadline",
        "done",
        "family",
        "index",
        "payload",
        "proto",
        "scan",
        "sent_at",
        "sock",
        "watched",
    )

    def __init__(self, scan: _Scan, index: int, proto: str, family: int, address: str) -> None:
        self.scan = scan
        self.address = address
        self.index = index
        self.proto = proto
        self.family = family
        self.sock: _socket.socket | None = None
        self.watched = False
        self.sent_at = 0.0
        self.deadline = 0.0
        self.attempts = 0
        self.done = False
        self.payload = PAYLOAD

    def start(self, sockaddr: Any) -> None:
        """A UDP probe: send the datagram and wait (TCP starts in `_Scan._start_tcp`)."""
        # The C socket, without socket.py's wrapper: a sweep makes 65535 of them.
        sock = _socket.socket(self.family, socket.SOCK_DGRAM | SOCK_NONBLOCK)
        self.sock = sock
        sock.setsockopt(*RECVERR_OPTIONS[self.family])
        self.attempts = 1
        sock.connect(sockaddr)  # no packet: it only fixes the peer and source
        self.payload = UDP_PAYLOADS.get(sockaddr[1], PAYLOAD)
        sock.send(self.payload)
        self._sent()
        self.wait_for(selectors.EVENT_READ)
        if not self.scan.ratelimited:  # a paced probe must not double the ICMP it draws
            self.scan.agent.call_later(self.scan.timeout / 2, self._resend)

    def _resend(self) -> None:
        """Halfway to the deadline without an answer: the datagram (or its echo) may have
        been dropped by a full buffer, so send it once more. The deadline stays."""
        if self.done or self.sock is None:
            return
        try:
            self.sock.send(self.payload)
        except BlockingIOError:
            return
        except OSError as exc:  # the first one's ICMP error, not yet read
            self.classify(exc.errno or errno.EIO, _read_errqueue(self.sock))
            return
        self.attempts += 1

    def adopt(self, sock: _socket.socket, sent_at: float) -> None:
        """Take over a TCP socket whose SYN left at `sent_at`."""
        self.sock = sock
        self.attempts = 1
        self.sent_at = sent_at
        self.deadline = sent_at + self.scan.timeout

    def wait_for(self, events: int) -> None:
        """In flight: the loop watches the socket, and closes it if the agent ends."""
        assert self.sock is not None
        agent = self.scan.agent
        agent.pending.add(self.sock)  # type: ignore[arg-type]  # closed at EOF
        agent.set_interest(self.sock.fileno(), events, self._on_event)
        self.watched = True

    def _sent(self) -> None:
        self.sent_at = time.monotonic()
        self.deadline = self.sent_at + self.scan.timeout

    # -- what the socket says ---------------------------------------------------------------

    def check_tcp(self) -> bool:
        """Classify from the socket's real state if it has one; True if it did."""
        assert self.sock is not None
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.classify(error, _read_errqueue(self.sock))
            return True
        info = self.sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)
        if info and info[0] == TCP_ESTABLISHED:
            self.classify(0, None)
            return True
        return False

    def _check_udp(self) -> bool:
        assert self.sock is not None
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        detail = _read_errqueue(self.sock)
        if error or detail is not None:
            self.classify(error or (detail or {}).get("errno", errno.EIO), detail)
            return True
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.classify(exc.errno or errno.EIO, _read_errqueue(self.sock))
            return True
        self._end("open", f"reply {len(data)} bytes", {})
        return True

    def _on_event(self, mask: int) -> None:
        if self.done:
            return
        if self.proto == "tcp":
            self.check_tcp()
        else:
            self._check_udp()

    def expire(self) -> None:
        """The deadline passed: ask the socket once more before calling it silence."""
        if self.proto == "tcp":
            if not self.check_tcp():
                self._end("filtered", f"timeout {self.scan.timeout:g} s", {})
            return
        if not self._check_udp():
            reason = f"timeout {self.scan.timeout:g} s"
            if self.scan.ratelimited:
                reason += f"; {SUPPRESSED}"
            self._end("open|filtered", reason, {})

    # -- verdicts -----------------------------------------------------------------------------

    def classify(self, code: int, detail: dict[str, Any] | None) -> None:
        if self.done:
            return
        if code == 0:
            self._end("open", "SYN-ACK", {})
            return
        extra: dict[str, Any] = {"errno": errno.errorcode.get(code, str(code))}
        if detail is not None and detail.get("icmp"):
            extra["icmp"] = detail["icmp"]
            extra["from"] = detail["from"]
            icmp = f"ICMP {detail['icmp']}" + (f" from {detail['from']}" if detail["from"] else "")
            state = "closed" if detail["icmp"] == "port-unreachable" else "filtered"
            if state == "closed" and detail["from"] not in (None, self.address):
                # As nmap has it: the port is closed only if the target itself says so;
                # the same answer from a router is a filter in the path.
                state = "filtered"
                icmp += " (not the target: a filter on the way)"
            self._end(state, icmp, extra)
            return
        if code == errno.ECONNREFUSED:
            self._end("closed", "RST" if self.proto == "tcp" else "ICMP port-unreachable", extra)
        elif code == errno.EPERM:
            self._end("filtered", "refused by the source's own firewall (EPERM)", extra)
        elif code in FILTERED_ERRNOS:
            self._end("filtered", f"{extra['errno']}: {os.strerror(code)}", extra)
        else:
            self._end("filtered", f"unexpected error {extra['errno']}: {os.strerror(code)}", extra)

    def discard(self) -> None:
        """Close the socket without a verdict (the probe is started again later)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def _end(self, state: str, reason: str, extra: dict[str, Any]) -> None:
        self.done = True
        sock, self.sock = self.sock, None
        if sock is not None:
            if self.watched:
                agent = self.scan.agent
                agent.set_interest(sock.fileno(), 0, self._on_event)
                agent.pending.discard(sock)
            if state == "open" and self.proto == "tcp":  # RST: no TIME_WAIT left behind
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self.scan.finish(self, state, reason, extra)


def _read_errqueue(sock: _socket.socket) -> dict[str, Any] | None:
    """The queued ICMP error of a socket with RECVERR: its errno, ICMP name and sender."""
    try:
        _data, ancdata, _flags, _addr = sock.recvmsg(256, 512, MSG_ERRQUEUE)
    except OSError:
        return None
    for level, kind, data in ancdata:
        if (level, kind) not in (
            (socket.IPPROTO_IP, IP_RECVERR),
            (socket.IPPROTO_IPV6, IPV6_RECVERR),
        ):
            continue
        if len(data) < 16:
            continue
        code_errno, origin, icmp_type, icmp_code = struct.unpack("IBBB", data[:7])
        name = None
        if origin == SO_EE_ORIGIN_ICMP and icmp_type == 3:
            name = ICMP4_UNREACH.get(icmp_code, f"unreachable code {icmp_code}")
        elif origin == SO_EE_ORIGIN_ICMP6 and icmp_type == 1:
            name = ICMP6_UNREACH.get(icmp_code, f"unreachable code {icmp_code}")
        elif origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
            name = f"type {icmp_type} code {icmp_code}"
        return {"errno": code_errno, "icmp": name, "from": _offender(data[16:])}
    return None


def _offender(raw: bytes) -> str | None:
    """The address in the sockaddr that follows a sock_extended_err (who sent the ICMP)."""
    if len(raw) >= 8 and struct.unpack("=H", raw[:2])[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if len(raw) >= 24 and struct.unpack("=H", raw[:2])[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None
