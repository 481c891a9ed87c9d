"""Pictures of real labs: `graph` of a running lab, `check --svg` of a checked one."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support import netharness

SVG = "{http://www.w3.org/2000/svg}"
FIREWALLED = """
name: pictures
networks:
  lan: {subnet: 10.0.7.0/24, subnet6: "fd00:7::/64"}
hosts:
  client: {networks: {lan: 10.0.7.10}}
  web:
    networks: {lan: 10.0.7.80}
    services: [{proto: tcp, port: 443}]
    firewall: {input: {policy: drop, rules: [{allow: tcp, port: 443}, {reject: tcp, port: 22}]}}
expect:
  - {from: client, to: web, proto: tcp, port: 443, state: open}
  - {from: client, to: web, proto: tcp, port: 22, state: closed}
  - {from: client, to: web, proto: tcp, port: 80, state: open}   # wrong on purpose
"""


def test_check_draws_expected_against_observed(tmp_path: Path) -> None:
    topology = tmp_path / "pictures.yaml"
    topology.write_text(FIREWALLED)
    picture = tmp_path / "check.svg"
    result = netharness("check", str(topology), "--svg", str(picture))
    assert result.returncode == 1, result.stderr  # the wrong expectation fails
    root = ET.fromstring(picture.read_text())
    cells = {
        r.findtext(f"{SVG}title"): r.get("stroke-width")
        for r in root.iter(f"{SVG}rect")
        if r.find(f"{SVG}title") is not None
    }
    assert cells.pop("client → web:22/tcp: closed (expected closed)") is None
    assert cells.pop("client → web:443/tcp: open (expected open)") is None
    # Nothing listens on 80: closed, or filtered where the firewall's policy applies.
    ((title, stroke),) = cells.items()
    assert title in (
        "client → web:80/tcp: closed (expected open)",
        "client → web:80/tcp: filtered (expected open)",
    )
    assert stroke == "3"  # outlined as a mismatch
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "3 cells, 1 not as expected" in texts


def test_graph_of_a_running_lab_shows_its_firewall(tmp_path: Path) -> None:
    topology = tmp_path / "pictures.yaml"
    topology.write_text(FIREWALLED)
    up = netharness("up", str(topology), "--json")
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["id"]
    try:
        result = netharness("graph", lab, "--format", "dot")
        assert result.returncode == 0, result.stderr
        assert "input: policy drop" in result.stdout
        assert "allow tcp 443" in result.stdout
        assert "reject tcp 22" in result.stdout
        assert "10.0.7.80/24" in result.stdout
    finally:
        netharness("down", lab)
