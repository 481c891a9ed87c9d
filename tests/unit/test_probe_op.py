"""The agent's `probe` op against real loopback sockets (127.0.0.1 and ::1 only).

Filtered states need a firewall, so they are tested in tests/integration/test_probe.py;
here: open and closed for both protocols and families, the argument checks, and the
deadline check that keeps a late-noticed answer from being called silence.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hostagent import ops_probe
from tests.unit import test_hostagent_ops
from tests.unit.test_hostagent_ops import free_port
from tests.unit.test_hostagent_protocol import RawAgent

agent = test_hostagent_ops.agent  # the same fixture: a fresh `python -m hostagent`


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The probe op's compact answer as one dict per port (its kind, plus `elapsed`)."""
    return [
        {**result["kinds"][kind], "elapsed": micros / 1e6} for kind, micros in result["results"]
    ]


def test_open_and_closed_on_both_protocols_and_families(agent: RawAgent) -> None:
    tcp = agent.ok("listen", proto="tcp", address="::", port=0, v6only=False)["local"][1]
    udp4 = agent.ok("listen", proto="udp", address="127.0.0.1", port=0)["local"][1]
    udp6 = agent.ok("listen", proto="udp", address="::1", port=0)["local"][1]
    closed_tcp = free_port()
    closed_udp = free_port(socket.SOCK_DGRAM)
    result = agent.ok(
        "probe",
        timeout=2.0,
        targets=[
            {"address": "127.0.0.1", "proto": "tcp", "ports": [tcp, closed_tcp]},
            {"address": "::1", "proto": "tcp", "ports": [tcp]},
            {"address": "127.0.0.1", "proto": "udp", "ports": [udp4, closed_udp]},
            {"address": "::1", "proto": "udp", "ports": [udp6]},
        ],
    )
    found = verdicts(result)
    states = [(r["state"], r["reason"].split(" from ")[0]) for r in found]
    assert states[0] == ("open", "SYN-ACK")
    assert states[1] == ("closed", "RST")
    assert states[2] == ("open", "SYN-ACK")
    assert states[3][0] == "open"
    assert states[3][1].startswith("reply ")
    assert states[4] == ("closed", "ICMP port-unreachable")
    assert states[5][0] == "open"
    assert found[4]["from"] == "127.0.0.1"
    assert all(r["attempts"] == 1 for r in found)
    assert all(0 <= r["elapsed"] < 2.0 for r in found)
    assert len(result["kinds"]) < len(found)  # equal verdicts are sent once


def test_ranges_expand_in_order(agent: RawAgent) -> None:
    base = free_port()
    result = agent.ok(
        "probe", targets=[{"address": "127.0.0.1", "proto": "tcp", "ports": [[base, base + 2]]}]
    )
    assert len(result["results"]) == 3


@pytest.mark.parametrize(
    ("targets", "wanted"),
    [
        ("10.0.0.1", "must be a list"),
        ([{"address": "10.0.0.1", "proto": "sctp", "ports": [1]}], "must be a list"),
        ([{"address": "10.0.0.1", "proto": "tcp", "ports": [0]}], "1-65535"),
        ([{"address": "10.0.0.1", "proto": "tcp", "ports": [[5, 2]]}], "1-65535"),
        ([{"address": "10.0.0.1", "proto": "tcp", "ports": [True]}], "1-65535"),
        ([{"address": "web", "proto": "tcp", "ports": [1]}], "numeric"),
        ([{"address": "10.0.0.1", "proto": "tcp", "ports": [1], "x": 1}], "must be a list"),
        ([{"address": "10.0.0.1", "proto": "tcp", "ports": [[1, 65535]]}] * 5, "more than"),
    ],
)
def test_bad_targets_are_refused(agent: RawAgent, targets: Any, wanted: str) -> None:
    error = agent.error("probe", targets=targets)
    assert error["kind"] == "bad-request"
    assert wanted in error["message"]


