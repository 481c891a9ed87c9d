"""Probes on real labs: every state of the scanner's table for TCP and UDP, IPv4 and IPv6,
made by an input chain and by a router's forward chain (tests/data/good/probe_states.yaml,
raw nftables); a full 1-65535 sweep under load; a filtered-heavy table in about one
timeout; ICMP rate limits; and nmap run in the same namespace agreeing port by port."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.checks.probe import Cell, check, matrix, probe, probe_cells
from harness.lab import Lab
from harness.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
STATES = ROOT / "tests" / "data" / "good" / "probe_states.yaml"
TCP_PORTS = (80, 81, 82, 83, 84, 85)
UDP_PORTS = (53, 54, 55, 56, 57)
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def states_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    # Module scope: one lab for the read-only tests below (the backend is netns here;
    # test_every_state_... builds its own lab on each backend).
    with Lab.up(load_topology(STATES)) as lab:
        yield lab


def test_every_state_for_tcp_and_udp_both_families_input_and_forward(backend: str) -> None:
    topology = load_topology(STATES)
    with Lab.up(topology, backend=backend) as lab:
        report = check(lab, topology.expectations, retries=0, timeout=TIMEOUT)
        by_cell = {
            (v.result.target, v.result.port, v.result.proto, v.result.family): v.result
            for v in report.verdicts
        }
    failed = [
        f"{v.result.cell} v{v.result.family}: {v.result.state} ({v.result.reason}), "
        f"expected {v.expected}"
        for v in report.failed
    ]
    assert not failed, failed
    assert len(report.verdicts) == 2 * 2 * (len(TCP_PORTS) + len(UDP_PORTS))
    # The reasons name what answered: the host itself (input) or the router (forward).
    assert by_cell[("h3", 83, "tcp", 4)].reason == "ICMP admin-prohibited from 10.0.1.13"
    assert by_cell[("h2", 83, "tcp", 4)].reason == "ICMP admin-prohibited from 10.0.1.1"
    assert by_cell[("h2", 83, "tcp", 6)].reason == "ICMP admin-prohibited from fd00:1::1"
    assert by_cell[("h2", 83, "tcp", 6)].errno == "EACCES"  # what Linux makes of it on v6
    assert by_cell[("h3", 83, "tcp", 4)].errno == "EHOSTUNREACH"
    assert by_cell[("h3", 84, "tcp", 6)].reason == "ICMP addr-unreachable from fd00:1::13"
    assert by_cell[("h3", 81, "tcp", 4)].reason == "RST"
    assert by_cell[("h2", 85, "tcp", 4)].reason == "RST"  # reject with tcp reset, by r1
    assert by_cell[("h3", 82, "tcp", 4)].reason == f"timeout {TIMEOUT:g} s"
    assert by_cell[("h2", 54, "udp", 4)].reason == "ICMP port-unreachable from 10.0.2.12"
    assert by_cell[("h3", 57, "udp", 6)].reason == "ICMP port-unreachable from fd00:1::13"
    assert by_cell[("h2", 57, "udp", 6)].reason == (
        "ICMP port-unreachable from fd00:1::1 (not the target: a filter on the way)"
    )
    assert by_cell[("h3", 53, "udp", 6)].reason.startswith("reply ")


def test_one_probe_reports_its_cell(states_lab: Lab) -> None:
    result = probe(states_lab, "h1", "h2", 56, "udp", family=6)
    assert (result.state, result.address, result.attempts) == ("filtered", "fd00:2::12", 1)
    assert result.icmp_from == "fd00:1::1"
    assert 0 <= result.elapsed < TIMEOUT


def test_a_filtered_heavy_table_costs_about_one_timeout(states_lab: Lab) -> None:
    # 3000 dropped cells (both protocols; h3's input chain, r1's forward chain for h1 ->
    # h2; r1's own probes of h2 are not forwarded) from two sources: one timeout each
    # would be 3000 s.
    cells = [
        Cell(source, target, port, proto)
        for source in ("h1", "r1")
        for target in ("h3", "h2")
        for proto in ("tcp", "udp")
        for port in range(2000, 2500)
        if (source, target) != ("r1", "h2")
    ]
    started = time.monotonic()
    results = probe_cells(states_lab, cells, timeout=TIMEOUT)
    seconds = time.monotonic() - started
    assert len(results) == len(cells)
    wrong = [r for r in results if r.state not in ("filtered", "open|filtered")]
    assert not wrong, wrong[:5]
    assert seconds < 3 * TIMEOUT, f"{len(cells)} filtered cells took {seconds:.1f} s"


def test_a_full_sweep_finds_every_open_port_under_load(states_lab: Lab) -> None:
    # Listeners spread over the whole range, swept from two sources at once (the second
    # sweep is the load); every one must be found open by both, and nothing else.
    server = states_lab.hosts["h3"].agent()
    opened = {80}
    for port in (1, 443, 1999, 3000, 8080, 20000, 32768, 45000, 60999, 65535):
        server.listen("tcp", port, "0.0.0.0")
        opened.add(port)
    dropped = set(range(2000, 3000)) | {82, 83, 84}
    cells = [Cell(source, "h3", port, "tcp") for source in ("h1", "r1") for port in range(1, 65536)]
    started = time.monotonic()
    results = probe_cells(states_lab, cells, timeout=TIMEOUT)
    seconds = time.monotonic() - started
    server.close()
    for source in ("h1", "r1"):
        mine = [r for r in results if r.source == source]
        found = {r.port for r in mine if r.state == "open"}
        assert found == opened, f"{source}: open {sorted(found)}, listening {sorted(opened)}"
        filtered = {r.port for r in mine if r.state == "filtered"}
        assert filtered == dropped, sorted(filtered ^ dropped)[:10]
        assert all(r.state == "closed" for r in mine if r.port not in opened | dropped)
    assert seconds < 60, f"two full sweeps took {seconds:.1f} s"


ICMP_LIMITED = """\
name: icmp-limited
networks:
  lan: {subnet: 10.0.1.0/24}
