"""Graphs: the DOT text says what the topology says; real Graphviz draws it."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.checks.graph import MatrixCell, render, render_matrix_svg, topology_dot
from harness.topology import load_topology, parse_topology
from tests.support import ROOT, netharness

SVG = "{http://www.w3.org/2000/svg}"


def _netharness(*args: str, run_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NETHARNESS_RUN_DIR=str(run_dir)) if run_dir else None
    return netharness(*args, env=env)


def routed_dot() -> str:
    return topology_dot(load_topology(ROOT / "topologies" / "routed.yaml"))


def test_dot_has_every_host_network_and_interface_address() -> None:
    dot = routed_dot()
    for node in ("host:h1", "host:r1", "host:h2", "net:lan", "net:wan"):
        assert f'"{node}" [' in dot
    for text in ("10.0.1.0/24", "fd00:1::/64", "10.0.2.0/24", "fd00:2::/64"):
        assert text in dot  # subnets on the network nodes
    for text in ("10.0.1.11/24", "fd00:1::11/64", "10.0.2.1/24", "fd00:2::12/64"):
        assert text in dot  # addresses on the interface edges
    assert "default via 10.0.1.1" in dot
    assert "default via fd00:2::1" in dot
    assert dot.count(" -- ") == 4


def test_routers_stand_out_and_routed_paths_run_left_to_right() -> None:
    dot = routed_dot()
    (router,) = [line for line in dot.splitlines() if line.startswith('  "host:r1" [')]
    assert "· router" in router  # after a no-break space
    assert 'border="2"' in router
    (plain,) = [line for line in dot.splitlines() if line.startswith('  "host:h1" [')]
    assert "router" not in plain
    assert 'border="1"' in plain
    # Edges point away from h1: h1 -- lan -- r1 -- wan -- h2 (ranks in a chain).
    edges = re.findall(r'"([^"]+)" -- "([^"]+)"', dot)
    assert set(edges) == {
        ("host:h1", "net:lan"),
        ("net:lan", "host:r1"),
        ("host:r1", "net:wan"),
        ("net:wan", "host:h2"),
    }


def test_labels_are_escaped() -> None:
    topology = parse_topology(
        """
name: esc
networks: {lan: {subnet: 10.0.1.0/24}}
hosts:
  h1:
    networks: {lan: 10.0.1.11}
    services: [{proto: tcp, port: 80}]
    nft: |
      # a comment <b>
      table inet t { chain c { type filter hook input priority 0; tcp dport 1 drop; } }
"""
    )
    dot = topology_dot(topology)
    assert "tcp/80" in dot
    assert "raw nft script, 1 lines" in dot
    assert "<b>h1</b>" in dot
    assert "&lt;" not in dot
    assert render(dot, "dot") == dot.encode()


def test_real_dot_draws_valid_svg_and_png() -> None:
    dot = routed_dot()
    svg = render(dot, "svg")
    root = ET.fromstring(svg)
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"h1", "r1", "h2", "lan", "wan", "10.0.1.11/24", "fd00:2::12/64"} <= texts
    png = render(dot, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5000


def test_graph_command_writes_the_format_its_suffix_names(tmp_path: Path) -> None:
    for suffix, magic in (("svg", b"<?xml"), ("png", b"\x89PNG"), ("dot", b"graph ")):
        out = tmp_path / f"routed.{suffix}"
        result = _netharness("graph", "topologies/routed.yaml", "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert out.read_bytes().startswith(magic)
    result = _netharness("graph", "topologies/routed.yaml", "--format", "dot")
    assert result.returncode == 0
    assert result.stdout.startswith('graph "routed"')


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests/data/bad/many_problems.yaml", "many_problems.yaml:5:17"),
        ("no-such-file", "neither a topology file nor a lab id"),
        ("zzzzz9", "no lab 'zzzzz9'"),
    ],
)
def test_graph_command_bad_input_exits_2(target: str, message: str, tmp_path: Path) -> None:
    out = tmp_path / "x.svg"
    result = _netharness("graph", target, "-o", str(out), run_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_matrix_svg_marks_mismatches() -> None:
    cells = [
        MatrixCell("h1", "h2", "tcp", 443, "open", "open"),
        MatrixCell("h1", "h2", "udp", 53, "open|filtered"),
        MatrixCell("h2", "h1", "tcp", 443, "closed", "filtered"),
    ]
    svg = render_matrix_svg(cells, title="three-tier")
    root = ET.fromstring(svg)
    rects = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(rects) == 3
    wrong = [r for r in rects if r.get("stroke-width") == "3"]
    assert len(wrong) == 1
    assert wrong[0].findtext(f"{SVG}title") == "h2 → h1:443/tcp: closed (expected filtered)"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "want filtered" in texts
    assert "3 cells, 1 not as expected" in texts
    assert "three-tier" in texts


def test_firewall_policies_and_rules_are_drawn_in_colour() -> None:
    topology = parse_topology(
        """
name: fw
networks: {admin: {subnet: 10.0.9.0/24}, lan: {subnet: 10.0.1.0/24}}
hosts:
  laptop: {networks: {admin: auto}}
  web:
    networks: {lan: auto, admin: auto}
    firewall:
      input:
        policy: drop
        stateful: false
        rules:
          - {allow: tcp, port: 22, from: admin}
          - {reject: udp, ports: [53, "5000-5100"], with: admin-prohibited}
      output: {policy: accept}
"""
    )
    dot = topology_dot(topology)
    assert "input: policy drop, stateless" in dot
    assert "allow tcp 22 from admin (IPv4 only)" in dot  # names, not the subnets
    assert "reject udp 53,5000-5100 with admin-prohibited" in dot
    assert "output: policy accept" in dot
    assert '<font color="#b71c1c">input: policy drop, stateless</font>' in dot
    assert '<font color="#1b5e20">allow tcp 22' in dot
    assert not re.search(r"<font[^>]*></font>", dot)  # dot refuses empty fonts
    render(dot, "svg")  # and real dot accepts the labels