class FakeAgent:
    """Just enough of HostAgent for a `_Scan`: timers are kept, not run; the selector
    never reports anything, as if the loop were too busy to notice."""

    def __init__(self) -> None:
        self.pid = 0
        self.pending: set[socket.socket] = set()
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.replies: list[dict[str, Any]] = []

    def log(self, message: str) -> None:
        pass

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        self.timers.append((delay, callback))
        return type("T", (), {"cancel": lambda self: None})()

    def set_interest(self, fd: int, events: int, handler: Any) -> None:
        pass

    def reply(self, rid: object, result: dict[str, Any]) -> None:
        self.replies.append(result)

    def run_timers(self) -> None:
        while self.timers:
            _delay, callback = self.timers.pop(0)
            callback()


def test_an_answer_noticed_late_is_not_called_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    # A UDP server that answers, and a TCP listener; the fake loop notices nothing
    # until the deadline timers fire, long after both answers arrived.
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        # Pretend the handshake had not finished when connect() returned.
        real_check = ops_probe._Probe.check_tcp
        calls: list[None] = []

        def first_sees_nothing(probe: ops_probe._Probe) -> bool:
            calls.append(None)
            return len(calls) > 1 and real_check(probe)

        monkeypatch.setattr(ops_probe._Probe, "check_tcp", first_sees_nothing)
        fake = FakeAgent()
        specs = ops_probe._targets(
            [
                {"address": "127.0.0.1", "proto": "udp", "ports": [server.getsockname()[1]]},
                {"address": "127.0.0.1", "proto": "tcp", "ports": [listener.getsockname()[1]]},
            ]
        )
        scan = ops_probe._Scan(fake, 1, specs, 0.05, 16, 0.0, False)  # type: ignore[arg-type]
        scan.fill()
        _data, peer = server.recvfrom(100)
        server.sendto(b"answer", peer)
        time.sleep(0.1)  # past the deadline: the loop was "busy"
        fake.run_timers()
        assert fake.replies, "the scan never answered"
        results = verdicts(fake.replies[0])
        assert results[0]["state"] == "open"
        assert results[0]["reason"] == "reply 6 bytes"
        assert results[1]["state"] == "open"
        assert fake.replies[0]["late"] > 0
        assert len(calls) == 2  # once at connect, once at the deadline
    finally:
        server.close()
        listener.close()


def test_out_of_descriptors_probes_wait_for_room_instead_of_guessing() -> None:
    # A listener that never accepts, backlog full: further SYNs to it go unanswered, so
    # each probe holds its descriptor until the timeout. The agent may open only 40
    # files: most probes first meet EMFILE, and must be retried, not reported.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # fills the accept queue
        proc = subprocess.Popen(
            ["prlimit", "--nofile=40:40", sys.executable, "-m", "hostagent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdout.readline()  # hello
            request = {
                "id": 1,
                "op": "probe",
                "timeout": 0.2,
                "targets": [{"address": "127.0.0.1", "proto": "tcp", "ports": [port] * 60}],
            }
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            reply = json.loads(proc.stdout.readline())
        finally:
            proc.stdin.close()
            proc.wait(10)
            proc.stdout.close()
    finally:
        filler.close()
        listener.close()
    assert reply["ok"], reply
    found = verdicts(reply["result"])
    assert len(found) == 60
    assert {r["state"] for r in found} <= {"open", "filtered"}
    assert not [r for r in found if "EMFILE" in r["reason"]]
    assert reply["result"]["seconds"] >= 0.4  # at least two rounds of the 0.2 s timeout


def test_udp_payloads_are_well_formed_requests_of_their_protocols() -> None:
    from hostagent.ops_probe import UDP_PAYLOADS

    dns = UDP_PAYLOADS[53]
    _ident, flags, questions = struct.unpack("!HHH", dns[:6])
    assert (flags & 0x8000, flags & 0x7800, questions) == (0, 0, 1)  # a standard query
    assert dns[12:] == b"\x00" + struct.pack("!HH", 2, 1)  # the root, NS, IN
    ntp = UDP_PAYLOADS[123]
    assert (len(ntp), ntp[0] & 0x7, ntp[0] >> 3 & 0x7) == (48, 3, 4)  # client mode, v4
    snmp = UDP_PAYLOADS[161]
    assert (snmp[0], snmp[1]) == (0x30, len(snmp) - 2)  # one BER sequence, whole
    assert b"public" in snmp
