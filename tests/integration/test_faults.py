"""Faults prove their effect with real traffic between agents, and their undoing.

Each test: traffic works, the fault is applied and traffic fails (or thins out, or slows
down) as the fault says, the fault is undone and traffic works again; where it matters,
the namespaces' links, addresses, routes, qdiscs and nft rules are exactly as before.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Lab
from harness.core.agent import Agent
from harness.errors import AgentError, AgentGone, EnvironmentProblem, UsageError
from harness.observe._faultops import namespace_state
from harness.topology import parse_topology
from tests.support import ROOT, netharness

LAN = str(ROOT / "topologies" / "lan.yaml")
SERVICES = """
name: services
networks: {lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}}
hosts:
  h1: {networks: {lan: auto}}
  h2: {networks: {lan: auto}, services: [{proto: tcp, port: 8080}, {proto: udp, port: 5353}]}
"""


@pytest.fixture
def lab(backend: str) -> Iterator[Lab]:
    with Lab.up(LAN, backend=backend) as lab:
        yield lab


def state(lab: Lab) -> dict[str, Any]:
    paths = {name: host.handle.netns_path for name, host in lab.hosts.items()}
    paths["fabric"] = f"/run/netns/nh-{lab.id}"
    return {name: namespace_state(path) for name, path in paths.items()}


def kernel_has_netem() -> bool:
    """Independently of netharness: the kernel's config, else its module tree."""
    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            return "CONFIG_NET_SCH_NETEM=" in config.read()
    except OSError:
        return any(Path("/lib/modules", os.uname().release).glob("**/sch_netem.ko*"))


def reaches(client: Agent, address: str, port: int, timeout: float = 1.0) -> bool | str:
    """True if a TCP connection and an echo go through, else the errno that stopped it."""
    try:
        conn = client.connect("tcp", address, port, timeout=timeout)
        conn.request("ping", timeout=timeout)
        conn.close()
    except AgentError as exc:
        return exc.errno or str(exc)
    return True


def test_link_down_pulls_the_cable_and_up_plugs_it_back(lab: Lab) -> None:
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    server = h2.agent()
    port = server.listen("tcp").port
    client = h1.agent()
    target = h2.address("lan")
    assert reaches(client, target, port) is True
    before = state(lab)

    link = lab.link("h1", "lan")
    fault = link.down()
    assert reaches(client, target, port) == "ETIMEDOUT"
    assert reaches(h2.agent(), h1.address("lan"), 9, timeout=0.5) == "ETIMEDOUT"
    assert link.down() is fault  # already down: the same fault
    assert "NO-CARRIER" in h1.run(["ip", "link", "show", "lan"]).stdout
    assert "10.0.1.11/24" in h1.run(["ip", "-4", "addr", "show", "lan"]).stdout

    link.up()
    assert not fault.active
    assert reaches(client, target, port) is True
    assert state(lab) == before
    link.up()  # idempotent


def test_partition_cuts_between_groups_only_and_heal_restores_everything(lab: Lab) -> None:
    h1, h2, h3 = (lab.hosts[n] for n in ("h1", "h2", "h3"))
    ports = {}
    agents = {}
    for host in (h1, h2, h3):
        agents[host.name] = host.agent()
        ports[host.name] = agents[host.name].listen("tcp", address="::").port  # both families
    before = state(lab)

    lab.partition(["h1", "h3"], ["h2"])
    assert reaches(agents["h1"], h2.address("lan"), ports["h2"]) == "ETIMEDOUT"
    assert reaches(agents["h2"], h3.address("lan"), ports["h3"]) == "ETIMEDOUT"
    assert reaches(agents["h2"], h1.address("lan", 6), ports["h1"]) == "ETIMEDOUT"
    assert reaches(agents["h1"], h3.address("lan"), ports["h3"]) is True  # same group

    lab.heal()
    assert lab.faults.active == []
    assert reaches(agents["h1"], h2.address("lan"), ports["h2"]) is True
    assert reaches(agents["h2"], h3.address("lan", 6), ports["h3"]) is True
    assert state(lab) == before

    with pytest.raises(UsageError, match="in two groups"):
        lab.partition(["h1", "h2"], ["h2"])
    with pytest.raises(UsageError, match="no host 'h9'"):
        lab.partition(["h1"], ["h9"])


def test_heal_restores_the_exact_state_after_every_kind_of_fault(lab: Lab) -> None:
    before = state(lab)
    lab.link("h1", "lan").down()
    lab.link("h2", "lan").loss(10)
    lab.link("h2", "lan").rate("20mbit")
    lab.link("h3", "lan").rate(10_000_000)
    lab.partition(["h1"], ["h2", "h3"])
    during = state(lab)
    assert during != before
    assert "numgen random mod 10000 < 1000 drop" in during["fabric"]["nft"]
    assert "netharness_fault_" in during["h2"]["nft"]
    assert sum(q[1] == "tbf" for q in during["h3"]["qdiscs"]) == 1
    assert len(lab.faults.active) == 5
    report = lab.diagnostics(["h2"])  # a failing test's report names the faults in place
    faults_part = report.split("--- faults in place\n", 1)[1].splitlines()[:3]
    assert faults_part[0].startswith("loss h2:lan (10 % (")
    assert faults_part[1].startswith("rate h2:lan (20 Mbit/s")
    assert faults_part[2].startswith("partition h1 | h2,h3 (nft table inet netharness_fault_")
    with pytest.raises(UsageError, match="already has a qdisc"):
        lab.link("h3", "lan").rate("1mbit")

    lab.heal()
    assert lab.faults.active == []
    assert state(lab) == before
    log = (lab.ledger_dir / "logs" / "faults.log").read_text().splitlines()
    actions = [json.loads(line)["action"] for line in log]
    assert actions.count("applied") == 5
    assert actions.count("undone") == 5
    assert actions.count("failed") == 1  # the refused second rate


