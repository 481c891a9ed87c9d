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
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.core._channel import (
    REPLY_MARGIN,
    AgentChannel,
    AgentProcess,
    AgentWriter,
    Endpoint,
    Event,
    T,
    log,
)
from harness.errors import AgentError

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

    def listen(  # noqa: PLR0913 - the listen op's options, keyword-only
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
        events: bool = True,
    ) -> Socket:
        """A TCP listener (accepting by itself) or a bound UDP socket; echoes by default.
        `events=False`: no `accepted` event per connection (`accept` then waits in vain;
        `sockets()` lists the accepted ones with this listener as their `parent`)."""
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
            events=events,
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