hosts:
  h1: {networks: {lan: 10.0.1.11}}
  h2:
    networks: {lan: 10.0.1.12}
    # The kernel's own rate limit, shortened: 6 answers at once, then one per 200 ms.
    sysctls: {net.ipv4.icmp_ratelimit: 200}
"""


def test_icmp_rate_limits_are_paced_for_and_said(backend: str) -> None:
    with Lab.up(parse_topology(ICMP_LIMITED, "icmp-limited.yaml"), backend=backend) as lab:
        ports = range(40000, 40012)  # nothing listens: each answer is a port unreachable
        cells = [Cell("h1", "h2", port, "udp") for port in ports]
        hurried = probe_cells(lab, cells, timeout=0.5)
        paced = probe_cells(lab, cells, timeout=0.5, ratelimited=["h2"], udp_interval=0.25)
        silent = probe(lab, "h1", "h2", 40000, "udp", timeout=0.3)
    # Unpaced, the limit swallows answers: closed ports look open|filtered.
    assert [r.state for r in hurried].count("closed") < len(cells)
    assert "rate limit" not in " ".join(r.reason for r in hurried)
    # Paced below the limit, every answer arrives.
    assert [r.state for r in paced] == ["closed"] * len(cells), [r.reason for r in paced]
    assert silent.state in ("closed", "open|filtered")


def test_a_silent_paced_probe_says_an_answer_may_have_been_suppressed(states_lab: Lab) -> None:
    result = probe_cells(
        states_lab, [Cell("h1", "h3", 55, "udp")], timeout=0.3, ratelimited=["h3"]
    )[0]
    assert result.state == "open|filtered"
    assert "may have been suppressed by rate limiting" in result.reason


def nmap_states(lab: Lab, source: str, address: str, ports: str, scan: str) -> dict[int, str]:
    argv = [
        "nmap",
        scan,
        "-Pn",
        "-n",
        "-T4",
        "--max-retries",
        "1",
        "-p",
        ports,
        "-oX",
        "-",
        address,
    ]
    if ":" in address:
        argv.insert(1, "-6")
    result = lab.hosts[source].run(argv, timeout=120)
    assert result.returncode == 0, result.stderr
    root = ET.fromstring(result.stdout)
    states = {}
    for element in root.iter("port"):
        state = element.find("state")
        assert state is not None
        states[int(element.get("portid", "0"))] = state.get("state", "")
    wanted = [int(p) for p in ports.split(",")]
    extra = root.find(".//extraports")
    if extra is not None:  # ports nmap lumped together share one state
        for port in wanted:
            states.setdefault(port, extra.get("state", ""))
    return states


@pytest.mark.parametrize("family", [4, 6])
def test_nmap_in_the_same_namespace_agrees_port_by_port(states_lab: Lab, family: int) -> None:
    for target in ("h3", "h2"):
        address = states_lab.hosts[target].address(family=family)
        for proto, ports, scan in (("tcp", TCP_PORTS, "-sT"), ("udp", UDP_PORTS, "-sU")):
            ours = {
                r.port: r.state
                for r in probe_cells(
                    states_lab,
                    [Cell("h1", target, p, proto, family) for p in ports],  # type: ignore[arg-type]
                    timeout=TIMEOUT,
                )
            }
            theirs = nmap_states(states_lab, "h1", address, ",".join(map(str, ports)), scan)
            assert theirs == ours, f"{proto} {address}: nmap {theirs}, netharness {ours}"


def test_matrix_covers_every_ordered_pair(states_lab: Lab) -> None:
    results = matrix(states_lab, [(80, "tcp"), (53, "udp")], timeout=0.5)
    pairs = {(r.source, r.target) for r in results}
    hosts = list(states_lab.hosts)
    assert pairs == {(a, b) for a in hosts for b in hosts if a != b}
    assert {r.state for r in results if (r.source, r.target) == ("h1", "h2")} == {"open"}
