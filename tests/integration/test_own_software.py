"""topologies/own-software.yaml, the README's "Testing your own software", as a user runs it:
a Debian package's server (dnsmasq) in a netns host, a python-less image on a docker host
(examples/busybox-image.sh, `make example-image`), owners checked, ps and logs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import docker_ready
from tests.integration.rootns import snapshot
from tests.support import ROOT, netharness

EXAMPLE = str(ROOT / "topologies" / "own-software.yaml")
IMAGE = "netharness-example/busybox:1"


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The example's image: built here the way `make example-image` does, unless the user
    has it already (then it is theirs, and stays)."""
    docker_ready()
    present = subprocess.run(
        ["docker", "image", "inspect", IMAGE], check=False, capture_output=True
    )
    if present.returncode != 0:
        built = subprocess.run(
            ["sh", str(ROOT / "examples" / "busybox-image.sh"), IMAGE],
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, built.stderr
    try:
        yield IMAGE
    finally:
        if present.returncode != 0:
            subprocess.run(["docker", "image", "rm", "-f", IMAGE], check=False, capture_output=True)


def test_check_of_the_example_passes_with_every_owner(image: str) -> None:
    before = snapshot()
    result = netharness("check", EXAMPLE, "--json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    owners = {c["owner"]["process"] for c in report["cells"] if c.get("owner")}
    assert all(c["owner"]["passed"] for c in report["cells"] if c.get("owner"))
    assert owners == {"dnsmasq", "main"}, report
    assert before.difference(snapshot()) == []


def test_ps_and_logs_of_the_running_example(image: str) -> None:
    up = netharness("up", EXAMPLE, "--json", timeout=120)
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["id"]
    try:
        listed = json.loads(netharness("ps", lab, "--json").stdout)["hosts"]
        # tcp6: an IPv6 or dual-stack socket, as ss says it
        owned = {
            (host, s["proto"].rstrip("6"), s["local"]["port"]): {o["comm"] for o in s["owners"]}
            for host, table in listed.items()
            for s in table["sockets"]
        }
        assert owned[("dns", "udp", 53)] == {"dnsmasq"}
        assert owned[("dns", "tcp", 53)] == {"dnsmasq"}
        assert {"httpd", "busybox"} & owned[("web", "tcp", 80)], owned
        probe = netharness("probe", lab, "client", "dns:53/udp")
        assert "open" in probe.stdout, probe.stdout + probe.stderr
        logs = netharness("logs", lab, "dns", "dnsmasq")
        assert logs.returncode == 0, logs.stderr
        assert "started, version" in logs.stdout
        assert "query[NS]" in logs.stdout  # the probe's DNS query, logged by dnsmasq
    finally:
        assert netharness("down", lab).returncode == 0


HELD = """\
name: held
networks:
  lan: {subnet: 10.0.8.0/24}
hosts:
  c: {networks: {lan: 10.0.8.11}}
  s:
    networks: {lan: 10.0.8.12}
    run:
      - name: web
        command: python3 -m http.server 8080 --bind 10.0.8.12
        ready: {listen: tcp/8080}
      - name: other
        command: python3 -m http.server 9090 --bind 10.0.8.12
        ready: {listen: tcp/9090}
    services:
      - {proto: tcp, port: 8080, process: web}
      - {proto: tcp, port: 9090, process: web}
expect:
  - {from: c, to: s, proto: tcp, port: 8080, state: open, owner: web}
"""


def test_pytest_reports_each_process_service_as_an_item(pytester: pytest.Pytester) -> None:
    before = snapshot()
    (pytester.path / "held.yaml").write_text(HELD)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "held.yaml", "-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*held.yaml::c->s:8080/tcp open PASSED*",
            "*held.yaml::s:8080/tcp held by web PASSED*",
            "*held.yaml::s:9090/tcp held by web FAILED*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*s 9090/tcp: expected held by web", "observed: *9090 is held by other: python3 (pid *"]
    )
    assert before.difference(snapshot()) == []


@pytest.mark.parametrize("service", ["web:80/tcp", "dns:53/tcp"])
def test_five_tuple_against_the_examples_real_servers(image: str, service: str) -> None:
    # web: busybox httpd on a dual-stack [::]:80 in a container (IPv4 clients arrive as
    # IPv4-mapped sockets); dns: dnsmasq behind the host's firewall
    settings = ["--set", f"five_tuple.service={service}", "--set", "five_tuple.connections=20"]
    result = netharness("suite", "five_tuple", EXAMPLE, *settings, "--json", timeout=180)
    report = json.loads(result.stdout)
    verdicts = {c["check"]: c for c in report["checks"]}
    assert result.returncode == 0, json.dumps(report, indent=1)
    assert verdicts["translation"]["observed"].startswith("no translation")
    assert {c["verdict"] for c in report["checks"]} == {"pass", "skip"}
