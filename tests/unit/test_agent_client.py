"""harness.core.agent: the async channel and the sync facade, against real agent processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.core._loop import LoopThread
from harness.core.agent import Agent, AgentChannel, AgentInfo, Echo, SocketInfo
from harness.errors import AgentError, AgentGone

REPO = Path(__file__).resolve().parents[2]
AGENT_ARGV = [sys.executable, "-m", "hostagent"]
LO = "127.0.0.1"
LO6 = "::1"


def fake_agent(body: str, version: int = 1) -> list[str]:
    """A process that greets like an agent (protocol `version`), then runs `body`."""
    hello = {"event": "hello", "agent": "netharness-hostagent", "version": version}
    code = (
        "import json, os, sys, time\n"
        f"hello = {hello!r}\n"
        "hello['pid'] = os.getpid()\n"
        "print(json.dumps(hello), flush=True)\n"
        f"{body}\n"
    )
    return [sys.executable, "-c", code]


# ---- the async channel --------------------------------------------------------------------


async def start_over_streams(
    argv: list[str], timeout: float = 5.0
) -> tuple[asyncio.subprocess.Process, AgentChannel]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        channel = await AgentChannel.start(proc.stdout, proc.stdin, timeout, label="test agent")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            proc.kill()
        await proc.wait()
        raise
    return proc, channel


async def start_over_pipes(argv: list[str]) -> tuple[asyncio.subprocess.Process, AgentChannel]:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=in_r, stdout=out_w, stderr=asyncio.subprocess.DEVNULL, cwd=REPO
        )
    finally:
        os.close(in_r)
        os.close(out_w)
    return proc, await AgentChannel.open_pipes(out_r, in_w)


def test_channel_requests_errors_and_events() -> None:
    async def main() -> None:
        proc, channel = await start_over_streams(AGENT_ARGV)
        assert channel.hello["pid"] == proc.pid
        assert await channel.request("ping") == {}
        listener = await channel.request("listen", proto="tcp", address=LO)
        with pytest.raises(AgentError) as refused:
            await channel.request("listen", proto="tcp", address=LO, port=listener["local"][1])
        assert type(refused.value) is AgentError
        assert refused.value.errno == "EADDRINUSE"
        assert refused.value.op == "listen"
        assert "EADDRINUSE" in str(refused.value)
        conn = await channel.request("connect", proto="tcp", address=LO, port=listener["local"][1])
        event = await channel.wait_event(lambda e: e.get("event") == "accepted", timeout=5)
        assert event["listener"] == listener["sock"]
        assert event["peer"] == conn["local"]
        with pytest.raises(AgentError) as nothing:  # the event was claimed by the first wait
            await channel.wait_event(lambda e: e.get("event") == "accepted", timeout=0.05)
        assert nothing.value.errno == "ETIMEDOUT"
        assert len(channel.events()) == 1
        with pytest.raises(AgentError) as unknown:
            await channel.request("frobnicate")
        assert unknown.value.errno is None
        assert "unknown-op" in str(unknown.value)
        assert unknown.value.kind == "unknown-op"
        await channel.aclose()
        assert await proc.wait() == 0
        assert channel.gone

    asyncio.run(main())


def test_concurrent_requests_are_matched_by_id() -> None:
    async def main() -> None:
        proc, channel = await start_over_pipes(AGENT_ARGV)
        udp = await channel.request("listen", proto="udp", address=LO, echo=False)
        slow = asyncio.ensure_future(channel.request("recv", sock=udp["sock"], timeout=0.3))
        pings = await asyncio.gather(*(channel.request("ping") for _ in range(20)))
        assert pings == [{}] * 20
        assert not slow.done()  # answered later, out of order
        with pytest.raises(AgentError) as timed_out:
            await slow
        assert timed_out.value.errno == "ETIMEDOUT"
        assert channel.pipe_fds[0] >= 0
        await channel.aclose()
        assert await proc.wait() == 0

    asyncio.run(main())


def test_pending_requests_fail_with_agent_gone_when_the_agent_is_killed() -> None:
    async def main() -> None:
        proc, channel = await start_over_pipes(AGENT_ARGV)
        udp = await channel.request("listen", proto="udp", address=LO, echo=False)
        pending = [
            asyncio.ensure_future(channel.request("recv", sock=udp["sock"], timeout=30))
            for _ in range(3)
        ]
        waiting = asyncio.ensure_future(channel.wait_event(lambda e: False, timeout=30))
        await asyncio.sleep(0.1)
        proc.kill()
        started = time.monotonic()
        results = await asyncio.gather(*pending, waiting, return_exceptions=True)
        assert time.monotonic() - started < 2
        assert all(isinstance(r, AgentGone) for r in results), results
        assert all(isinstance(r, AgentGone) and r.op == "recv" for r in results[:3])
        with pytest.raises(AgentGone):
            await channel.request("ping")
        assert channel.gone
        await channel.aclose()
        assert await proc.wait() == -signal.SIGKILL

    asyncio.run(main())


def test_protocol_version_mismatch_is_a_clear_error() -> None:
    async def main() -> None:
        with pytest.raises(AgentError) as mismatch:
            await start_over_streams(fake_agent("sys.stdin.read()", version=99))
        assert type(mismatch.value) is AgentError
        assert "protocol version 99" in str(mismatch.value)
        assert "version 1" in str(mismatch.value)

    asyncio.run(main())


def test_no_hello_in_time_names_what_was_printed() -> None:
    argv = [sys.executable, "-c", "print('welcome to the machine', flush=True); input()"]

    async def main() -> None:
        with pytest.raises(AgentError) as silent:
            await start_over_streams(argv, timeout=0.5)
        assert silent.value.errno == "ETIMEDOUT"
        assert "welcome to the machine" in str(silent.value)

    asyncio.run(main())


def test_exit_before_hello_is_agent_gone() -> None:
    async def main() -> None:
        with pytest.raises(AgentGone) as gone:
            await start_over_streams([sys.executable, "-c", "print('oops')"])
        assert "oops" in str(gone.value)

    asyncio.run(main())


def test_a_banner_before_the_hello_is_tolerated() -> None:
    code = (
        "print('Last login: never', flush=True); import runpy; "
        "runpy.run_module('hostagent', run_name='__main__')"
    )

    async def main() -> None:
        proc, channel = await start_over_streams([sys.executable, "-c", code])
        assert channel.hello["pid"] == proc.pid
        assert (await channel.request("info"))["pid"] == proc.pid
        await channel.aclose()
        assert await proc.wait() == 0

    asyncio.run(main())


def test_aclose_at_once_leaves_an_agent_whose_pipes_are_held_elsewhere() -> None:
    # What a detach does: someone else keeps the pipes, the channel lets go immediately.
    async def main() -> None:
        proc, channel = await start_over_pipes(AGENT_ARGV)
        held = [os.dup(fd) for fd in channel.pipe_fds]
        try:
            started = time.monotonic()
            await channel.aclose(timeout=0)
            assert time.monotonic() - started < 0.5
            assert channel.gone
            await asyncio.sleep(0.1)
            assert proc.returncode is None  # the agent did not see EOF: it still runs
        finally:
            for fd in held:
                os.close(fd)
        assert await asyncio.wait_for(proc.wait(), 5) == 0  # EOF now

    asyncio.run(main())


# ---- the synchronous facade ---------------------------------------------------------------


class PopenProcess:
    """A minimal `Process` around subprocess.Popen (what a backend would give back)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        while (code := self._popen.poll()) is None:
            await asyncio.sleep(0.005)
        return code

    def kill(self, signal: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(signal)


Spawn = Callable[..., Agent]


@pytest.fixture
def runner() -> Iterator[LoopThread]:
    with LoopThread("test-agent-loop") as loop:
        yield loop


@pytest.fixture
def spawn(runner: LoopThread) -> Iterator[Spawn]:
    made: list[tuple[Agent, subprocess.Popen[bytes]]] = []

    def start(host: str, argv: list[str] = AGENT_ARGV) -> Agent:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            popen = subprocess.Popen(
                argv, stdin=in_r, stdout=out_w, stderr=subprocess.DEVNULL, cwd=REPO
            )
        finally:
            os.close(in_r)
            os.close(out_w)
        channel = runner.run(AgentChannel.open_pipes(out_r, in_w))
        agent = Agent(channel, runner, host=host, process=PopenProcess(popen))
        made.append((agent, popen))
        return agent

    yield start
    for agent, popen in made:
        agent.close()
        popen.wait(5)


def test_the_product_example(spawn: Spawn) -> None:
    srv = spawn("h2")
    listener = srv.listen("tcp", port=0, address=LO)
    port = listener.port
    cli = spawn("h1")
    conn = cli.connect("tcp", LO, port)
    assert conn.local[0] == LO
    assert conn.peer == (LO, port)
    echo = conn.request("hello")
    assert isinstance(echo, Echo)
    assert echo.pid == srv.pid
    assert srv.pid != cli.pid
    assert echo.data == "hello"
    assert echo.local == conn.peer
    assert echo.peer == conn.local
    assert echo.rtt > 0
    accepted = listener.accept()
    assert accepted.id == echo.sock  # the very socket that answered
    assert accepted.peer == conn.local
    assert accepted.local == conn.peer
    rows = srv.sockets()
    assert all(isinstance(row, SocketInfo) for row in rows)
    assert [(r.id, r.kind, r.state) for r in rows] == [
        (listener.id, "listener", "listening"),
        (accepted.id, "stream", "connected"),
    ]
    assert rows[1].parent == listener.id
    assert rows[1].peer == conn.local
    assert [e["sock"] for e in srv.events("accepted")] == [accepted.id]
    assert "h2" in repr(srv)


def test_udp_identity_and_errors_through_the_facade(spawn: Spawn) -> None:
    srv = spawn("h2")
    cli = spawn("h1")
    server = srv.listen("udp", address=LO6)
    assert server.kind == "datagram"
    a = cli.connect("udp", LO6, server.port)
    b = cli.connect("udp", LO6, server.port)
    ea, eb = a.request("a"), b.request("b")
    assert ea.sock == eb.sock == server.id
    assert ea.pid == eb.pid == srv.pid
    assert (ea.peer, eb.peer) == (a.local, b.local)
    assert ea.peer != eb.peer
    gram = srv.wait_event("datagram", lambda e: e["peer"] == [b.local[0], b.local[1]])
    assert gram["size"] == 1

    with pytest.raises(AgentError) as in_use:
        srv.listen("udp", server.port, LO6)
    assert in_use.value.errno == "EADDRINUSE"
    assert in_use.value.op == "listen"
    assert "h2" in str(in_use.value)
    with pytest.raises(AgentError) as refused:
        cli.connect("tcp", LO, closed_port())
    assert refused.value.errno == "ECONNREFUSED"
    with pytest.raises(AgentError) as no_event:
        srv.wait_event("accepted", timeout=0.05)
    assert no_event.value.errno == "ETIMEDOUT"


def test_send_recv_and_info_through_the_facade(spawn: Spawn) -> None:
    agent = spawn("h1")
    quiet = agent.listen("udp", address=LO, echo=False)
    sender = agent.connect("udp", LO, quiet.port)
    assert sender.send(b"\xff\x00raw") == 5
    assert quiet.recv_from() == (b"\xff\x00raw", sender.local)
    assert sender.send("text") == 4
    assert quiet.recv() == b"text"
    with pytest.raises(AgentError) as timed_out:
        quiet.recv(timeout=0.05)
    assert timed_out.value.errno == "ETIMEDOUT"
    echo = agent.listen("udp", address=LO)
    quiet.send("to the echo", to=echo.local)
    reply = json.loads(quiet.recv())
    assert (reply["sock"], reply["data"]) == (echo.id, "to the echo")
    info = agent.info()
    assert isinstance(info, AgentInfo)
    assert (info.pid, info.uid, info.sockets) == (agent.pid, os.getuid(), 3)
    assert info.ip_local_port_range is not None
    assert info.ip_local_port_range[0] <= info.ip_local_port_range[1]
    sender.close()
    assert [row.id for row in agent.sockets()] == [quiet.id, echo.id]
    assert agent.request("ping") == {}


def test_tcp_close_linger0_and_eof_through_the_facade(spawn: Spawn) -> None:
    agent = spawn("h1")
    listener = agent.listen("tcp", address=LO, echo=False)
    first = agent.connect("tcp", LO, listener.port)
    served = listener.accept()
    first.send("bye")
    assert served.recv() == b"bye"
    first.close()
    assert served.recv() == b""  # EOF
    second = agent.connect("tcp", LO, listener.port)
    served2 = listener.accept()
    second.close(linger0=True)
    with pytest.raises(AgentError) as reset:
        served2.recv()
    assert reset.value.errno == "ECONNRESET"


def test_a_request_in_flight_fails_when_the_agent_dies(spawn: Spawn) -> None:
    agent = spawn("h1")
    quiet = agent.listen("udp", address=LO, echo=False)
    killer = threading.Timer(0.2, agent.process.kill, args=(signal.SIGKILL,))
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(AgentGone):
            quiet.recv(timeout=30)
    finally:
        killer.join()
    assert time.monotonic() - started < 3
    with pytest.raises(AgentGone):
        agent.info()


def test_close_waits_for_exit_and_is_idempotent(spawn: Spawn) -> None:
    agent = spawn("h1")
    agent.listen("tcp", address=LO)
    with agent:
        pass
    assert isinstance(agent.process, PopenProcess)
    assert agent.process.returncode == 0
    agent.close()  # again: nothing happens
    with pytest.raises(AgentGone):
        agent.request("ping")


def test_close_kills_an_agent_that_ignores_eof(spawn: Spawn) -> None:
    stuck = spawn("h1", fake_agent("time.sleep(30)"))
    started = time.monotonic()
    stuck.close(timeout=0.3)
    assert time.monotonic() - started < 3
    assert isinstance(stuck.process, PopenProcess)
    assert stuck.process.returncode == -signal.SIGKILL


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((LO, 0))
        port: int = probe.getsockname()[1]
    return port
