"""The helper ssh machines run (hostagent.remote), driven here over its stdin and stdout.

It is the same process the relay starts on a session channel: a fork server behind a
frame multiplexer. Here its "session" is a pair of pipes, so everything but SSH runs:
real forks, real pipes, real signals.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hostagent import frames

TIMEOUT = 10.0


class Session:
    """The relay's side of one helper."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from hostagent.remote import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.decoder = frames.Decoder()
        self.frames: list[tuple[int, int, bytes]] = []

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def spawn(self, stream: int, argv: list[str] | None, **options: Any) -> None:
        self.send(frames.control({"op": "spawn", "stream": stream, "argv": argv, **options}))

    def next(self) -> tuple[int, int, bytes]:
        self._read_until(lambda: bool(self.frames))
        return self.frames.pop(0)

    def control(self) -> dict[str, Any]:
        """The next control message; output that came before it (a process's first words
        may overtake its spawn's answer) stays for `next`."""
        self._read_until(lambda: any(kind == frames.CONTROL for kind, _, _ in self.frames))
        first = next(f for f in self.frames if f[0] == frames.CONTROL)
        self.frames.remove(first)
        return frames.message(first[2])

    def _read_until(self, done: Callable[[], bool]) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + TIMEOUT
        while not done():
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("the helper said nothing")
            data = os.read(fd, 65536)
            assert data, "the helper ended"
            self.frames += self.decoder.feed(data)

    def until_exit(self, stream: int) -> tuple[dict[int, bytes], int]:
        """Output per kind (its EOF seen) and the exit status, in the order they came."""
        output: dict[int, bytes] = {}
        while True:
            kind, number, payload = self.next()
            if kind == frames.CONTROL:
                message = frames.message(payload)
                if message.get("exited") == stream:
                    return output, int(message["status"])
            elif number == stream:
                output[kind] = output.get(kind, b"") + payload

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(TIMEOUT)


@pytest.fixture
def helper() -> Iterator[Session]:
    session = Session()
    try:
        ready = session.control()
        assert ready["ready"] == session.process.pid
        yield session
    finally:
        if session.process.poll() is None:
            session.process.kill()
        session.process.wait()
        for pipe in (session.process.stdin, session.process.stdout, session.process.stderr):
            if pipe is not None:
                pipe.close()


def test_a_command_s_output_comes_before_its_exit(helper: Session) -> None:
    helper.spawn(1, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert helper.control()["stream"] == 1
    output, status = helper.until_exit(1)
    assert output == {frames.STDOUT: b"out\n", frames.STDERR: b"err\n"}
    assert status == 3


def test_many_commands_at_once_each_get_their_output_then_their_exit(helper: Session) -> None:
    # Exits and output ending in one round of events: each is told once, in order.
    for number in range(10, 40):
        helper.spawn(number, ["sh", "-c", f"echo {number}; echo e{number} >&2"])
    outputs: dict[int, bytes] = {}
    statuses: dict[int, int] = {}
    while len(statuses) < 30:
        kind, number, payload = helper.next()
        if kind == frames.CONTROL:
            message = frames.message(payload)
            if "exited" in message:
                assert message["exited"] not in statuses
                statuses[message["exited"]] = message["status"]
        else:
            assert number not in statuses, "output after its exit"
            outputs[number] = outputs.get(number, b"") + payload
    assert statuses == dict.fromkeys(range(10, 40), 0)
    lines = {n: sorted(out.splitlines()) for n, out in outputs.items()}  # 1 and 2 interleave
    assert lines == {n: [str(n).encode(), f"e{n}".encode()] for n in range(10, 40)}


def test_stdin_reaches_the_process_and_its_eof_too(helper: Session) -> None:
    helper.spawn(2, ["cat"])
    assert "pid" in helper.control()
    data = os.urandom(300_000)  # more than a pipe holds: written as the process reads
    helper.send(frames.pack(frames.STDIN, 2, data) + frames.pack(frames.STDIN, 2))
    output, status = helper.until_exit(2)
    assert (output[frames.STDOUT], status) == (data, 0)


def test_merged_output_keeps_its_order(helper: Session) -> None:
    helper.spawn(3, ["sh", "-c", "echo 1; echo 2 >&2; echo 3"], merge=True)
    helper.control()
    output, _ = helper.until_exit(3)
    assert output == {frames.STDOUT: b"1\n2\n3\n"}


def test_a_command_that_cannot_start_says_why(helper: Session) -> None:
    helper.spawn(4, ["/nonexistent/command"], report=True, env_add={})
    reply = helper.control()
    assert reply == {
        "stream": 4,
        "error": "No such file or directory",
        "errno": "ENOENT",
        "stage": "exec",
    }


def test_the_host_agent_is_a_fork_of_the_helper_s_fork_server(helper: Session) -> None:
    helper.spawn(5, None)
    pid = helper.control()["pid"]
    said = [helper.next() for _ in range(2)]  # its log line (stderr) and its hello
    hello = [payload for kind, number, payload in said if (kind, number) == (frames.STDOUT, 5)]
    assert b'"event":"hello"' in hello[0]
    server = _parent(pid)
    assert _parent(server) == helper.process.pid  # one fork server, the helper's child


def test_a_signal_reaches_the_process_group(helper: Session) -> None:
    helper.spawn(6, ["sh", "-c", "sleep 30 & wait"])
    helper.control()
    helper.send(
        frames.control({"op": "kill", "stream": 6, "signal": signal.SIGTERM, "group": True})
    )
    _, status = helper.until_exit(6)
    assert status == -signal.SIGTERM


def test_the_end_of_its_session_ends_everything_it_started(helper: Session) -> None:
    helper.spawn(7, ["sleep", "30"], grace=0.5, env_add={}, report=True)
    pid = helper.control()["pid"]
    server = _parent(pid)
    assert helper.close() == 0
    # The helper waits for its fork server, which waits for what it started.
    assert not _alive(pid)
    assert not _alive(server)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
