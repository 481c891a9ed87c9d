"""Packet captures from the fabric: pcaps tshark reads, with the SYNs and RSTs on the wire."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import Lab, load_topology
from harness.errors import AgentError, UsageError
from harness.observe.capture import count_packets

TOPOLOGY = """
name: captured
networks:
  lan: {subnet: 10.0.1.0/24, capture: true}
  side: {subnet: 10.0.2.0/24}
hosts:
  h1: {networks: {lan: 10.0.1.11}}
  h2: {networks: {lan: 10.0.1.12, side: {address: 10.0.2.12, capture: true}}}
  h3: {networks: {lan: 10.0.1.13, side: 10.0.2.13}}
"""


def tshark(pcap: Path, display_filter: str) -> list[str]:
    """One line per frame that matches: source, destination, ports, TCP flags."""
    fields = ["ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.flags.str"]
    argv = ["tshark", "-r", str(pcap), "-Y", display_filter, "-T", "fields"]
    for field in fields:
        argv += ["-e", field]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def refused(lab: Lab, client: str, address: str, port: int) -> None:
    with pytest.raises(AgentError) as caught:
        lab.hosts[client].agent().connect("tcp", address, port)
    assert caught.value.errno == "ECONNREFUSED"


def test_topology_captures_show_syns_and_rsts_per_link(backend: str, tmp_path: Path) -> None:
    (tmp_path / "captured.yaml").write_text(TOPOLOGY)
    topology = load_topology(tmp_path / "captured.yaml")
    pcaps = tmp_path / "pcaps"
    with Lab.up(topology, backend=backend, capture_dir=pcaps) as lab:
        assert lab.captures == {"lan": pcaps / "lan.pcap", "h2:side": pcaps / "h2.side.pcap"}
        assert lab.describe()["captures"] == {k: str(v) for k, v in lab.captures.items()}
        refused(lab, "h1", "10.0.1.12", 9)  # on lan: only lan.pcap sees it
        refused(lab, "h3", "10.0.2.12", 7)  # on side: only h2's interface sees it
        listener = lab.hosts["h2"].agent().listen("tcp", port=0)
        lab.hosts["h1"].agent().connect("tcp", "10.0.1.12", listener.port)
        # -U: frames are in the file while the capture still runs (tcpdump may lag).
        deadline = time.monotonic() + 10
        while count_packets(pcaps / "lan.pcap") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count_packets(pcaps / "lan.pcap") >= 5
    lan, side = pcaps / "lan.pcap", pcaps / "h2.side.pcap"
    syn = "tcp.flags.syn == 1 && tcp.flags.ack == 0"
    rst = "tcp.flags.reset == 1"
    assert [line.split("\t")[:2] for line in tshark(lan, f"{syn} && tcp.dstport == 9")] == [
        ["10.0.1.11", "10.0.1.12"]
    ]
    assert [line.split("\t")[:2] for line in tshark(lan, f"{rst} && tcp.srcport == 9")] == [
        ["10.0.1.12", "10.0.1.11"]
    ]
    # The open port answered with a SYN-ACK; nothing from the other link got in.
    assert (
        len(
            tshark(
                lan, f"tcp.flags.syn == 1 && tcp.flags.ack == 1 && tcp.srcport == {listener.port}"
            )
        )
        == 1
    )
    assert tshark(lan, "ip.addr == 10.0.2.0/24") == []
    assert len(tshark(side, f"{syn} && tcp.dstport == 7 && ip.src == 10.0.2.13")) == 1
    assert len(tshark(side, f"{rst} && tcp.srcport == 7 && ip.src == 10.0.2.12")) == 1
    assert tshark(side, "ip.addr == 10.0.1.0/24") == []


# Captures are taken in the fabric, the same for every backend: the test above runs on
# each; these run on the default backend only, to keep the suite quick.
def test_capture_everything_and_by_hand(tmp_path: Path) -> None:
    (tmp_path / "captured.yaml").write_text(TOPOLOGY)
    with Lab.up(tmp_path / "captured.yaml", capture=True, capture_dir=tmp_path) as lab:
        assert set(lab.captures) == {"lan", "side", "h2:side"}
        with lab.capture("h1:lan", tmp_path / "by-hand.pcap") as recording:
            refused(lab, "h1", "10.0.1.12", 9)
        assert recording.packets() >= 2
        listed = json.loads((lab.ledger_dir / "lab.json").read_text())["captures"]
        assert listed["h1:lan"] == str(tmp_path / "by-hand.pcap")
        refused(lab, "h1", "10.0.1.12", 10)  # after stop(): not in the file
        with pytest.raises(UsageError, match="no network 'wan'"):
            lab.capture("wan")
        with pytest.raises(UsageError, match="h1 has no interface 'side'"):
            lab.capture("h1:side")
    ports = [
        line.split("\t")[3] for line in tshark(tmp_path / "by-hand.pcap", "tcp.flags.syn == 1")
    ]
    assert ports == ["9"]
    assert len(tshark(tmp_path / "side.pcap", "tcp")) == 0


def test_capture_command_records_a_running_lab(tmp_path: Path) -> None:
    with Lab.up(load_topology_text(tmp_path)) as lab:
        out = tmp_path / "cli.pcap"
        command = [sys.executable, "-m", "harness", "capture", lab.id, "h1:lan", "-o", str(out)]
        process = subprocess.Popen(
            [*command, "--duration", "30"],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            assert "capturing h1:lan" in process.stderr.readline()
            refused(lab, "h1", "10.0.1.12", 9)
            process.send_signal(signal.SIGINT)
            stdout, _ = process.communicate(timeout=30)
        finally:
            process.kill()
        assert process.returncode == 0
        assert "packets written to" in stdout
        assert len(tshark(out, "tcp.flags.reset == 1 && tcp.srcport == 9")) == 1
        bad = subprocess.run(
            [sys.executable, "-m", "harness", "capture", lab.id, "nowhere"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert bad.returncode == 2
        assert "no network 'nowhere'" in bad.stderr
        assert "Traceback" not in bad.stderr


def load_topology_text(tmp_path: Path) -> Path:
    path = tmp_path / "captured.yaml"
    path.write_text(TOPOLOGY)
    return path


def test_up_keeps_capturing_after_it_detaches(tmp_path: Path) -> None:
    def harness(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "harness", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    pcaps = tmp_path / "pcaps"
    up = harness("up", str(load_topology_text(tmp_path)), "--json", "--capture-dir", str(pcaps))
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    try:
        assert info["captures"] == {
            "lan": str(pcaps / "lan.pcap"),
            "h2:side": str(pcaps / "h2.side.pcap"),
        }
        connect = "import socket; socket.create_connection(('10.0.1.12', 9))"
        refused = harness("exec", info["id"], "h1", "--", sys.executable, "-c", connect)
        assert "ConnectionRefusedError" in refused.stderr
        # Another process sees the owner's captures in each host's diagnostics.
        diagnosed = harness("diagnose", info["id"], "h2")
        assert diagnosed.returncode == 0, diagnosed.stderr
        assert f"lan: {pcaps / 'lan.pcap'}" in diagnosed.stdout
        assert f"h2:side: {pcaps / 'h2.side.pcap'}" in diagnosed.stdout
        assert "host h1" not in diagnosed.stdout
        assert re.search(r"side +UP +\S+ +10\.0\.2\.12/24", diagnosed.stdout)
        assert "--- nft ruleset\n(empty ruleset)" in diagnosed.stdout
        unknown = harness("diagnose", info["id"], "h9")
        assert unknown.returncode == 2
        assert "no host h9" in unknown.stderr
    finally:
        down = harness("down", info["id"])
    assert down.returncode == 0, down.stderr
    assert len(tshark(pcaps / "lan.pcap", "tcp.flags.reset == 1 && tcp.srcport == 9")) == 1
