"""The docker backend on the real engine: containers as hosts, mixed labs, cleanup.

These tests need a Docker engine and the host image (`make image`); without them they
fail with the reason, they never skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Lab
from harness.backends.docker import CAPABILITIES, HOST_LABEL, LAB_LABEL
from harness.core import ledger
from harness.core.image import DEFAULT_IMAGE
from harness.topology import parse_topology
from tests.support import ROOT, netharness

MIXED = """\
name: mixed
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
hosts:
  h1: {networks: {lan: 10.0.1.11}}
  h2:
    networks: {lan: 10.0.1.12}
    backend: docker
    services: [{proto: tcp, port: 80}, {proto: udp, port: 53}]
  h3: {networks: {lan: 10.0.1.13}, backend: docker}
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        pytest.fail(f"the docker backend's tests need a Docker engine: {exc}", pytrace=False)
    try:
        client.images.get(DEFAULT_IMAGE)
    except ImageNotFound:
        pytest.fail(f"{DEFAULT_IMAGE} is missing: run `make image`", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def mixed(engine: Any) -> Iterator[Lab]:
    with Lab.up(parse_topology(MIXED, "mixed.yaml")) as lab:
        yield lab


def _containers(engine: Any, lab_id: str) -> list[Any]:
    return list(
        engine.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{LAB_LABEL}={lab_id}"}
        )
    )


def test_hosts_are_locked_down_containers_without_a_network(engine: Any, mixed: Lab) -> None:
    assert mixed.hosts["h1"].handle.backend == "netns"
    containers = {c.labels[HOST_LABEL]: c for c in _containers(engine, mixed.id)}
    assert set(containers) == {"h2", "h3"}
    for name, container in containers.items():
        config = container.attrs["HostConfig"]
        assert container.name == f"nh-{mixed.id}-{name}"
        assert config["NetworkMode"] == "none"
        assert config["Privileged"] is False
        assert config["CapDrop"] == ["ALL"]
        assert sorted(config["CapAdd"]) == sorted(CAPABILITIES)
        assert config["SecurityOpt"] == ["no-new-privileges"]
        assert config["Init"] is True
        assert config["PidMode"] == ""  # a pid namespace of its own
        # Its network namespace, named like a netns host's for the lab's life.
        pid = container.attrs["State"]["Pid"]
        path = mixed.hosts[name].handle.netns_path
        assert path == f"/run/netns/nh-{mixed.id}-{name}"
        assert os.stat(path).st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino
    # Inside, only what the capability set allows: no NET_ADMIN, so no address changes.
    denied = mixed.hosts["h2"].run(["ip", "addr", "add", "10.0.1.99/24", "dev", "lan"])
    assert denied.returncode != 0
    assert "not permitted" in denied.stderr
    status = mixed.hosts["h2"].run(["grep", "-E", "^(CapEff|NoNewPrivs)", "/proc/self/status"])
    # CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, KILL 5, SETGID 6, SETUID 7, NET_BIND_SERVICE 10
    assert "CapEff:\t00000000000004eb" in status.stdout
    assert "NoNewPrivs:\t1" in status.stdout
    # The agents run beside the containers, in their network namespaces, not in them.
    agent = mixed.hosts["h2"].host_agent
    h2_netns = mixed.hosts["h2"].handle.netns_path
    assert os.stat(f"/proc/{agent.pid}/ns/net").st_ino == os.stat(h2_netns).st_ino
    assert os.stat(f"/proc/{agent.pid}/ns/pid").st_ino == os.stat("/proc/self/ns/pid").st_ino


def test_mixed_lab_passes_tcp_and_udp_both_ways(mixed: Lab) -> None:
    h1, h2, h3 = (mixed.hosts[h] for h in ("h1", "h2", "h3"))
    for client in (h1.agent(), h3.agent()):  # from a namespace and from a container
        for family in (4, 6):
            for proto, port in (("tcp", 80), ("udp", 53)):
                conn = client.connect(proto, h2.address("lan", family), port)
                echo = conn.request(f"{proto} over IPv{family}")
                assert echo.data == f"{proto} over IPv{family}"
                assert tuple(echo.peer) == tuple(conn.local)  # no NAT in the path
                conn.close()
    # A container as the client of a namespace host's listener, on a port below 1024.
    server = h1.agent()
    listener = server.listen("tcp", port=443)
    conn = h3.agent().connect("tcp", h1.address("lan"), listener.port)
    echo = conn.request("back")
    assert (echo.pid, echo.data) == (server.pid, "back")
    assert echo.peer[0] == h3.address("lan")


def test_commands_run_inside_the_container_with_stdin_and_exit_codes(mixed: Lab) -> None:
    host = mixed.hosts["h3"]
    assert host.run(["hostname"]).stdout.strip() == "h3"
    assert host.run(["cat"], input="through stdin").stdout == "through stdin"
    failed = host.run(["sh", "-c", "echo oops >&2; exit 7"])
    assert (failed.returncode, failed.stderr) == (7, "oops\n")
    assert host.run(["ip", "-br", "addr", "show", "lan"]).stdout.split()[2] == "10.0.1.13/24"


