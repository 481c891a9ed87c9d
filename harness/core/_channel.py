"""The async core of the controller's side of the agent protocol (docs/protocol.md):
`AgentChannel` reads the hello, numbers requests, matches replies by id, keeps events, and
fails every pending request with `AgentGone` when the agent's output closes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from harness.errors import AgentError, AgentGone
from hostagent.protocol import AGENT_NAME, PROTOCOL_VERSION

if TYPE_CHECKING:
    pass


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
