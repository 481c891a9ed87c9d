"""bench/connections.py's pure part: the kernel's TCP counters, read and compared, and
what they say about a baseline whose rounds differ by more than 2x."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "connections.py"


def load_script() -> ModuleType:
    """The script as a module, by its path: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("bench_connections", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = load_script()
WATCHED = bench.WATCHED
difference = bench.difference
drop_note = bench.drop_note
parse_counters = bench.parse_counters
rounds_for = bench.rounds_for
spread_note = bench.spread_note
split = bench.split

NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv TW ListenOverflows ListenDrops TCPSynRetrans
TcpExt: 0 0 15 3 3 2
IpExt: InNoRoutes InOctets
IpExt: 0 9200
"""
SNMP = """\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens
Tcp: 1 200 120000 -1 40
"""


def test_counters_pair_each_group_of_names_with_its_values() -> None:
    counters = parse_counters(NETSTAT + SNMP)
    assert counters["ListenOverflows"] == 3
    assert counters["TW"] == 15
    assert counters["IpExt.InOctets"] == 9200
    assert counters["Tcp.MaxConn"] == -1
    assert counters["Tcp.ActiveOpens"] == 40


def test_difference_covers_every_watched_counter_missing_ones_as_zero() -> None:
    moved = difference({"ListenOverflows": 5, "TW": 2}, {"ListenOverflows": 3})
    assert set(moved) == set(WATCHED)
    assert moved["ListenOverflows"] == 2
    assert moved["TW"] == 2
    assert moved["TCPSynRetrans"] == 0


QUIET = dict.fromkeys(WATCHED, 0)
DROPPED = {**QUIET, "ListenOverflows": 1, "ListenDrops": 1, "TCPSynRetrans": 1}


def test_a_spread_within_2x_needs_no_explanation() -> None:
    assert spread_note("C", [40_000, 70_000, 79_000], [QUIET, DROPPED, QUIET]) == []


def test_slow_rounds_that_alone_retransmitted_syns_are_explained_by_the_full_queue() -> None:
    lines = spread_note("blocking", [8_292, 38_389, 51_067], [DROPPED, QUIET, QUIET])
    assert "max/min 6.2x" in lines[0]
    assert "8292 conn/s  ListenOverflows 1, ListenDrops 1, TCPSynRetrans 1" in lines[1]
    assert "no counter moved" in lines[2]
    assert "accept queue was full" in lines[-1]
    assert "1 s" in lines[-1]


def test_retransmissions_without_an_overflow_are_named_as_such() -> None:
    resent = {**QUIET, "TCPSynRetrans": 2}
    lines = spread_note("C", [8_000, 50_000], [resent, QUIET])
    assert "without an accept queue overflow" in lines[-1]


def test_counters_that_do_not_match_the_slow_rounds_explain_nothing() -> None:
    lines = spread_note("C", [8_000, 50_000, 52_000], [QUIET, DROPPED, QUIET])
    assert "do not set the slow rounds apart" in lines[-1]


def test_drop_note_only_when_syns_were_sent_again() -> None:
    assert drop_note("suite", QUIET) is None
    note = drop_note("suite", {**QUIET, "TCPSynRetrans": 234, "ListenOverflows": 234})
    assert note is not None
    assert "234 SYNs or SYN-ACKs sent again" in note
    assert "234 met a full accept queue" in note


def test_rounds_default_to_5_and_3_above_10000_unless_given() -> None:
    assert rounds_for(10_000, None) == 5
    assert rounds_for(30_000, None) == 3
    assert rounds_for(30_000, 7) == 7


def test_split_shares_the_total_as_evenly_as_it_goes() -> None:
    assert split(10, 4) == [3, 3, 2, 2]
    assert sum(split(30_001, 4)) == 30_001


port_note = bench.port_note


def test_connections_within_the_even_ports_need_no_port_note() -> None:
    assert port_note("h1", 14_116, "32768 60999") is None


def test_connections_beyond_the_even_ports_are_named_with_how_many_walk_them() -> None:
    note = port_note("h1, h2", 15_000, "32768 60999")
    assert note is not None
    assert note.startswith("  h1, h2: 15000 connections each")
    assert "the 14116 even ports" in note
    assert "each of the last 884" in note
    assert port_note("h1", 6, "40000 40009") is not None  # 5 even ports: 40000 ... 40008