def test_a_missing_image_is_an_environment_problem_that_names_the_fix(
    engine: Any, tmp_path: Path
) -> None:
    topology = tmp_path / "absent.yaml"
    topology.write_text(
        "name: absent\nhosts:\n  h1: {backend: docker, image: 'netharness/absent:none'}\n"
    )
    result = netharness("up", str(topology))
    assert result.returncode == 3, result.stderr
    assert "image netharness/absent:none is not on this machine" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything was made: no ledger left, so no container could be.
    # (Other runs make containers on this machine meanwhile, so counting them would lie.)
    assert not [r for r in ledger.list_labs() if r.info.get("topology") == "absent"]


def test_up_backend_docker_keeps_services_after_up_exits_then_down_leaves_nothing(
    engine: Any, tmp_path: Path
) -> None:
    topology = tmp_path / "served.yaml"
    topology.write_text(MIXED)
    up = netharness("up", str(topology), "--backend", "docker", "--json")
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["id"]
    try:
        assert len(_containers(engine, lab)) == 3
        ran = netharness("exec", lab, "h1", "--", "hostname")
        assert (ran.returncode, ran.stdout.strip()) == (0, "h1")
        # `up` has exited; the hosts' agents live on, and so does h2's service.
        served = netharness("exec", lab, "h1", "--", "python3", "-c", CONNECT)
        assert served.returncode == 0, served.stderr
    finally:
        assert netharness("down", lab).returncode == 0
    assert _containers(engine, lab) == []


CONNECT = "import socket; socket.create_connection(('10.0.1.12', 80), timeout=5).close()"


def test_containers_of_a_killed_controller_are_gone_within_ten_seconds(engine: Any) -> None:
    program = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from harness import Lab
from harness.core import ledger
lab = Lab.up({str(ROOT / "topologies" / "lan.yaml")!r}, backend="docker")
agents = [lab.hosts[h].agent() for h in lab.hosts]
agents += [lab.hosts[h].agent(user="nobody") for h in lab.hosts]  # no parent-death signal
print(lab.id, *(a.pid for a in agents), flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lab, *pids = proc.stdout.readline().split()
    assert len(_containers(engine, lab)) == 3
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)  # beside the containers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    killed = time.monotonic()
    while _containers(engine, lab) and time.monotonic() - killed < 10:
        time.sleep(0.1)
    assert _containers(engine, lab) == []  # and every process that was in them
    # The agents beside them held their namespaces: gone too, and the namespaces' names.
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"nh-{lab}")]


def test_clean_removes_dead_labs_containers_and_nothing_foreign(engine: Any) -> None:
    with Lab.up(parse_topology(MIXED, "mixed.yaml")) as live:
        # A foreign container, and one wearing the live lab's label: neither is ours.
        foreign = engine.containers.create(DEFAULT_IMAGE, ["true"], network_mode="none")
        lookalike = engine.containers.create(
            DEFAULT_IMAGE,
            ["true"],
            network_mode="none",
            labels={LAB_LABEL: live.id, HOST_LABEL: "h2"},
        )
        try:
            result = netharness("clean")
            assert result.returncode == 0, result.stderr
            assert len(_containers(engine, live.id)) == 3  # two hosts and the look-alike
            foreign.reload()
            lookalike.reload()
        finally:
            foreign.remove(force=True)
            lookalike.remove(force=True)
    assert _containers(engine, live.id) == []


def test_three_tier_on_containers_passes_the_same_check(engine: Any) -> None:
    up = netharness(
        "up", str(ROOT / "topologies" / "three-tier.yaml"), "--backend", "docker", "--json"
    )
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["id"]
    try:
        assert {c.labels[HOST_LABEL] for c in _containers(engine, lab)} == set(
            json.loads(up.stdout)["hosts"]
        )
        check = netharness("check", lab, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert " 0 failed" in check.stdout
    finally:
        assert netharness("down", lab).returncode == 0


def test_image_build_reuses_a_current_image_and_calls_another_recipe_stale(
    engine: Any,
) -> None:
    import io
    import tarfile

    from harness.core.image import RECIPE_LABEL, machine_recipe, status

    reused = netharness("image", "build")
    assert reused.returncode == 0, reused.stderr
    assert "is up to date" in reused.stderr + reused.stdout
    assert status(engine, machine_recipe()) == "current"
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    tag = f"netharness-test/stale:{os.getpid()}"
    engine.api.import_image_from_data(
        empty.getvalue(),
        repository=tag.split(":", maxsplit=1)[0],
        tag=tag.split(":")[1],
        changes=[f"LABEL {RECIPE_LABEL}=0000000000000000"],
    )
    try:
        assert status(engine, machine_recipe(), tag) == "stale"
        assert status(engine, machine_recipe(), f"{tag}-absent") == "missing"
    finally:
        engine.images.remove(tag)
