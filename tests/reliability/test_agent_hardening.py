"""Guarantee 6: the agent survives any frame, opens nothing of its own, dies with its owner."""

from __future__ import annotations

import json
import os
import random
import select
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability.support import cycles
from tests.unit.test_hostagent_protocol import RawAgent

OPS = ["info", "listen", "connect", "send", "recv", "request", "close", "sockets", "ping", "x"]
VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    65536,
    2**70,
    1.5,
    "",
    "tcp",
    "udp",
    "::",
    "0.0.0.0",
    "127.0.0.1",
    "10.255.255.1",
    "nonsense",
    [],
    [1, 2],
    {},
    {"a": 1},
    "é" * 100,
    "x" * 5000,
]
KEYS = [
    "proto",
    "address",
    "port",
    "sock",
    "data",
    "timeout",
    "backlog",
    "reuseport",
    "reuseaddr",
    "v6only",
    "echo",
    "source",
    "sport",
    "to",
    "max",
    "linger0",
    "zzz",
]


def garbage(rng: random.Random, next_id: int) -> tuple[bytes, object | None]:
    """One frame the agent must survive, and the id a reply must carry (if any)."""
    kind = rng.randrange(7)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(
            b"\n", b""
        ) + b"\n", None
    if kind == 1:
        return json.dumps(rng.choice(VALUES)).encode() + b"\n", None
    if kind == 2:
        return b"{" * rng.randrange(1, 5000) + b"\n", None
    if kind == 3:  # out of order: a reply-shaped frame, an event-shaped frame
        return json.dumps({"id": next_id, "ok": True, "result": {}}).encode() + b"\n", next_id
    if kind == 4:
        return json.dumps({"event": "hello", "version": 99}).encode() + b"\n", None
    args = {rng.choice(KEYS): rng.choice(VALUES) for _ in range(rng.randrange(4))}
    request: dict[str, Any] = {"id": next_id, "op": rng.choice(OPS), **args}
    if args.get("timeout") not in (None, 0, -1) or request["op"] in ("recv", "request"):
        request["timeout"] = 0.01  # keep deferred ops short
    return json.dumps(request).encode() + b"\n", next_id


@pytest.fixture
def agent() -> Iterator[RawAgent]:
    raw = RawAgent()
    try:
        yield raw
    finally:
        raw.close()


class Replies:
    """Reads whatever the agent has written so far, without ever blocking it."""

    def __init__(self, agent: RawAgent) -> None:
        assert agent.proc.stdout is not None
        self.fd = agent.proc.stdout.fileno()
        self.buf = b""
        self.ids: list[object] = []

    def drain(self, wait: float = 0.0) -> None:
        while select.select([self.fd], [], [], wait)[0]:
            chunk = os.read(self.fd, 1 << 20)
            assert chunk, "the agent exited"
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                frame = json.loads(line)  # every line it writes is a JSON object
                assert isinstance(frame, dict)
                if "id" in frame:
                    self.ids.append(frame["id"])
            wait = 0.0


def test_thousands_of_malformed_and_random_frames(agent: RawAgent) -> None:
    rng = random.Random(7)
    replies = Replies(agent)
    expected: set[object] = set()
    for i in range(1, cycles(3000, 30000)):
        frame, rid = garbage(rng, i)
        agent.write(frame)
        if rid is not None:
            expected.add(rid)
        replies.drain()
    agent.write(b"\xff" * (2 << 20) + b"\n")  # oversized, and not UTF-8 either
    agent.write(json.dumps({"id": "last", "op": "ping"}).encode() + b"\n")
    deadline = time.monotonic() + 10
    while not (expected | {"last"}) <= set(replies.ids) and time.monotonic() < deadline:
        replies.drain(wait=0.1)
    assert expected - set(replies.ids) == set(), "requests without a reply"
    assert "last" in replies.ids
    assert agent.proc.poll() is None
    assert agent.ok("ping") == {}


def test_it_holds_no_socket_until_asked(agent: RawAgent) -> None:
    def sockets() -> list[str]:
        fds = os.listdir(f"/proc/{agent.pid}/fd")
        return [
            os.readlink(f"/proc/{agent.pid}/fd/{fd}")
            for fd in fds
            if os.readlink(f"/proc/{agent.pid}/fd/{fd}").startswith("socket:")
        ]

    assert sockets() == []
    listener = agent.ok("listen", proto="tcp", address="127.0.0.1")
    assert len(sockets()) == 1
    agent.ok("close", sock=listener["sock"])
    assert sockets() == []
