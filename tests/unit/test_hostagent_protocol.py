"""The host agent's framing: hello, replies, malformed frames, EOF, and no socket of its own."""

from __future__ import annotations

import json
import os
import platform
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


class RawAgent:
    """A `python -m hostagent` subprocess and a line-level client for it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hostagent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._next = 0
        self.hello = self.frame()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def frame(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next line the agent writes; every one of them must be a JSON object."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, "the agent did not answer in time"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                assert chunk, "the agent closed its output"
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        frame = json.loads(line)
        assert isinstance(frame, dict)
        return frame

    def reply(self, rid: object, timeout: float = 5.0) -> dict[str, Any]:
        """The reply to `rid`, keeping any event that comes before it."""
        while True:
            frame = self.frame(timeout)
            if "event" in frame and "id" not in frame:
                self.events.append(frame)
            elif frame.get("id") == rid:
                return frame
            else:
                raise AssertionError(f"unexpected frame {frame}")

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self._next += 1
        rid = self._next
        self.write(json.dumps({"id": rid, "op": op, **args}).encode() + b"\n")
        return self.reply(rid)

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        frame = self.call(op, **args)
        assert frame["ok"] is True, frame
        result = frame["result"]
        assert isinstance(result, dict)
        return result

    def error(self, op: str, **args: Any) -> dict[str, Any]:
        frame = self.call(op, **args)
        assert frame["ok"] is False, frame
        error = frame["error"]
        assert isinstance(error, dict)
        return error

    def close(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            status = self.proc.wait(5)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return status


@pytest.fixture
def agent() -> Iterator[RawAgent]:
    raw = RawAgent()
    try:
        yield raw
    finally:
        raw.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[RawAgent]:
    """One agent for the many malformed-frame cases (it must survive them all); sock 1 is UDP."""
    raw = RawAgent()
    try:
        assert raw.ok("listen", proto="udp", address="127.0.0.1", echo=False)["sock"] == 1
        yield raw
    finally:
        raw.close()


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def proc_net_rows(pid: int) -> list[tuple[str, str, str]]:
    """(table, local address hex, inode) of every row in /proc/<pid>/net/{tcp,udp}{,6}."""
    rows = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                rows.append((table, fields[1], fields[9]))
    return rows


def test_hello_is_the_first_line(agent: RawAgent) -> None:
    hello = agent.hello
    assert hello["event"] == "hello"
    assert hello["agent"] == "netharness-hostagent"
    assert hello["version"] == 1
    assert hello["pid"] == agent.pid
    assert hello["python"] == platform.python_version()
    assert hello["hostname"] == socket.gethostname()
    assert "id" not in hello
    assert {"info", "listen", "connect", "send", "recv", "request", "close"} <= set(hello["ops"])


def test_ping_and_string_ids(agent: RawAgent) -> None:
    assert agent.ok("ping") == {}
    agent.write(b'{"id": "abc", "op": "ping"}\n')
    assert agent.reply("abc") == {"id": "abc", "ok": True, "result": {}}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"this is not json", "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b"42", "JSON object"),
        (b'{"op": "ping"}', "'id'"),
        (b'{"id": true, "op": "ping"}', "'id'"),
        (b'{"id": 1.5, "op": "ping"}', "'id'"),
        (b'{"id": null, "op": "ping"}', "'id'"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    ],
)
def test_unreadable_frames_get_an_error_with_null_id(
    shared: RawAgent, line: bytes, message: str
) -> None:
    shared.write(line + b"\n")
    frame = shared.frame()
    assert frame["id"] is None
    assert frame["ok"] is False
    assert frame["error"]["kind"] == "bad-request"
    assert message in frame["error"]["message"]
    assert shared.ok("ping") == {}  # still serving


def test_frame_errors_keep_the_id_when_readable(agent: RawAgent) -> None:
    agent.write(b'{"id": 7}\n{"id": 8, "op": 3}\n{"id": 9, "op": "frobnicate"}\n')
    missing, wrong, unknown = agent.reply(7), agent.reply(8), agent.reply(9)
    assert missing["error"]["kind"] == "bad-request"
    assert wrong["error"]["kind"] == "bad-request"
    assert unknown["error"]["kind"] == "unknown-op"
    assert "frobnicate" in unknown["error"]["message"]
    assert "listen" in unknown["error"]["message"]  # lists the known ops
    assert agent.ok("ping") == {}


@pytest.mark.parametrize(
    "args",
    [
        {"proto": 5},
        {"proto": "sctp"},
        {"proto": "tcp", "port": "80"},
        {"proto": "tcp", "port": 70000},
        {"proto": "tcp", "port": -1},
        {"proto": "tcp", "port": True},
        {"proto": "tcp", "backlog": "many"},
        {"proto": "tcp", "reuseaddr": 1},
        {"proto": "tcp", "v6only": "yes"},
        {"proto": "tcp", "address": "localhost"},
        {"proto": "tcp", "address": 127},
        {"proto": "tcp", "adress": "127.0.0.1"},
        {"proto": "tcp", "address": "127.0.0.1", "v6only": True},
    ],
)
def test_bad_arguments_are_refused(shared: RawAgent, args: dict[str, Any]) -> None:
    error = shared.error("listen", **args)
    assert error["kind"] == "bad-request"
    assert error["errno"] is None
    assert error["message"].startswith("listen")
    assert [s["sock"] for s in shared.ok("sockets")["sockets"]] == [1]  # nothing was opened


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("recv", {"sock": "one"}),
        ("recv", {"sock": 1, "timeout": -1}),
        ("recv", {"sock": 1, "timeout": float("nan")}),
        ("send", {"sock": 1, "data": 5}),
        ("send", {"sock": 1, "data_b64": "***"}),
        ("send", {"sock": 1, "data": "a", "data_b64": "YQ=="}),
        ("send", {"sock": 1, "data": "a", "to": ["127.0.0.1"]}),
        ("connect", {"proto": "tcp", "address": "127.0.0.1"}),
        ("close", {}),
    ],
)
def test_bad_arguments_of_other_ops(shared: RawAgent, op: str, args: dict[str, Any]) -> None:
    error = shared.error(op, **args)
    assert error["kind"] == "bad-request", error
    assert error["message"].startswith(op)


def test_oversized_line_is_discarded_and_reported(agent: RawAgent) -> None:
    big = b'{"id": 1, "op": "ping", "pad": "' + b"x" * (1 << 20) + b'"}\n'
    cut = (1 << 20) + 10
    agent.write(big[:cut])
    early = agent.frame()  # reported as soon as the line is too long, not at its end
    assert early["id"] is None
    assert early["error"]["kind"] == "too-large"
    agent.write(big[cut:] + b'{"id": 2, "op": "ping"}\n')
    assert agent.reply(2)["ok"] is True  # the rest of the big line was dropped, no reply to 1


def test_blank_lines_are_ignored(agent: RawAgent) -> None:
    agent.write(b"\n   \n\r\n")
    assert agent.call("ping")["id"] == 1  # the very next frame is the ping's reply


def test_replies_may_come_out_of_order(agent: RawAgent) -> None:
    sock = agent.ok("listen", proto="udp", address="127.0.0.1", echo=False)["sock"]
    agent.write(json.dumps({"id": "slow", "op": "recv", "sock": sock, "timeout": 0.3}).encode())
    agent.write(b'\n{"id": "fast", "op": "ping"}\n')
    first, second = agent.frame(), agent.frame()
    assert first["id"] == "fast"
    assert second["id"] == "slow"
    assert second["error"]["kind"] == "timeout"
    assert second["error"]["errno"] == "ETIMEDOUT"


def test_truncated_last_line_at_eof_gets_an_error_and_a_clean_exit() -> None:
    raw = RawAgent()
    try:
        raw.write(b'{"id": 1, "op": "ping"}\n{"id": 2, "op": "pi')
        assert raw.proc.stdin is not None
        raw.proc.stdin.close()
        assert raw.reply(1)["ok"] is True
        truncated = raw.frame()
        assert truncated["id"] is None
        assert truncated["error"]["kind"] == "truncated"
    finally:
        status = raw.close()
    assert status == 0


def test_exits_on_eof_within_a_second_closing_every_socket() -> None:
    raw = RawAgent()
    try:
        tcp = raw.ok("listen", proto="tcp", address="127.0.0.1")["local"]
        raw.ok("listen", proto="udp", address="::1")
        raw.ok("connect", proto="tcp", address="127.0.0.1", port=tcp[1])
        assert len(socket_inodes(raw.pid)) == 4  # listener, udp, client, accepted
        assert raw.proc.stdin is not None
        raw.proc.stdin.close()
        started = time.monotonic()
        status = raw.proc.wait(2)
        assert time.monotonic() - started < 1.0
    finally:
        raw.close()
    assert status == 0
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", tcp[1]))


def test_opens_no_socket_of_its_own(agent: RawAgent) -> None:
    assert socket_inodes(agent.pid) == set()
    assert agent.ok("info")["sockets"] == 0
    own = socket_inodes(agent.pid)
    assert own == set()
    assert not [row for row in proc_net_rows(agent.pid) if row[2] in own]
    # ...and the check does see a socket once one is asked for:
    port = agent.ok("listen", proto="tcp", address="127.0.0.1")["local"][1]
    inodes = socket_inodes(agent.pid)
    assert len(inodes) == 1
    rows = [row for row in proc_net_rows(agent.pid) if row[2] in inodes]
    assert [(table, local.split(":")[1]) for table, local, _ in rows] == [("tcp", f"{port:04X}")]
    agent.ok("close", sock=1)
    assert socket_inodes(agent.pid) == set()


def test_logs_go_to_stderr_not_stdout() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostagent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    out, err = proc.communicate(b'{"id": 1, "op": "listen", "proto": "udp"}\nnot json\n', 5)
    lines = out.decode().splitlines()
    assert [json.loads(line).get("id", "hello") for line in lines] == ["hello", 1, None]
    log = err.decode()
    assert f"hostagent[{proc.pid}]" in log
    assert "listen udp" in log
    assert proc.returncode == 0
