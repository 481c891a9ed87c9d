"""Hosts that are existing machines (`ssh:`): what the resolved model says about them."""

from __future__ import annotations

from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from harness.errors import TopologyError
from harness.topology import SshTarget, load_topology, parse_topology

TEXT = """\
name: ssh-pair
networks:
  lan: {subnet: 10.0.5.0/24, subnet6: "fd00:5::/64"}
hosts:
  a:
    networks: {lan: 10.0.5.11}
    ssh: {address: 10.0.5.11, user: tester, key: keys/id_a, known_hosts: ~/kh}
    services: [{proto: tcp, port: 8443}]
  b:
    networks: {lan: 10.0.5.12}
    ssh: {address: b.example.net, port: 2222}
  local: {networks: {lan: auto}}
"""


def test_an_ssh_block_makes_an_ssh_host_with_paths_from_the_file_folder(tmp_path: Path) -> None:
    path = tmp_path / "pair.yaml"
    path.write_text(TEXT, encoding="utf-8")
    topology = load_topology(path)
    a, b, local = (topology.hosts[n] for n in ("a", "b", "local"))
    assert a.backend == b.backend == "ssh"
    assert local.backend == "netns"
    assert local.ssh is None
    assert a.ssh == SshTarget("10.0.5.11", 22, "tester", "keys/id_a", "~/kh")
    assert a.ssh is not None
    assert a.ssh.key_file == str(tmp_path / "keys" / "id_a")  # from the file's folder
    assert a.ssh.known_hosts_file == str(Path.home() / "kh")
    assert b.ssh == SshTarget("b.example.net", 2222, None, None, None)


def test_an_ssh_host_gets_only_the_addresses_written(tmp_path: Path) -> None:
    topology = parse_topology(TEXT, "<string>")
    lan = topology.hosts["a"].interface("lan")
    assert lan.address == IPv4Interface("10.0.5.11/24")
    assert lan.address6 is None  # never assigned: the machine has what it has
    # automatic addresses of other hosts skip the ssh hosts' ones
    assert topology.hosts["local"].interface("lan").address == IPv4Interface("10.0.5.1/24")


def test_configuring_an_ssh_host_is_refused_with_the_place() -> None:
    text = TEXT.replace("    services:", "    forwarding: true\n    services:")
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, "pair.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.path) == (8, "hosts.a.forwarding")
    assert "does not change its forwarding" in problem.message


def test_a_network_of_only_existing_machines_may_use_any_subnet() -> None:
    text = """\
name: office
networks:
  office: {subnet: 192.168.1.0/24}
hosts:
  a: {networks: {office: 192.168.1.20}, ssh: {address: 192.168.1.20}}
  b: {networks: {office: 192.168.1.21}, ssh: {address: b.office.example}}
"""
    topology = parse_topology(text, "office.yaml")
    assert str(topology.networks["office"].subnet) == "192.168.1.0/24"
    # A host made here on it would put real addresses into a lab: still refused.
    with_lab_host = text + "  c: {networks: {office: 192.168.1.22}}\n"
    with pytest.raises(TopologyError) as caught:
        parse_topology(with_lab_host, "office.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.path) == (3, "networks.office.subnet")
    assert "outside the address ranges for labs" in problem.message
