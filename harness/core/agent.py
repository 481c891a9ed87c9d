"""The controller side of the host agent protocol (docs/protocol.md).

`AgentChannel` is the async core: it reads the agent's hello, numbers requests, matches
replies to them by id, keeps the agent's unsolicited events, and fails every pending
request with `AgentGone` the moment the agent's output closes. `Agent` is the synchronous
facade tests and users hold; it runs the channel on the lab's `LoopThread`.

    srv = lab.hosts["h2"].agent(); port = srv.listen("tcp").port
    conn = lab.hosts["h1"].agent().connect("tcp", "10.0.1.12", port)
    assert conn.request("hello").pid == srv.pid
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from harness.errors import AgentError, AgentGone
from hostagent.protocol import AGENT_NAME, PROTOCOL_VERSION

if TYPE_CHECKING:
    from harness.core._loop import LoopThread

__all__ = [
    "Agent",
    "AgentChannel",
    "AgentInfo",
    "AgentProcess",
    "AgentWriter",
    "Echo",
    "Endpoint",
    "Socket",
    "SocketInfo",
]

log = logging.getLogger("netharness.agent")

Endpoint = tuple[str, int]
Event = dict[str, Any]
T = TypeVar("T")

LINE_LIMIT = 64 << 20  # the longest line accepted from an agent
MAX_PREAMBLE = 64  # non-protocol lines tolerated before the hello (login banners, motd)
REPLY_MARGIN = 30.0  # seconds an agent gets beyond an op's own timeout before we give up


class AgentWriter(Protocol):
    """Where requests go: the agent's stdin (an `asyncio.StreamWriter` qualifies)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class AgentProcess(Protocol):
    """The part of `harness.backends.base.Process` the facade needs."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self, signal: int) -> None: ...


class _DrainProtocol(asyncio.BaseProtocol):
    """Flow control for a write pipe: `drain()` waits while the pipe is full."""

    def __init__(self) -> None:
        self._paused = False
        self._lost: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or BrokenPipeError("the agent's stdin is closed")
        self._wake(self._lost)

    def _wake(self, exc: BaseException | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.done():
                continue
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def drain(self) -> None:
        if self._lost is not None:
            raise self._lost
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class _PipeWriter:
    def __init__(self, transport: asyncio.WriteTransport, protocol: _DrainProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise BrokenPipeError("the agent's stdin is closed")
        self._transport.write(data)

    async def drain(self) -> None:
        await self._protocol.drain()

    def close(self) -> None:
        self._transport.close()


class AgentChannel:
    """One agent's pipes, as an async request/reply channel with an event log."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: AgentWriter,
        *,
        label: str = "agent",
        read_transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.label = label
        self.hello: dict[str, Any] = {}
        self.stray: list[dict[str, Any]] = []  # error replies to frames without an id
        self._reader = reader
        self._writer = writer
        self._read_transport = read_transport
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._events: list[Event] = []
        self._claimed: set[int] = set()
        self._first_unclaimed = 0
        self._event_waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._task: asyncio.Task[None] | None = None
        self._gone_reason: str | None = None
        self._pipe_fds: tuple[int, int] | None = None

    # ---- opening --------------------------------------------------------------------------

    @classmethod
    async def open_pipes(
        cls, read_fd: int, write_fd: int, *, timeout: float = 5.0, label: str = "agent"
    ) -> AgentChannel:
        """Take ownership of the agent's stdout (`read_fd`) and stdin (`write_fd`) pipe ends."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
        rfile = os.fdopen(read_fd, "rb", buffering=0)
        wfile = os.fdopen(write_fd, "wb", buffering=0)
        rtransport: asyncio.BaseTransport | None = None
        wtransport: asyncio.WriteTransport | None = None
        try:
            rtransport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), rfile
            )
            wtransport, wprotocol = await loop.connect_write_pipe(_DrainProtocol, wfile)
            writer = _PipeWriter(wtransport, wprotocol)
        except BaseException:
            for transport, file in ((rtransport, rfile), (wtransport, wfile)):
                if transport is not None:
                    transport.close()
                else:
                    file.close()
            raise
        channel = await cls.start(reader, writer, timeout, label=label, read_transport=rtransport)
        channel._pipe_fds = (read_fd, write_fd)
        return channel

    @classmethod
    async def start(
        cls,
        reader: asyncio.StreamReader,
        writer: AgentWriter,
        timeout: float = 5.0,
        *,
        label: str = "agent",
        read_transport: asyncio.BaseTransport | None = None,
    ) -> AgentChannel:
        """Wait for the agent's hello on `reader`, then start reading replies and events."""
        channel = cls(reader, writer, label=label, read_transport=read_transport)
        try:
            channel.hello = await channel._read_hello(timeout)
        except BaseException:
            channel._close_transports()
            raise
        channel._task = asyncio.create_task(channel._read_loop(), name=f"{label} reader")
        return channel

    async def _read_hello(self, timeout: float) -> dict[str, Any]:
        noise: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self._reader.readline()
                    if not line:
                        raise AgentGone(
                            f"{self.label}: the agent exited before its hello"
                            + _quoted_noise(noise),
                            op="hello",
                        )
                    hello = _json_object(line)
                    if hello is not None and hello.get("event") == "hello":
                        return self._check_hello(hello)
                    noise.append(line.decode("utf-8", "replace").rstrip()[:200])
                    if len(noise) > MAX_PREAMBLE:
                        raise AgentError(
                            f"{self.label}: not a netharness agent (no hello in its first "
                            f"{MAX_PREAMBLE} lines)" + _quoted_noise(noise),
                            op="hello",
                        )
        except TimeoutError:
            raise AgentError(
                f"{self.label}: no hello from the agent within {timeout:g} s"
                + _quoted_noise(noise),
                errno="ETIMEDOUT",
                op="hello",
            ) from None
        except ValueError as exc:  # a line over LINE_LIMIT
            raise AgentError(f"{self.label}: garbled agent output: {exc}", op="hello") from None

    def _check_hello(self, hello: dict[str, Any]) -> dict[str, Any]:
        if hello.get("agent") != AGENT_NAME:
            raise AgentError(
                f"{self.label}: the process greeted as {hello.get('agent')!r}, not {AGENT_NAME!r}",
                op="hello",
            )
        if hello.get("version") != PROTOCOL_VERSION:
            raise AgentError(
                f"{self.label}: the agent speaks protocol version {hello.get('version')!r} "
                f"but this controller speaks version {PROTOCOL_VERSION}; deliver the agent "
                "from this netharness installation (hostagent.build_zipapp)",
                op="hello",
            )
        return hello

    # ---- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "its output closed (the agent exited)"
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except ValueError as exc:  # over LINE_LIMIT: skipped, the rest still flows
                    log.warning("%s: dropped an over-long line: %s", self.label, exc)
                    continue
                if not line:
                    break
                self._dispatch(line)
        except (ConnectionError, OSError) as exc:
            reason = f"reading its output failed: {exc}"
        finally:
            self._mark_gone(reason)

    def _dispatch(self, line: bytes) -> None:
        frame = _json_object(line)
        if frame is None:
            log.warning("%s: not a protocol frame: %r", self.label, line[:200])
            return
        if "id" not in frame:
            if "event" in frame:
                self._on_event(frame)
            else:
                log.warning("%s: frame without id or event: %r", self.label, line[:200])
            return
        rid = frame["id"]
        if rid is None:
            self.stray.append(frame)
            log.warning("%s: error reply to an unreadable frame: %s", self.label, frame)
            return
        pending = self._pending.get(rid) if isinstance(rid, int) else None
        if pending is None:
            log.debug("%s: reply to a request nobody waits for: %s", self.label, rid)
            return
        future = pending[1]
        if not future.done():
            future.set_result(frame)

    def _on_event(self, event: Event) -> None:
        index = len(self._events)
        self._events.append(event)
        for waiter in list(self._event_waiters):
            predicate, future = waiter
            if future.done():
                continue
            try:
                matched = predicate(event)
            except Exception as exc:
                future.set_exception(exc)
                continue
            if matched:
                self._claimed.add(index)
                future.set_result(event)
                return

    def _mark_gone(self, reason: str) -> None:
        if self._gone_reason is not None:
            return
        self._gone_reason = reason
        for op, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(
                    AgentGone(f"{self.label}: agent gone before answering {op}: {reason}", op=op)
                )
        for _predicate, future in self._event_waiters:
            if not future.done():
                future.set_exception(
                    AgentGone(f"{self.label}: agent gone while waiting for an event: {reason}")
                )

    # ---- requests and events --------------------------------------------------------------

    @property
    def pipe_fds(self) -> tuple[int, int]:
        """(agent stdout read end, agent stdin write end) of a channel made by `open_pipes`.

        Still owned by the channel: whoever takes them over (the fork server on detach)
        dups them, then calls `aclose(timeout=0)`.
        """
        if self._pipe_fds is None:
            raise RuntimeError(f"{self.label}: this channel was not opened on pipes")
        return self._pipe_fds

    @property
    def gone(self) -> bool:
        """True once the agent's output has closed (or the channel was closed)."""
        return self._gone_reason is not None

    async def request(self, op: str, /, **args: Any) -> dict[str, Any]:
        """Send one request and return its result; AgentError if refused, AgentGone if dead."""
        if "id" in args or "op" in args:
            raise ValueError("'id' and 'op' are the protocol's, not arguments")
        if self._gone_reason is not None:
            raise AgentGone(f"{self.label}: cannot {op}: agent gone: {self._gone_reason}", op=op)
        rid = next(self._ids)
        frame = json.dumps({"id": rid, "op": op, **args}, separators=(",", ":")).encode() + b"\n"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (op, future)
        try:
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError, RuntimeError) as exc:
                raise AgentGone(f"{self.label}: cannot send {op}: {exc}", op=op) from exc
            reply = await future
        finally:
            self._pending.pop(rid, None)
        if reply.get("ok") is True:
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        raise _error_from_reply(self.label, op, reply.get("error"))

    def events(self) -> list[Event]:
        """Every event received so far, oldest first (claimed or not)."""
        return list(self._events)

    async def wait_event(
        self, predicate: Callable[[Event], bool], timeout: float | None = 5.0
    ) -> Event:
        """The oldest event matching `predicate` not yet returned by a `wait_event`.

        Events that arrived before the call count, so there is no race with the request
        that caused them.
        """
        for index in range(self._first_unclaimed, len(self._events)):
            if index in self._claimed:
                if index == self._first_unclaimed:
                    self._first_unclaimed += 1
                continue
            event = self._events[index]
            if predicate(event):
                self._claimed.add(index)
                return event
        if self._gone_reason is not None:
            raise AgentGone(f"{self.label}: agent gone: {self._gone_reason}")
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._event_waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AgentError(
                f"{self.label}: no matching event within {timeout:g} s",
                errno="ETIMEDOUT",
                op="wait_event",
            ) from None
        finally:
            self._event_waiters.remove(waiter)

    # ---- closing ----------------------------------------------------------------------------

    def close_input(self) -> None:
        """Close the agent's stdin: an agent that reads EOF closes its sockets and exits."""
        with contextlib.suppress(Exception):
            self._writer.close()

    async def aclose(self, timeout: float = 2.0) -> None:
        """Close stdin, wait up to `timeout` for the agent's output to end, then drop it."""
        self.close_input()
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                self._close_transports()
                await asyncio.wait({task}, timeout=1.0)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._close_transports()
        self._mark_gone("the channel was closed")

    def _close_transports(self) -> None:
        self.close_input()
        if self._read_transport is not None:
            self._read_transport.close()


