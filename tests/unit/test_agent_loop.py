"""The agent's event loop: what a timer callback writes reaches the controller."""

from __future__ import annotations

import gc
import json
import os
import select
import socket
import threading
import time
from pathlib import Path

from hostagent.agent import HostAgent


def test_a_reply_made_by_a_timer_is_written_before_the_loop_waits() -> None:
    # A probe's last deadline answers the request from a timer. With no other timer
    # left, the loop must not wait for input with that answer still in its buffer.
    to_agent, agent_in = os.pipe()
    agent_out, from_agent = os.pipe()
    agent = HostAgent(to_agent, from_agent)
    agent.call_later(0, lambda: agent.reply(7, {"answered": "by a timer"}))
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()
    try:
        lines: list[dict[str, object]] = []
        buffered = b""
        while len(lines) < 2:
            ready, _, _ = select.select([agent_out], [], [], 5.0)
            assert ready, f"the agent wrote only {lines} and then waited"
            buffered += os.read(agent_out, 65536)
            *complete, buffered = buffered.split(b"\n")
            lines += [json.loads(line) for line in complete]
        assert lines[0]["event"] == "hello"
        assert lines[1] == {"id": 7, "ok": True, "result": {"answered": "by a timer"}}
    finally:
        os.close(agent_in)  # EOF: the agent's loop ends
        loop.join(5)
        for fd in (to_agent, agent_out, from_agent):
            os.close(fd)
    assert not loop.is_alive()


def test_requests_from_a_regular_file_are_answered_with_poll(tmp_path: Path) -> None:
    # epoll refuses a regular file: the agent then polls its stdin with poll(2), and a
    # listener it opens meanwhile is served by that poller too.
    requests = tmp_path / "requests"
    lines = [
        {"id": 1, "op": "listen", "proto": "tcp", "address": "127.0.0.1"},
        {"id": 2, "op": "ping"},
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    agent_out, from_agent = os.pipe()
    with requests.open("rb") as stdin:
        agent = HostAgent(stdin.fileno(), from_agent)
        loop = threading.Thread(target=agent.run, daemon=True)
        loop.start()
        loop.join(5)
    assert not loop.is_alive(), "the agent did not reach the end of its input"
    kind = agent.selector.kind
    agent.shutdown()  # what serve() does after the loop: closes the listener
    os.close(from_agent)
    with os.fdopen(agent_out, "rb") as out:
        frames = [json.loads(line) for line in out.read().splitlines()]
    assert frames[0]["event"] == "hello"
    replies = {frame["id"]: frame for frame in frames[1:]}
    assert replies[1]["ok"] is True
    assert replies[1]["result"]["local"][0] == "127.0.0.1"
    assert replies[2] == {"id": 2, "ok": True, "result": {}}
    assert kind == "poll"


def test_connect_many_answers_before_the_collector_resumes() -> None:
    # The collector is paused while connect_many runs and resumes only once its answer
    # has been written: here the answer is held up (nobody reads yet), so it stays paused.
    to_agent, agent_in = os.pipe()
    agent_out, from_agent = os.pipe()
    agent = HostAgent(to_agent, from_agent)
    with socket.create_server(("127.0.0.1", 0), backlog=2048) as server:
        port = server.getsockname()[1]
        # larger than the pipe's buffer: the answer cannot leave at once
        request = {"id": 1, "op": "connect_many", "proto": "tcp", "address": "127.0.0.1"}
        os.write(agent_in, json.dumps({**request, "port": port, "count": 1500}).encode() + b"\n")
        assert gc.isenabled()
        loop = threading.Thread(target=agent.run, daemon=True)
        loop.start()
        try:
            deadline = time.monotonic() + 10
            while not agent.pending_output() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            assert agent.pending_output(), "the answer was never made"
            assert not gc.isenabled()  # answered, not yet written: still paused
            buffered = b""
            while b'"id":1' not in buffered or not buffered.endswith(b"\n"):
                ready, _, _ = select.select([agent_out], [], [], 5.0)
                assert ready, "the answer stopped halfway"
                buffered += os.read(agent_out, 1 << 20)
            reply = json.loads(buffered.splitlines()[-1])
            assert reply["result"]["connected"] == 1500
            deadline = time.monotonic() + 5
            while not gc.isenabled() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert gc.isenabled()  # written: resumed
        finally:
            os.close(agent_in)
            loop.join(5)
            agent.shutdown()
            for fd in (to_agent, agent_out, from_agent):
                os.close(fd)
    assert not loop.is_alive()
