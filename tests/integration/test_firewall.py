"""Firewall policies on real namespaces: the ruleset is where it belongs, and each action
does what it says for TCP and UDP, IPv4 and IPv6, on the input, forward and output
chains."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import Lab
from harness.checks.probe import check
from harness.core.agent import Agent
from harness.errors import AgentError
from harness.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 0.5  # a filtered cell costs this
ANSWER_TIMEOUT = 3.0  # cells that must answer get longer: the machine is shared and busy

TOPOLOGY = """\
name: fwtest
networks:
  inside: {subnet: 10.31.1.0/24, subnet6: "fd00:31:1::/64"}
  admin: {subnet: 10.31.9.0/24, subnet6: "fd00:31:9::/64"}
  outside: {subnet: 10.31.2.0/24, subnet6: "fd00:31:2::/64"}
hosts:
  client:
    networks: {inside: auto}
    routes: [{to: default, via: 10.31.1.1}, {to: default, via: "fd00:31:1::1"}]
  laptop:
    networks: {admin: auto}
    routes: [{to: default, via: 10.31.9.1}, {to: default, via: "fd00:31:9::1"}]
    firewall:  # IPv6 works through a drop policy: neighbour discovery is let out
      output: {policy: drop, rules: [{allow: tcp, port: 22}]}
  router:
    networks:
      inside: {address: 10.31.1.1, address6: "fd00:31:1::1"}
      admin: {address: 10.31.9.1, address6: "fd00:31:9::1"}
      outside: {address: 10.31.2.1, address6: "fd00:31:2::1"}
    forwarding: true
    firewall:
      forward:
        policy: drop
        rules:
          - {allow: tcp, ports: [443, 8080, 8443], to: server}
          - {allow: udp, ports: [53, 55], to: server}
          - {reject: tcp, port: 80, to: server}
          - {reject: udp, port: 54, to: server}
          - {allow: tcp, port: 22, from: admin, to: server}
          - {reject: udp, port: 57, to: server, with: admin-prohibited}
  neighbour:
    networks: {outside: auto}
  server:
    networks: {outside: {address: 10.31.2.80, address6: "fd00:31:2::80"}}
    routes: [{to: default, via: 10.31.2.1}, {to: default, via: "fd00:31:2::1"}]
    services:
      - {proto: tcp, port: 443}
      - {proto: tcp, port: 80}
      - {proto: tcp, port: 22}
      - {proto: tcp, port: 8080}
      - {proto: udp, port: 53}
      - {proto: udp, port: 54}
      - {proto: udp, port: 55}
    firewall:
      input:
        policy: drop
        rules:
          - {allow: tcp, ports: [22, 80, 443]}
          - {allow: udp, ports: [53, 54]}
          - {allow: tcp, port: 8080, from: [client, laptop]}
          - {reject: tcp, port: 8443}
          - {reject: udp, port: 55}
