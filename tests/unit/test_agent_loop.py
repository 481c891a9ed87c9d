"""The agent's event loop: what a timer callback writes reaches the controller."""

from __future__ import annotations

import json
import os
import select
import threading

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
