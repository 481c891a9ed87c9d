"""The transport suites against the user's own servers (`service=HOST:PORT/PROTO`).

Real processes only: python3's http.server (TCP, no SO_REUSEPORT, a backlog of 5),
dnsmasq from Debian's dnsmasq-base (UDP and TCP 53), and a tiny python server that sets
SO_REUSEPORT. The server's side of every connection is read from sock_diag and /proc.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from harness import Lab
from harness.checks.suites import Check, run_suite
from harness.errors import UsageError
from harness.observe import diag, sockets
from harness.topology import parse_topology
from tests.support import netharness

DNSMASQ = (
    "dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --no-resolv --no-hosts"
    " --log-facility=- --bind-interfaces --listen-address=10.0.1.80"
    " --address=/lab.test/10.0.1.99"
)
# Listens on 9090 with SO_REUSEPORT set, as a pre-forked server's workers do.
REUSEPORT_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 9090))
s.listen(64)
held = []
while True:
    held.append(s.accept()[0])
"""
TOPOLOGY = f"""
name: real-servers
networks:
  lan: {{subnet: 10.0.1.0/24}}
hosts:
  c1: {{networks: {{lan: 10.0.1.11}}}}
  c2: {{networks: {{lan: 10.0.1.12}}}}
  web:
    networks: {{lan: 10.0.1.80}}
    run:
      - name: http
        command: python3 -m http.server 8080
        cwd: /usr/share/doc/dnsmasq-base
        ready: {{listen: tcp/8080}}
      - name: dns
        command: {DNSMASQ}
        ready: {{listen: [udp/53, tcp/53]}}
      - name: shared
        command: [python3, -c, {json.dumps(REUSEPORT_SERVER)}]
        user: nobody
        ready: {{listen: tcp/9090}}
    services:
      - {{proto: tcp, port: 8080, process: http}}
      - {{proto: udp, port: 53, process: dns}}
      - {{proto: tcp, port: 9090, process: shared}}
"""
# python3's http.server listens with a backlog of 5: more connections at once than that
# are dropped and retried by the kernel for seconds. The suites report that as it is;
# these tests stay under it.
SMALL = {"connections": 6, "processes_per_client": 1}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.up(parse_topology(TOPOLOGY, "real-servers.yaml")) as up:
        yield up


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def failing(checks: list[Check]) -> dict[str, str]:
    return {c.name: f"{c.verdict}: {c.observed}" for c in checks if c.failed}


def left_on_port(lab: Lab, port: int) -> list[str]:
    """Connections of the port still in the kernel of any host (TIME_WAIT included)."""
    found = []
    for host in lab.hosts.values():
        for s in diag.sockets(host, "tcp", 4):
            if port in (s.local[1], s.peer[1]) and s.state != "LISTEN":
                found.append(f"{host.name} {s.state} {s.local} {s.peer}")
    return found


def test_five_tuple_against_http_server(lab: Lab) -> None:
    http = lab.hosts["web"].processes["http"]
    checks = by_name(run_suite("five_tuple", lab, service="web:8080/tcp", **SMALL))
    assert failing(list(checks.values())) == {}
    assert checks["translation"].verdict == "pass"
    assert checks["translation"].observed == "no translation"
    assert checks["tcp-tuples-unique"].verdict == "pass"
    assert checks["tcp-tuples-unique"].evidence["distinct_server_tuples"] == 6
    concurrent = checks["tcp-concurrent-connections"].evidence
    assert concurrent["established"] == concurrent["accepted"] == 6
    assert concurrent["server"]["pids"] == [http.pid]
    assert concurrent["server"]["service"] == "web:8080/tcp"
    udp = checks["udp-flows-agree"]
    assert udp.verdict == "skip"
    assert "not measured" in udp.observed
    assert "TCP service" in udp.observed
    assert left_on_port(lab, 8080) == []  # reset: nothing in TIME_WAIT either


def test_multiplexing_against_http_server(lab: Lab) -> None:
    http = lab.hosts["web"].processes["http"]
    checks = by_name(run_suite("multiplexing", lab, service="web:8080/tcp", connections=2))
    assert failing(list(checks.values())) == {}
    delivered = checks["tcp-delivered-to-owner"]
    assert delivered.verdict == "pass"
    assert delivered.evidence["holders"] == {str(http.pid): 8}  # 2 hosts x 2 processes x 2
    assert "no bytes sent" in delivered.observed
    assert checks["processes-own-ports"].verdict == "pass"
    assert {checks[n].verdict for n in ("udp-delivered-to-owner", "udp-one-socket-serves-all")} == {
        "skip"
    }
    assert left_on_port(lab, 8080) == []