"""

# (source, proto, port) -> what the source sees of the server, through the router's
# forward chain (client, laptop) or straight into the server's input chain (neighbour).
CELLS = {
    # forward chain
    ("client", "tcp", 443): "open",
    ("client", "tcp", 80): "ECONNREFUSED",  # rejected by the router: a reset for TCP
    ("client", "tcp", 22): "timeout",  # allowed only from admin: the policy drops it
    ("laptop", "tcp", 22): "open",
    ("laptop", "tcp", 443): "timeout",  # the laptop's own output chain drops it
    ("client", "tcp", 9999): "timeout",
    ("client", "udp", 53): "open",
    ("client", "udp", 54): "ECONNREFUSED",  # rejected by the router: port unreachable
    ("client", "udp", 99): "timeout",
    ("client", "tcp", 8443): "ECONNREFUSED",  # passed by the router, rejected by the server
    # input chain
    ("neighbour", "tcp", 443): "open",
    ("neighbour", "tcp", 8443): "ECONNREFUSED",
    ("neighbour", "tcp", 8080): "timeout",  # the server takes 8080 only from client, laptop
    ("client", "tcp", 8080): "open",
    ("neighbour", "tcp", 9): "timeout",
    ("neighbour", "udp", 53): "open",
    ("neighbour", "udp", 55): "ECONNREFUSED",  # rejected although a service listens
    ("neighbour", "udp", 56): "timeout",
}


def outcome(agent: Agent, proto: str, address: str, port: int, timeout: float) -> str:
    """open, timeout, or the errno the source got: what a port scanner classifies."""
    try:
        sock = agent.connect(proto, address, port, timeout=timeout)
        if proto == "udp":
            sock.request("probe", timeout=timeout)
        sock.close()
    except AgentError as exc:
        # the agent's own timeout, or (under heavy load) the controller's wait for it
        silent = exc.kind == "timeout" or exc.errno == "ETIMEDOUT"
        return "timeout" if silent else str(exc.errno)
    return "open"


def observe(
    lab: Lab, cells: dict[tuple[str, str, int], str], family: int
) -> dict[tuple[str, str, int], str]:
    """What each source sees; only cells expected silent wait as little as TIMEOUT."""
    agents = {source: lab.hosts[source].agent() for source in {c[0] for c in cells}}
    address = lab.hosts["server"].address("outside", family)

    def probe(cell: tuple[str, str, int]) -> str:
        timeout = TIMEOUT if cells[cell] == "timeout" else ANSWER_TIMEOUT
        return outcome(agents[cell[0]], cell[1], address, cell[2], timeout)

    with ThreadPoolExecutor(len(cells)) as pool:  # filtered cells cost one timeout, not many
        return dict(zip(cells, pool.map(probe, cells), strict=True))


def ruleset(netns_path: str) -> list[dict[str, Any]]:
    """The items of `nft -j list ruleset` inside a namespace (JSON is nft's API)."""
    nsenter, nft = shutil.which("nsenter"), shutil.which("nft")
    assert nsenter, "nsenter is needed to read the ruleset back"
    assert nft, "nft is needed to read the ruleset back"
    argv = [nsenter, f"--net={netns_path}", nft, "-j", "list", "ruleset"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    items = json.loads(out)["nftables"]
    assert isinstance(items, list)
    return items


def tables(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i}


@pytest.mark.parametrize("family", [4, 6])
def test_each_action_on_input_and_forward_chains(backend: str, family: int) -> None:
    with Lab.up(parse_topology(TOPOLOGY, "fwtest.yaml"), backend=backend) as lab:
        seen = observe(lab, CELLS, family)
        assert seen == CELLS


def test_reject_with_admin_prohibited_answers_with_an_error_not_silence(backend: str) -> None:
    with Lab.up(parse_topology(TOPOLOGY, "fwtest.yaml"), backend=backend) as lab:
        # ICMP administratively prohibited: the kernel reports it as unreachable (IPv4)
        # or as permission denied (IPv6)
        v4 = {("client", "udp", 57): "EHOSTUNREACH"}
        assert observe(lab, v4, 4) == v4
        v6 = {("client", "udp", 57): "EACCES"}
        assert observe(lab, v6, 6) == v6


def root_tables() -> str:
    """The root namespace's tables, compared as a whole (its iptables-nft rules have no
    JSON form, so `nft -j` fails there)."""
    nft = shutil.which("nft")
    assert nft
    return subprocess.run(
        [nft, "list", "tables"], check=True, capture_output=True, text=True
    ).stdout


def test_the_ruleset_is_inside_the_hosts_and_nowhere_else(backend: str) -> None:
    root_before = root_tables()
    assert "netharness" not in root_before
    with Lab.up(parse_topology(TOPOLOGY, "fwtest.yaml"), backend=backend) as lab:
        items = ruleset(lab.hosts["server"].handle.netns_path)
        assert tables(items) == {("inet", "netharness")}
        chains = {i["chain"]["name"]: i["chain"] for i in items if "chain" in i}
        assert set(chains) == {"input"}
        assert chains["input"]["hook"] == "input"
        assert chains["input"]["policy"] == "drop"
        comments = [i["rule"].get("comment", "") for i in items if "rule" in i]
        assert "netharness: rules[4] line 52" in comments
        router = ruleset(lab.hosts["router"].handle.netns_path)
        assert {i["chain"]["name"] for i in router if "chain" in i} == {"forward"}
        for name in ("client", "neighbour"):  # no policy: no table at all
            assert tables(ruleset(lab.hosts[name].handle.netns_path)) == set()
        assert root_tables() == root_before
        value = lab.hosts["client"].sysctl("net.ipv4.icmp_ratelimit")
        assert value == "0"  # every lab host answers without ICMP rate limits
    assert root_tables() == root_before


def test_raw_nft_is_applied_after_the_policy_and_can_extend_its_table(backend: str) -> None:
    text = TOPOLOGY.replace(
        "          - {reject: udp, port: 55}\n",
        "          - {reject: udp, port: 55}\n"
        "    nft: |\n"
        '      add rule inet netharness input tcp dport 7 counter accept comment "raw"\n',
    )
    with Lab.up(parse_topology(text, "fwtest.yaml"), backend=backend) as lab:
        items = ruleset(lab.hosts["server"].handle.netns_path)
        comments = [i["rule"].get("comment") for i in items if "rule" in i]
        assert comments[-1] == "raw"  # after every rule of the policy


def test_a_bad_policy_exits_2_from_validate_naming_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOPOLOGY.replace("{reject: tcp, port: 8443}", "{reject: tcp, port: 22}"))
    result = subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        f"{bad}:51:13: hosts.server.firewall.input.rules[3]: this rule contradicts rules[0] "
        "(line 48)" in result.stderr
    )