# ---- the synchronous facade ---------------------------------------------------------------


@dataclass(frozen=True)
class Echo:
    """An echo reply: which process (`pid`) and socket (`sock`) answered, as it saw the flow."""

    pid: int
    sock: int
    local: Endpoint
    peer: Endpoint
    data: str
    rtt: float


@dataclass(frozen=True)
class SocketInfo:
    """One row of the `sockets` op."""

    id: int
    proto: str
    family: int
    kind: str  # listener | stream | datagram
    local: Endpoint
    peer: Endpoint | None
    state: str  # listening | connected | bound | closed
    echo: bool = False
    parent: int | None = None  # the listener an accepted socket came from
    eof: bool = False


@dataclass(frozen=True)
class AgentInfo:
    """The `info` op: who the agent is and the host's port settings."""

    pid: int
    uid: int
    hostname: str
    python: str
    version: int
    ip_local_port_range: tuple[int, int] | None
    ip_unprivileged_port_start: int | None
    sockets: int
    netns: str | None


@dataclass(frozen=True)
class Socket:
    """A socket held by an agent; its methods act through that agent."""

    id: int
    proto: str
    kind: str
    local: Endpoint
    peer: Endpoint | None
    agent: Agent = field(repr=False, compare=False)

    @property
    def port(self) -> int:
        return self.local[1]

    def send(self, data: str | bytes, to: Endpoint | None = None) -> int:
        """Send `data` (to `to`, for an unconnected UDP socket); returns the bytes sent."""
        args: dict[str, Any] = {"sock": self.id}
        if isinstance(data, bytes):
            args["data_b64"] = base64.b64encode(data).decode("ascii")
        else:
            args["data"] = data
        if to is not None:
            args["to"] = [to[0], to[1]]
        return int(self.agent.request("send", **args)["sent"])

    def recv_from(self, timeout: float = 5.0, limit: int = 65536) -> tuple[bytes, Endpoint | None]:
        """The next data (a datagram, or up to `limit` stream bytes) and who sent it.

        b"" means the peer closed a TCP connection; a timeout is AgentError(ETIMEDOUT).
        """
        result = self.agent.request("recv", sock=self.id, timeout=timeout, max=limit)
        peer = result.get("peer")
        return _payload(result), _endpoint(peer) if peer else None

    def recv(self, timeout: float = 5.0, limit: int = 65536) -> bytes:
        return self.recv_from(timeout, limit)[0]

    def request(self, data: str, timeout: float = 5.0) -> Echo:
        """Send `data` and wait for the echo server's identity reply."""
        result = self.agent.request("request", sock=self.id, data=data, timeout=timeout)
        reply = result.get("reply")
        try:
            assert isinstance(reply, dict)
            return Echo(
                pid=int(reply["pid"]),
                sock=int(reply["sock"]),
                local=_endpoint(reply["local"]),
                peer=_endpoint(reply["peer"]),
                data=str(reply["data"]),
                rtt=float(result["rtt"]),
            )
        except (AssertionError, KeyError, TypeError, ValueError):
            raise AgentError(
                f"{self.agent.label}: sock {self.id}: the reply is not an echo: {reply!r}",
                op="request",
            ) from None

    def accept(self, timeout: float = 5.0) -> Socket:
        """The next connection this listener accepted (from its `accepted` events)."""
        event = self.agent.wait_event(
            "accepted", lambda e: e.get("listener") == self.id, timeout=timeout
        )
        return Socket(
            id=int(event["sock"]),
            proto=self.proto,
            kind="stream",
            local=_endpoint(event["local"]),
            peer=_endpoint(event["peer"]),
            agent=self.agent,
        )

    def close(self, linger0: bool = False) -> None:
        """Close (with an RST instead of a FIN when `linger0`); the id is never reused."""
        self.agent.request("close", sock=self.id, linger0=linger0)


