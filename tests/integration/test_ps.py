"""Who owns each port: `netharness ps` against `ss -tulpn` run inside the host, and
`check` with `owner:` cells and `process:` services, on real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from harness import Lab
from harness.lab import LabHost
from harness.observe import sockets
from harness.topology import parse_topology
from tests.support import netharness

PS_LAB = """\
name: ps
networks:
  lan: {subnet: 10.0.71.0/24, subnet6: "fd00:71::/64"}
hosts:
  client: {networks: {lan: {address: 10.0.71.11, address6: "fd00:71::11"}}}
  server:
    networks: {lan: {address: 10.0.71.12, address6: "fd00:71::12"}}
    services: [{proto: tcp, port: 80}, {proto: udp, port: 53}]
"""

# A server that forks after binding (three processes share each socket) and a second,
# unprivileged one: the table must name every holder, with its own user.
FORKING = """\
import os, socket, sys, time
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("10.0.71.12", 8081))
tcp.listen()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind(("::", 5353))
for _ in range(2):
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
print("ready", flush=True)
time.sleep(600)
"""
UNPRIVILEGED = """\
import os, socket, time
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
tcp.bind(("::", 8082))
tcp.listen()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 5300))
os.setgid(65534)
os.setuid(65534)
print("ready", flush=True)
time.sleep(600)
"""

Row = tuple[str, str, int, frozenset[tuple[int, str, int]]]  # netid, address, port, holders


@pytest.fixture(scope="module")
def lab(backend: str) -> Iterator[Lab]:
    with Lab.up(parse_topology(PS_LAB, "ps.yaml"), backend=backend) as running:
        yield running


def started(host: LabHost, script: str) -> subprocess.Popen[str]:
    """`python3 -c script` in the host (the image's python for a docker host), started
    the way a user would, not by netharness; returns once it printed `ready`."""
    if host.handle.backend == "docker":
        argv = ["docker", "exec", host.handle.details["container"], "python3", "-c", script]
    else:
        argv = ["ip", "netns", "exec", host.netns, "python3", "-c", script]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def stop(process: subprocess.Popen[str], pids: set[int]) -> None:
    """Kill the started process and `pids` (in a container, `docker exec`'s own process
    is only the client: the server's processes are killed by their root-namespace pid)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.stdout is not None
    process.stdout.close()


def ss_listeners(host: LabHost) -> set[Row]:
    """The independent oracle: iproute2's `ss -H -tulpn` in the host's network namespace,
    run from the root namespace (so its pids are the root pid namespace's)."""
    if host.handle.backend == "docker":
        argv = ["nsenter", f"--net={host.handle.netns_path}", "ss", "-H", "-tulpn"]
    else:
        argv = ["ip", "netns", "exec", host.netns, "ss", "-H", "-tulpn"]
    text = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    rows = set()
    for line in text.splitlines():
        netid, _state, _recv, _send, local, _peer, *process = line.split()
        address, _, port = local.rpartition(":")
        address = address.strip("[]").partition("%")[0]
        holders = re.findall(r'\("([^"]*)",pid=(\d+),fd=(\d+)\)', " ".join(process))
        rows.add(
            (
                netid,
                "::" if address in ("*", "::") else address,
                int(port),
                frozenset((int(pid), comm, int(fd)) for comm, pid, fd in holders),
            )
        )
    return rows


def ps_listeners(table: sockets.SocketTable) -> set[Row]:
    return {
        (
            s.proto,
            s.local[0],
            s.local[1],
            frozenset((o.pid, o.comm, o.fd) for o in s.owners),
        )
        for s in table.sockets
    }


def test_ps_lists_every_listener_as_ss_does_with_pids_users_and_commands(lab: Lab) -> None:
    server = lab.hosts["server"]
    forking, unprivileged = started(server, FORKING), started(server, UNPRIVILEGED)
    table = sockets.table(server, listening=True)
    theirs = {o.pid for s in table.sockets if s.local[1] in (8081, 8082) for o in s.owners}
    try:
        assert ps_listeners(table) == ss_listeners(server)
        by_port = {(s.netid, s.local[1]): s for s in table.sockets}
        # The forked server: one socket, three holders (parent and two children).
        shared = by_port[("tcp", 8081)]
        assert len(shared.owners) == 3
        parent = forking.pid if server.handle.backend == "netns" else None
        if parent is not None:  # the Popen pid is python's own: `ip netns exec` execs
            assert {o.pid for o in shared.owners} - {parent} == {
                o.pid for o in shared.owners if o.ppid == parent
            }
            assert shared.owned_by(parent)
        assert {o.user for o in shared.owners} == {"root"}
        assert shared.owners[0].cmdline[1:] == ("-c", FORKING)
        assert os.path.basename(shared.owners[0].cmdline[0]).startswith("python3")
        assert by_port[("udp6", 5353)].state == "UNCONN"
        # The unprivileged one: its user is nobody's name from the host's own passwd.
        assert [(o.user, o.uid) for o in by_port[("tcp6", 8082)].owners] == [("nobody", 65534)]
        assert by_port[("udp", 5300)].owners[0].pid == by_port[("tcp6", 8082)].owners[0].pid
        # The topology's services belong to the host agent.
        agent = lab.hosts["server"].host_agent.pid
        for key in (("tcp", 80), ("tcp6", 80), ("udp", 53), ("udp6", 53)):
            assert [o.pid for o in by_port[key].owners] == [agent], key
    finally:
        stop(forking, theirs)
        stop(unprivileged, theirs)
    deadline = time.monotonic() + 5  # SIGKILLed processes close their files as they exit
    while {s.local[1] for s in sockets.table(server, listening=True).sockets} != {80, 53}:
        assert time.monotonic() < deadline, sockets.text(sockets.table(server))
        time.sleep(0.02)


def test_all_sockets_show_both_ends_of_a_connection_with_their_owners(lab: Lab) -> None:
    client, server = lab.hosts["client"], lab.hosts["server"]
    app = client.agent()
    conn = app.connect("tcp", "10.0.71.12", 80)
    try:
        seen = sockets.table(client)
        (mine,) = [s for s in seen.sockets if s.local == conn.local]
        assert (mine.state, mine.peer) == ("ESTABLISHED", ("10.0.71.12", 80))
        assert [o.pid for o in mine.owners] == [app.pid]
        deadline = time.monotonic() + 5
        while True:  # the server's agent accepts on its own loop
            theirs = [s for s in sockets.table(server).sockets if s.peer == conn.local]
            if (theirs and theirs[0].owners) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert [(s.state, s.local) for s in theirs] == [("ESTABLISHED", ("10.0.71.12", 80))]
        assert [o.pid for o in theirs[0].owners] == [server.host_agent.pid]
        assert not [s for s in sockets.table(server, listening=True).sockets if not s.listening]
    finally:
        app.close()


def test_ps_command_table_json_and_unknown_names(lab: Lab) -> None:
    text = netharness("ps", lab.id)
    assert text.returncode == 0, text.stderr
    assert "host client: 0 listeners" in text.stdout
    assert "host server: 4 listeners" in text.stdout
    agent = str(lab.hosts["server"].host_agent.pid)
    lines = [line.split() for line in text.stdout.splitlines()]
    assert ["tcp", "0.0.0.0:80", "0.0.0.0:*", "LISTEN", agent, "root"] in [
        line[:6] for line in lines
    ]
    assert ["udp6", "[::]:53", "[::]:*", "UNCONN", agent, "root"] in [line[:6] for line in lines]

    one = netharness("ps", lab.id, "server", "--json")
    assert one.returncode == 0, one.stderr
    data = json.loads(one.stdout)
    assert data["lab"] == lab.id
    assert data["listening_only"] is True
    assert list(data["hosts"]) == ["server"]
    table = data["hosts"]["server"]
    assert table["complete"] is True
    first = table["sockets"][0]
    assert set(first) == {"proto", "state", "local", "peer", "inode", "uid", "owners"}
    assert set(first["owners"][0]) == {
        "pid",
        "fd",
        "ppid",
        "user",
        "uid",
        "comm",
        "command",
        "ancestors",
    }
    expected = sockets.table(lab.hosts["server"], listening=True).to_json()
    assert table == expected

    assert netharness("ps", lab.id, "nosuchhost").returncode == 2
    missing = netharness("ps", "nolab0")
    assert missing.returncode == 2, missing.stderr
    assert "nolab0" in missing.stderr


# A UDP server of the user's: it answers every datagram, so the probe sees it open.
ECHO = """\
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
OWNED = """\
name: owned
networks:
  lan: {subnet: 10.0.72.0/24}
hosts:
  client: {networks: {lan: 10.0.72.11}}
  server:
    networks: {lan: 10.0.72.12}
    run:
      - {name: web, command: "python3 -m http.server 8080 --bind 10.0.72.12",
         ready: {listen: tcp/8080}}
      - name: echo
        command: [python3, -c, ECHO_SCRIPT]
        ready: {listen: udp/5353}
    services: [{proto: tcp, port: 8080, process: web}, {proto: udp, port: 5353, process: echo}]
expect:
  - {from: client, to: server, proto: tcp, port: 8080, state: open, owner: web}
  - {from: client, to: server, proto: udp, port: 5353, state: open, owner: echo}
""".replace("ECHO_SCRIPT", json.dumps(ECHO))


def test_check_passes_when_the_named_processes_own_their_ports_and_names_a_decoy(
    backend: str,
) -> None:
    from harness.checks.probe import check

    with Lab.up(parse_topology(OWNED, "owned.yaml"), backend=backend) as lab:
        server = lab.hosts["server"]
        web, echo = server.processes["web"], server.processes["echo"]
        report = check(lab, lab.topology.expectations, retries=1)
        assert report.passed, report.to_json()
        cells = {v.result.proto: v for v in report.verdicts}
        assert cells["tcp"].owner is not None
        assert cells["tcp"].owner.pid == web.pid
        assert {o.pid for o in cells["tcp"].owner.holders} == {web.pid}
        assert cells["udp"].owner is not None
        assert {o.pid for o in cells["udp"].owner.holders} == {echo.pid}
        assert [(s.label, s.owner.pid, s.passed) for s in report.services] == [
            ("server 8080/tcp", web.pid, True),
            ("server 5353/udp", echo.pid, True),
        ]
        # The agent holds none of them: `process:` services are the user's alone.
        agent = server.host_agent.pid
        held = sockets.table(server, listening=True)
        assert agent not in {o.pid for s in held.sockets for o in s.owners}

        attached = netharness("check", lab.id, "--retries", "1")  # pids from lab.json
        assert attached.returncode == 0, attached.stdout + attached.stderr
        assert f"ok server 8080/tcp: held by web (pid {web.pid})" in attached.stdout

        # Another process takes the port first: web, started again, cannot bind it.
        web.stop()
        decoy = server.start(
            "python3 -m http.server 8080 --bind 10.0.72.12", name="decoy", ready="tcp/8080"
        )
        again = server.start("python3 -m http.server 8080 --bind 10.0.72.12", name="web")
        assert again.wait(10) != 0  # EADDRINUSE
        failed = netharness("check", lab.id, "--retries", "0")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        text = failed.stdout
        assert f"10.0.72.12:8080 is held by decoy: python3 (pid {decoy.pid}" in text, text
        assert f"not by web (pid {again.pid})" in text, text
        assert "✗ open (not by web)" in text, text
        assert f"see: netharness ps {lab.id} server --all" in text, text
        as_json = netharness("check", lab.id, "--retries", "0", "--json")
        assert as_json.returncode == 1, as_json.stdout + as_json.stderr
        data = json.loads(as_json.stdout)
        tcp = next(c for c in data["cells"] if c["proto"] == "tcp")
        assert (tcp["passed"], tcp["owner"]["process"]) == (False, "web")
        assert [h["pid"] for h in tcp["owner"]["holders"]] == [decoy.pid]
        udp = next(c for c in data["cells"] if c["proto"] == "udp")
        assert udp["passed"] is True
        assert [(s["port"], s["passed"]) for s in data["services"]] == [
            (8080, False),
            (5353, True),
        ]

        # Nothing listening at all is a failure too, and says so.
        decoy.stop()
        report = check(lab, lab.topology.expectations[:0], retries=0)
        (web_service, _) = report.services
        assert not report.passed
        assert web_service.owner.problem is not None
        assert "nothing listens on 8080/tcp in server" in web_service.owner.problem


MAIN = """\
name: mainowned
networks:
  lan: {subnet: 10.0.73.0/24}
hosts:
  client: {networks: {lan: 10.0.73.11}}
  web:
    backend: docker
    networks: {lan: 10.0.73.12}
    command: [python3, -m, http.server, "80"]
    services: [{proto: tcp, port: 80, process: main}]
expect:
  - {from: client, to: web, proto: tcp, port: 80, state: open, owner: main}
"""


def test_a_docker_hosts_main_process_owns_what_its_children_hold() -> None:
    from harness.checks.probe import check

    # The topology names its backends: one run (no docker engine fails it, never skips).
    with Lab.up(parse_topology(MAIN, "main.yaml")) as lab:
        web = lab.hosts["web"]
        main = int(web.handle.details["pid"])
        deadline = time.monotonic() + 10  # bring-up does not yet wait for `main`'s ports
        while not sockets.table(web, listening=True).listeners("tcp", 80):
            assert time.monotonic() < deadline, "the container's server never listened"
            time.sleep(0.05)
        (listener,) = sockets.table(web, listening=True).listeners("tcp", 80)
        (holder,) = listener.owners
        assert holder.cmdline == ("python3", "-m", "http.server", "80")
        assert main in (holder.pid, *holder.ancestors)  # root-namespace pids, both
        report = check(lab, lab.topology.expectations, retries=1)
        assert report.passed, report.to_json()
        (verdict,) = report.verdicts
        assert verdict.owner is not None
        assert verdict.owner.pid == main