@pytest.mark.parametrize("name", ["three-tier", "dmz"])
def test_shipped_topologies_show_what_they_expect(backend: str, name: str) -> None:
    topology = load_topology(ROOT / "topologies" / f"{name}.yaml")
    cells = topology.expectations
    assert {e.state for e in cells} == {"open", "closed", "filtered", "open|filtered"}
    assert {e.proto for e in cells} == {"tcp", "udp"}
    assert {e.family for e in cells} == {4, 6}
    with Lab.up(topology, backend=backend) as lab:
        report = check(lab, cells)
    wrong = [
        f"line {v.line}: {v.result.source} -> {v.result.target} {v.result.port}/"
        f"{v.result.proto}: expected {v.expected}, saw {v.result.state}"
        for v in report.failed
    ]
    assert not wrong, "\n".join(wrong)
    assert len(report.verdicts) == len(cells)


RATE = """\
name: icmprate
networks:
  lan: {subnet: 10.31.5.0/24, subnet6: "fd00:31:5::/64"}
hosts:
  prober: {networks: {lan: auto}}
  fast: {networks: {lan: auto}}
  limited:
    networks: {lan: auto}
    sysctls: {net.ipv4.icmp_ratelimit: 1000, net.ipv6.icmp.ratelimit: 1000}
"""


def test_closed_udp_ports_all_answer_unless_the_host_restores_the_rate_limit(
    backend: str,
) -> None:
    ports = range(20001, 20061)
    with Lab.up(parse_topology(RATE, "icmprate.yaml"), backend=backend) as lab:
        assert lab.hosts["fast"].sysctl("net.ipv4.icmp_msgs_per_sec") == "1000000"
        assert lab.hosts["limited"].sysctl("net.ipv4.icmp_ratelimit") == "1000"
        agent = lab.hosts["prober"].agent()
        for family in (4, 6):
            seen: dict[str, list[str]] = {}
            for target in ("fast", "limited"):
                address = lab.hosts[target].address("lan", family)
                probes = [(agent, "udp", address, port, 1.0) for port in ports]
                with ThreadPoolExecutor(len(ports)) as pool:
                    seen[target] = list(pool.map(lambda args: outcome(*args), probes))
            assert seen["fast"] == ["ECONNREFUSED"] * len(ports), family
            # the kernel's own limit: one error a second per destination after a burst
            assert seen["limited"].count("timeout") > len(ports) // 2, (family, seen["limited"])
