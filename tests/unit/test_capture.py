"""harness.observe.capture's pure parts: targets from a topology, counting frames of a live pcap."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.observe.capture import PcapCounter, Target, count_packets, parse_target, targets_of
from harness.topology import parse_topology

TOPOLOGY = """
name: t
networks:
  lan: {subnet: 10.0.1.0/24, capture: true}
  wan: {subnet: 10.0.2.0/24}
hosts:
  h1: {networks: {lan: auto, wan: {ifname: eth1, capture: true}}}
"""


def header(endian: str = "<") -> bytes:
    return struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def frame(payload: bytes, endian: str = "<") -> bytes:
    return struct.pack(endian + "IIII", 1, 2, len(payload), len(payload)) + payload


def test_counting_a_pcap_while_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "live.pcap"
    counter = PcapCounter(path)
    assert counter.count() == 0  # not there yet
    path.write_bytes(header() + frame(b"a" * 60))
    assert counter.count() == 1
    whole = frame(b"b" * 70)
    with path.open("ab") as f:
        f.write(frame(b"c" * 10) + whole[:30])  # the second frame only half written
    assert counter.count() == 2
    with path.open("ab") as f:
        f.write(whole[30:])
    assert counter.count() == 3
    assert count_packets(path) == 3


def test_big_endian_pcaps_count_too(tmp_path: Path) -> None:
    path = tmp_path / "be.pcap"
    path.write_bytes(header(">") + frame(b"x" * 300, ">") + frame(b"y", ">"))
    assert count_packets(path) == 2


def test_targets_from_the_topology_and_by_name() -> None:
    topology = parse_topology(TOPOLOGY, "t.yaml")
    assert targets_of(topology) == [Target("lan"), Target(None, "h1", "eth1")]
    assert [t.label for t in targets_of(topology, every_network=True)] == [
        "lan",
        "wan",
        "h1:eth1",
    ]
    assert Target(None, "h1", "eth1").filename == "h1.eth1.pcap"
    assert parse_target(topology, "wan") == Target("wan")
    assert parse_target(topology, "h1:eth1") == Target(None, "h1", "eth1")
    assert parse_target(topology, "h1:wan") == Target(None, "h1", "eth1")  # by network
    with pytest.raises(UsageError, match=r"no network 'dmz'.*networks: lan, wan"):
        parse_target(topology, "dmz")
    with pytest.raises(UsageError, match="no host 'h9'"):
        parse_target(topology, "h9:lan")
    with pytest.raises(UsageError, match=r"no interface 'eth7' \(interfaces: lan, eth1\)"):
        parse_target(topology, "h1:eth7")