class Agent:
    """A running host agent, driven synchronously from any thread but the loop's."""

    def __init__(
        self,
        channel: AgentChannel,
        runner: LoopThread,
        *,
        host: str,
        process: AgentProcess,
        reply_margin: float = REPLY_MARGIN,
    ) -> None:
        self._channel = channel
        self._runner = runner
        self._host = host
        self._process = process
        self._reply_margin = reply_margin
        self._closed = False
        channel.label = f"agent {self.pid} on {host}"

    @property
    def pid(self) -> int:
        """The agent's pid as it sees itself (the pid echo replies carry)."""
        return int(self._channel.hello["pid"])

    @property
    def host(self) -> str:
        return self._host

    @property
    def label(self) -> str:
        return self._channel.label

    @property
    def hello(self) -> dict[str, Any]:
        return dict(self._channel.hello)

    @property
    def channel(self) -> AgentChannel:
        return self._channel

    @property
    def process(self) -> AgentProcess:
        return self._process

    def __repr__(self) -> str:
        return f"<Agent pid={self.pid} host={self._host!r}{' closed' if self._closed else ''}>"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def request(self, op: str, /, **args: Any) -> dict[str, Any]:
        """Send any op (the escape hatch) and return its result dict."""
        budget = self._reply_margin
        if isinstance(args.get("timeout"), (int, float)):
            budget += float(args["timeout"])
        return self._run(self._request(op, args, budget))

    def request_within(self, op: str, seconds: float, /, **args: Any) -> dict[str, Any]:
        """`request` for an op whose run time is not its `timeout` (a long probe sweep):
        the reply may take `seconds` plus the usual margin."""
        return self._run(self._request(op, args, self._reply_margin + seconds))

    async def _request(self, op: str, args: dict[str, Any], budget: float) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._channel.request(op, **args), budget)
        except TimeoutError:
            raise AgentError(
                f"{self.label}: no reply to {op} within {budget:g} s (is the agent stuck?)",
                errno="ETIMEDOUT",
                op=op,
            ) from None

    def info(self) -> AgentInfo:
        raw = self.request("info")
        port_range = raw.get("ip_local_port_range")
        return AgentInfo(
            pid=int(raw["pid"]),
            uid=int(raw["uid"]),
            hostname=str(raw["hostname"]),
            python=str(raw["python"]),
            version=int(raw["version"]),
            ip_local_port_range=(int(port_range[0]), int(port_range[1])) if port_range else None,
            ip_unprivileged_port_start=raw.get("ip_unprivileged_port_start"),
            sockets=int(raw["sockets"]),
            netns=raw.get("netns"),
        )

    def listen(
        self,
        proto: str,
        port: int = 0,
        address: str | None = None,
        *,
        backlog: int = 128,
        reuseaddr: bool = False,
        reuseport: bool = False,
        v6only: bool | None = None,
        echo: bool = True,
    ) -> Socket:
        """A TCP listener (accepting by itself) or a bound UDP socket; echoes by default."""
        result = self.request(
            "listen",
            proto=proto,
            address=address or "0.0.0.0",
            port=port,
            backlog=backlog,
            reuseaddr=reuseaddr,
            reuseport=reuseport,
            v6only=v6only,
            echo=echo,
        )
        kind = "listener" if proto == "tcp" else "datagram"
        return Socket(int(result["sock"]), proto, kind, _endpoint(result["local"]), None, self)

    def connect(
        self,
        proto: str,
        address: str,
        port: int,
        *,
        source: str | None = None,
        sport: int = 0,
        timeout: float = 5.0,
        reuseaddr: bool = False,
    ) -> Socket:
        """A connected TCP or UDP client socket; errors carry the errno name."""
        result = self.request(
            "connect",
            proto=proto,
            address=address,
            port=port,
            source=source,
            sport=sport,
            timeout=timeout,
            reuseaddr=reuseaddr,
        )
        kind = "stream" if proto == "tcp" else "datagram"
        return Socket(
            int(result["sock"]),
            proto,
            kind,
            _endpoint(result["local"]),
            _endpoint(result["peer"]),
            self,
        )

    def sockets(self) -> list[SocketInfo]:
        rows = self.request("sockets")["sockets"]
        return [
            SocketInfo(
                id=int(row["sock"]),
                proto=str(row["proto"]),
                family=int(row["family"]),
                kind=str(row["kind"]),
                local=_endpoint(row["local"]),
                peer=_endpoint(row["peer"]) if row.get("peer") else None,
                state=str(row["state"]),
                echo=bool(row.get("echo", False)),
                parent=row.get("parent"),
                eof=bool(row.get("eof", False)),
            )
            for row in rows
        ]

    def events(self, kind: str | None = None) -> list[Event]:
        """Events received so far (`accepted`, `datagram`, `closed`), optionally one kind."""
        events = self._channel.events()
        return [e for e in events if kind is None or e.get("event") == kind]

    def wait_event(
        self,
        kind: str,
        predicate: Callable[[Event], bool] | None = None,
        timeout: float = 5.0,
    ) -> Event:
        """The oldest unclaimed `kind` event matching `predicate` (waiting up to `timeout`)."""

        def match(event: Event) -> bool:
            return event.get("event") == kind and (predicate is None or predicate(event))

        return self._run(self._channel.wait_event(match, timeout))

    def close(self, timeout: float = 2.0) -> None:
        """Close stdin and wait for the agent to exit; SIGKILL it after `timeout`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.loop  # noqa: B018 - raises once the lab's loop has stopped
        except RuntimeError:
            return  # the lab is gone, and it took its agents with it
        self._run(self._shutdown(timeout))

    async def _shutdown(self, timeout: float) -> None:
        self._channel.close_input()
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            log.warning("%s: did not exit within %g s of EOF; killing it", self.label, timeout)
            self._process.kill(signal.SIGKILL)
            try:
                await asyncio.wait_for(self._process.wait(), 5.0)
            except TimeoutError:
                log.error("%s: still alive after SIGKILL", self.label)
        await self._channel.aclose(timeout=1.0)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _endpoint(value: Any) -> Endpoint:
    return (str(value[0]), int(value[1]))


def _payload(result: dict[str, Any]) -> bytes:
    if "data_b64" in result:
        return base64.b64decode(result["data_b64"])
    return str(result.get("data", "")).encode("utf-8")


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _quoted_noise(noise: list[str]) -> str:
    if not noise:
        return ""
    shown = "\n  ".join(noise[-5:])
    return f"; it printed:\n  {shown}"


def _error_from_reply(label: str, op: str, error: Any) -> AgentError:
    if not isinstance(error, dict):
        return AgentError(f"{label}: {op} failed with a malformed error: {error!r}", op=op)
    name = error.get("errno")
    kind = error.get("kind")
    message = str(error.get("message", "unknown error"))
    suffix = f" [{name}]" if name else f" [{kind}]" if kind else ""
    return AgentError(
        f"{label}: {op} failed: {message}{suffix}",
        errno=name if isinstance(name, str) else None,
        op=op,
        kind=kind if isinstance(kind, str) else None,
    )