def test_loss_drops_roughly_the_given_share_of_packets(lab: Lab) -> None:
    server = lab.hosts["h2"].agent()
    sock = server.listen("udp", echo=False)
    client = lab.hosts["h1"].agent().connect("udp", lab.hosts["h2"].address("lan"), sock.port)

    def delivered(count: int) -> int:
        seen = len(server.events("datagram"))
        for i in range(count):
            client.send(f"{i}")
        # Wait for the stragglers: until all are in, or none came for 0.6 s (load).
        got, quiet, deadline = -1, 0, time.monotonic() + 10
        while quiet < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = len(server.events("datagram")) - seen
            if now == count:
                return now
            quiet, got = (quiet + 1, got) if now == got else (0, now)
        return got

    assert delivered(20) == 20  # neighbours resolved before the loss starts
    fault = lab.link("h1", "lan").loss(25)
    got = delivered(400)
    # 300 expected; the standard deviation is about 9 packets.
    assert 240 <= got <= 360, f"{got} of 400 arrived with 25 % loss"
    fault.undo()
    assert delivered(200) == 200


def test_rate_limits_throughput_with_tbf(lab: Lab) -> None:
    rate = 2_000_000  # bits per second: 250 kB/s, far below what agents move unlimited
    size = 500_000
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    server = h2.agent()
    listener = server.listen("tcp", echo=False)
    client = h1.agent()

    def transfer_seconds() -> float:
        conn = client.connect("tcp", h2.address("lan"), listener.port)
        accepted = listener.accept()
        started = time.monotonic()
        chunk = b"x" * 100_000
        for _ in range(size // len(chunk)):
            conn.send(chunk)
        received = 0
        while received < size:
            received += len(accepted.recv(timeout=10, limit=1 << 20))
        elapsed = time.monotonic() - started
        conn.close()
        accepted.close()
        return elapsed

    free = transfer_seconds()
    fault = lab.link("h2", "lan").rate(rate)
    limited = transfer_seconds()
    measured = size * 8 / limited
    assert 0.4 * rate <= measured <= 1.3 * rate, f"{measured / 1e6:.2f} Mbit/s under 2 Mbit/s"
    fault.undo()
    assert transfer_seconds() < limited / 2, "the limit is gone after undo"
    assert free < limited / 2


def test_kill_agents_and_restart_bring_back_agents_and_services(backend: str) -> None:
    with Lab.up(parse_topology(SERVICES), backend=backend) as lab:
        h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
        client = h1.agent()
        own = h2.agent()
        address = h2.address("lan")
        assert reaches(client, address, 8080) is True
        before = state(lab)

        assert h2.kill_agents() == 2  # the host's own agent (services) and ours
        with pytest.raises(AgentGone):
            own.listen("tcp")
        assert reaches(client, address, 8080) == "ECONNREFUSED"  # up, but nothing listens
        assert len(lab.faults.active) == 1

        h2.restart()
        assert reaches(client, address, 8080) is True
        assert reaches(client, h2.address("lan", 6), 8080) is True
        udp = client.connect("udp", address, 5353)
        assert udp.request("hello").data == "hello"
        assert lab.hosts["h2"].agent().info().sockets == 0  # a fresh agent
        assert lab.faults.active == []
        now = state(lab)
        assert now["h2"]["addresses"] == before["h2"]["addresses"]
        assert now["h2"]["routes"] == before["h2"]["routes"]


def test_an_attached_lab_undoes_its_faults_when_it_leaves() -> None:
    up = netharness("up", LAN, "--json")
    assert up.returncode == 0, up.stderr
    lab_id = json.loads(up.stdout)["id"]
    try:
        viewer = Lab.attach(lab_id)
        before = state(viewer)
        viewer.down()
        with Lab.attach(lab_id) as attached:
            attached.partition(["h1"], ["h2"])
            attached.link("h3", "lan").rate("5mbit")
            assert state(attached) != before
        with Lab.attach(lab_id) as again:
            assert state(again) == before
    finally:
        netharness("down", lab_id)


def test_a_partition_holds_across_a_router(backend: str) -> None:
    with Lab.up(ROOT / "topologies" / "routed.yaml", backend=backend) as lab:
        h1, r1, h2 = (lab.hosts[n] for n in ("h1", "r1", "h2"))
        port = h2.agent().listen("tcp", address="::").port
        router_port = r1.agent().listen("tcp").port
        client = h1.agent()
        assert reaches(client, h2.address("wan"), port) is True
        with lab.partition(["h1"], ["h2"]):  # lasts for the block
            assert reaches(client, h2.address("wan"), port) == "ETIMEDOUT"
            assert reaches(client, h2.address("wan", 6), port) == "ETIMEDOUT"
            assert reaches(client, r1.address("lan"), router_port) is True  # in no group
        assert lab.faults.active == []
        assert reaches(client, h2.address("wan", 6), port) is True


def test_delay_adds_latency_with_netem_or_says_the_kernel_lacks_it(lab: Lab) -> None:
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    port = h2.agent().listen("tcp").port
    conn = h1.agent().connect("tcp", h2.address("lan"), port)
    before = state(lab)
    link = lab.link("h1", "lan")
    if not kernel_has_netem():
        with pytest.raises(EnvironmentProblem, match="CONFIG_NET_SCH_NETEM"):
            link.delay(50)
        assert lab.faults.active == []
        assert state(lab) == before  # nothing half-applied
        return
    fault = link.delay(50)
    assert conn.request("slow").rtt >= 0.09  # 50 ms each way
    fault.undo()
    assert conn.request("fast").rtt < 0.05
    assert state(lab) == before