def test_multiplexing_names_a_stranger_holding_the_port(lab: Lab) -> None:
    """A second process joins the declared `shared` service's port (SO_REUSEPORT, same
    user) and takes some connections: the suite names it and fails."""
    web = lab.hosts["web"]
    stranger = web.start(
        ["python3", "-c", REUSEPORT_SERVER], name="stranger", user="nobody", ready="tcp/9090"
    )
    try:
        # "ready" is met by the service's own listener on 9090 already: wait for the
        # stranger's second one, or every connection may reach the service alone.
        deadline = time.monotonic() + 10
        while len(diag.sockets(web, "tcp", 4, states={"LISTEN"}, port=9090)) < 2:
            assert time.monotonic() < deadline, "the stranger never listened on 9090"
            time.sleep(0.02)
        checks = by_name(run_suite("multiplexing", lab, service="web:9090/tcp", connections=32))
    finally:
        stranger.stop()
    owns, delivered = checks["processes-own-ports"], checks["tcp-delivered-to-owner"]
    assert owns.verdict == "fail"
    assert f"pid {stranger.pid}" in owns.observed
    assert delivered.verdict == "fail"  # the kernel spread 32 connections over both
    assert [r["owners"][0]["pid"] for r in delivered.evidence["held_elsewhere"]][:1] == [
        stranger.pid
    ]
    assert set(delivered.evidence["holders"]) == {str(web.processes["shared"].pid)}


def test_ports_service_check_on_declared_services_and_reuseport(lab: Lab) -> None:
    declared = by_name(run_suite("ports", lab, only="service-port-in-use"))
    check = declared["service-port-in-use"]
    assert check.verdict == "pass", check.observed
    rows = {(r["service"], r["listener"]): r for r in check.evidence["services"]}
    assert set(rows) == {
        ("web:8080/tcp", "0.0.0.0:8080"),
        ("web:53/udp", "10.0.1.80:53"),
        ("web:9090/tcp", "0.0.0.0:9090"),
    }
    http = rows[("web:8080/tcp", "0.0.0.0:8080")]
    assert [b["result"] for b in http["binds"]] == ["EADDRINUSE", "EADDRINUSE"]
    assert http["reuseport_read"] is False
    dns = rows[("web:53/udp", "10.0.1.80:53")]
    assert dns["binds"][0]["result"] == "EADDRINUSE"
    assert dns["reuseport_inferred_from_bind"] == dns["reuseport_read"]

    shared = by_name(run_suite("ports", lab, only="service-port-in-use", service="web:9090/tcp"))
    row = shared["service-port-in-use"].evidence["services"][0]
    assert shared["service-port-in-use"].verdict == "pass"
    assert [b["result"] for b in row["binds"]] == ["EADDRINUSE", "bound"]
    assert row["binds"][1]["user"] == "65534"  # the socket's own uid (nobody)
    assert row["reuseport_read"] is True
    assert "SO_REUSEPORT set" in shared["service-port-in-use"].observed
    # The probe left the group: one listener on 9090 again, the service's.
    listeners = sockets.table(lab.hosts["web"], listening=True, port=9090).sockets
    shared_pid = lab.hosts["web"].processes["shared"].pid
    assert [o.pid for s in listeners for o in s.owners] == [shared_pid]


def test_ports_without_a_real_service_skips_the_check() -> None:
    plain = TOPOLOGY.split("  web:", maxsplit=1)[0] + "  web: {networks: {lan: 10.0.1.80}}\n"
    with Lab.up(parse_topology(plain, "plain.yaml")) as lab:
        check = by_name(run_suite("ports", lab, only="service-port-in-use"))["service-port-in-use"]
    assert check.verdict == "skip"
    assert "no service of a process of the user's" in check.observed


def test_a_service_where_nothing_listens_is_a_usage_error(lab: Lab) -> None:
    for suite in ("five_tuple", "multiplexing", "ports"):
        with pytest.raises(UsageError, match="nothing listens on 9999/tcp in web") as caught:
            run_suite(suite, lab, service="web:9999/tcp")
        assert "0.0.0.0:8080" in str(caught.value)  # what does listen there is named
    with pytest.raises(UsageError, match="is UDP"):
        run_suite("five_tuple", lab, service="web:53/udp")
    with pytest.raises(UsageError, match="HOST:PORT/PROTO"):
        run_suite("five_tuple", lab, service="web:8080")


def test_the_cli_takes_the_service_on_a_running_lab(lab: Lab) -> None:
    ran = netharness(
        "suite",
        "five_tuple",
        lab.id,
        "--json",
        "--set",
        "five_tuple.service=web:8080/tcp",
        "--set",
        "five_tuple.connections=6",
        "--set",
        "five_tuple.processes_per_client=1",
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    report = json.loads(ran.stdout)
    verdicts = {c["check"]: c["verdict"] for c in report["checks"]}
    assert verdicts["udp-flows-agree"] == "skip"
    assert report["passed"] is True
    assert "1 skipped (not applicable)" in report["summary"]
    bad = netharness("suite", "five_tuple", lab.id, "--set", "five_tuple.service=web:9999/tcp")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "nothing listens on 9999/tcp in web" in bad.stderr
