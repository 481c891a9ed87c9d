"""The user's own processes in lab hosts: `run:` at bring-up, `LabHost.start`, logs,
failures (exit 3 with the log's tail, nothing left), stopping, detached labs.

Real processes only: dnsmasq (Debian's dnsmasq-base) serving DNS, python3's http.server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Lab
from harness.core import ledger as _ledger
from harness.core import pgroups
from harness.errors import ProcessFailed, UsageError
from harness.topology import Topology, parse_topology
from tests.integration.conftest import docker_ready

DNSMASQ = (
    "dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --no-resolv --no-hosts"
    " --log-queries --log-facility=- --bind-interfaces --listen-address=10.0.1.53"
    " --address=/lab.test/10.0.1.99"
)
TOPOLOGY = f"""
name: own-processes
networks:
  lan: {{subnet: 10.0.1.0/24}}
hosts:
  dns:
    networks: {{lan: 10.0.1.53}}
    run:
      - name: dnsmasq
        command: {DNSMASQ}
        ready: {{listen: [udp/53, tcp/53]}}
      - name: web
        command: [python3, -m, http.server, "8080", --bind, 10.0.1.53]
        cwd: /usr/share/doc/dnsmasq-base
        ready: {{listen: tcp/8080}}
  client:
    networks: {{lan: 10.0.1.11}}
"""
# A DNS query for www.lab.test, A record, over UDP or TCP; prints the answer's address.
DNS_QUERY = r"""
import socket, struct, sys
proto = sys.argv[1]
name = b"".join(bytes([len(p)]) + p for p in b"www.lab.test".split(b".")) + b"\0"
query = struct.pack("!HHHHHH", 0x4e48, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(query, ("10.0.1.53", 53))
    reply = s.recv(512)
else:
    s = socket.create_connection(("10.0.1.53", 53), timeout=3)
    s.sendall(struct.pack("!H", len(query)) + query)
    length = struct.unpack("!H", s.recv(2))[0]
    reply = b""
    while len(reply) < length:
        reply += s.recv(length - len(reply))
assert reply[:2] == query[:2] and struct.unpack("!H", reply[6:8])[0] == 1, reply
print(socket.inet_ntoa(reply[-4:]))
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _topology(text: str = TOPOLOGY) -> Topology:
    return parse_topology(text, "own-processes.yaml")


def _in_namespace(pid: int, netns_path: str) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns_path).st_ino


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(lab_id: str) -> bool:
    namespaces = [n for n in os.listdir("/run/netns") if n.startswith(f"nh-{lab_id}")]
    return not namespaces and not (_ledger.labs_dir() / lab_id).exists()


@pytest.fixture(scope="module")
def served() -> Iterator[Lab]:
    with Lab.up(_topology()) as lab:
        yield lab


def test_run_programs_serve_dns_on_udp_and_tcp_and_http(served: Lab) -> None:
    client, dns = served.hosts["client"], served.hosts["dns"]
    for proto in ("udp", "tcp"):
        answer = client.run(["python3", "-c", DNS_QUERY, proto])
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == "10.0.1.99"
    fetch = "import urllib.request as u; print(u.urlopen('http://10.0.1.53:8080/copyright').read())"
    page = client.run(["python3", "-c", fetch])
    expected = Path("/usr/share/doc/dnsmasq-base/copyright").read_bytes()
    assert page.returncode == 0, page.stderr
    assert page.stdout.strip() == repr(expected)
    assert list(dns.processes) == ["dnsmasq", "web"]
    for handle in dns.processes.values():
        assert handle.returncode is None
        assert handle.state == "running"
        assert _in_namespace(handle.pid, dns.handle.netns_path)
    assert "query[A] www.lab.test from 10.0.1.11" in dns.processes["dnsmasq"].log_tail()
    assert dns.processes["web"].log == served.ledger_dir / "logs" / "dns" / "web.log"
    assert "GET /copyright" in dns.processes["web"].log.read_text()
    assert served.timings["programs"] - served.timings["wired"] < 5


def test_ready_waits_until_the_socket_listens_and_is_quick(served: Lab) -> None:
    host = served.hosts["client"]
    script = (
        "import socket, time; time.sleep(0.3); s = socket.socket(); s.bind(('', 7070)); "
        "s.listen(); time.sleep(60)"
    )
    started = time.perf_counter()
    handle = host.start(["python3", "-c", script], name="late", ready="tcp/7070")
    waited = time.perf_counter() - started
    try:
        assert 0.3 <= waited < 1.5, waited
        assert 7070 in served.hosts["client"].runtime.call(host.runtime.listening("tcp"))
    finally:
        assert handle.stop() == -signal.SIGTERM
    assert not _alive(handle.pid)


def test_netharness_logs_prints_the_logs_of_a_running_lab(served: Lab) -> None:
    one = _cli("logs", served.id, "dns", "dnsmasq", "--tail", "2")
    assert one.returncode == 0, one.stderr
    assert len(one.stdout.splitlines()) == 2
    every = _cli("logs", served.id, "dns")
    assert every.returncode == 0, every.stderr
    assert f"==> dns/dnsmasq (pid {served.hosts['dns'].processes['dnsmasq'].pid})" in every.stdout
    assert "==> dns/web" in every.stdout
    assert "started, version" in every.stdout
    for argv, says in (
        ([served.id, "dns", "nope"], "has no process 'nope' (processes: dnsmasq, web)"),
        ([served.id, "nohost"], "has no host 'nohost'"),
        (["zzzzzz", "dns"], "no lab 'zzzzzz'"),
    ):
        bad = _cli("logs", *argv)
        assert bad.returncode == 2, bad
        assert says in bad.stderr


def test_diagnostics_show_each_process_state_and_log_tail(served: Lab) -> None:
    text = served.diagnostics(["dns"])
    pid = served.hosts["dns"].processes["dnsmasq"].pid
    assert f"dnsmasq: pid {pid}, running: dnsmasq --keep-in-foreground" in text
    assert "  | dnsmasq[" in text


def test_start_gives_env_cwd_user_and_names(served: Lab) -> None:
    host = served.hosts["client"]
    handle = host.start(
        "sh -c 'echo foo=$FOO; pwd; id -un; echo home=$HOME'",
        env={"FOO": "bar"},
        cwd="/tmp",
        user="nobody",
    )
    assert handle.wait(timeout=5) == 0
    assert handle.name == "sh-1"
    assert host.processes["sh-1"] is handle
    lines = handle.log.read_text().splitlines()
    assert lines == ["foo=bar", "/tmp", "nobody", "home=/nonexistent"], lines
    second = host.start(["sleep", "30"], name="nap")
    try:
        with pytest.raises(UsageError, match="already runs a process 'nap'"):
            host.start(["sleep", "30"], name="nap")
        assert host.start(["true"]).name == "true-1"
    finally:
        second.stop()


def test_start_failing_raises_at_once_and_leaves_the_lab_up(served: Lab) -> None:
    host = served.hosts["client"]
    timeout: dict[str, Any] = {"ready": ["udp/99", "tcp/98"], "ready_timeout": 0.5}
    cases: list[tuple[list[str], dict[str, Any], str, str, float]] = [
        (["no-such-command-x", "-v"], {}, "command not found: no-such-command-x", "", 1.0),
        (
            ["sh", "-c", "echo dying loudly; exit 4"],
            {"ready": "tcp/9"},
            "exited with status 4",
            "| dying loudly",
            1.0,
        ),
        (
            ["sleep", "30"],
            timeout,
            "not ready after 0.5 s: nothing listens on udp/99, tcp/98",
            "",
            1.6,
        ),
    ]
    for argv, options, cause, logged, within in cases:
        started = time.perf_counter()
        with pytest.raises(ProcessFailed) as failed:
            host.start(argv, **options)
        assert time.perf_counter() - started < within
        assert str(failed.value).startswith("host client: process "), failed.value
        assert cause in str(failed.value)
        assert logged in str(failed.value)
        assert failed.value.exit_code == 3
    assert served.state == "up"
    assert host.run(["true"]).returncode == 0
    sleeper = host.processes["sleep-1"]
    assert sleeper.state == "killed by SIGTERM"
    assert not _alive(sleeper.pid)


DAEMON = (  # forks a child into a session of its own, out of the process's group
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid(); print(os.getpid(), flush=True); time.sleep(60)\n"
)
CHILD_IGNORING_TERM = (
    "import signal, subprocess, time\n"
    "subprocess.Popen(['python3', '-c', 'import signal, time; "
    'signal.signal(signal.SIGTERM, signal.SIG_IGN); print("child up", flush=True); '
    "time.sleep(60)'])\n"
    "time.sleep(60)\n"
)


def _group(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def _until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_stop_kills_the_group_with_a_child_ignoring_sigterm(served: Lab) -> None:
    host = served.hosts["client"]
    handle = host.start(["python3", "-c", CHILD_IGNORING_TERM], name="parent")
    _until(lambda: "child up" in handle.log.read_text())
    members = _group(handle.pid)
    assert handle.pid in members, members
    assert len(members) == 2, members
    started = time.perf_counter()
    assert handle.stop(grace=0.5) == -signal.SIGTERM
    took = time.perf_counter() - started
    assert 0.5 <= took < 1.5, took  # the child ignored SIGTERM: SIGKILL after the grace
    assert not any(_alive(pid) for pid in members)


def test_down_leaves_no_process_of_the_users() -> None:
    lab = Lab.up(_topology())
    try:
        host = lab.hosts["client"]
        parent = host.start(["python3", "-c", CHILD_IGNORING_TERM])
        # A daemon that leaves the group (its own session): the namespace's reaper gets it.
        daemon = host.start(["python3", "-c", DAEMON])
        _until(lambda: "child up" in parent.log.read_text() and daemon.log.read_text().strip())
        pids = [*_group(parent.pid), int(daemon.log.read_text().split()[0])]
        pids += [h.pid for h in lab.hosts["dns"].processes.values()]
        assert all(_alive(pid) for pid in pids)
    finally:
        started = time.perf_counter()
        lab.down()
        took = time.perf_counter() - started
    assert not [pid for pid in pids if _alive(pid)]
    assert _gone(lab.id)
    assert took < 2.5, took  # one grace (1 s) for every group at once


FAILING = {
    "dies": (
        "sh -c 'echo cannot bind, giving up; exit 2'",
        "",
        "exited with status 2 before it was ready",
        "cannot bind, giving up",
        2.0,
    ),
    "missing": ("no-such-server --port 80", "", "command not found: no-such-server", None, 2.0),
    "timeout": (
        "sleep 30",
        ", timeout: 1",
        "not ready after 1 s: nothing listens on tcp/8443",
        None,
        4.0,
    ),
}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_a_failing_program_fails_bring_up_at_once_and_leaves_nothing(case: str) -> None:
    command, timeout, cause, logged, within = FAILING[case]
    program = f'{{name: bad, command: "{command}", ready: {{listen: tcp/8443{timeout}}}}}'
    text = TOPOLOGY.replace("  client:\n", f"  client:\n    run:\n      - {program}\n")
    lab_id = _ledger.new_lab_id()
    text = text.replace("--address=/lab.test/", f"--address=/{lab_id}.test/")  # to find it
    started = time.perf_counter()
    with pytest.raises(ProcessFailed) as failed:
        Lab.up(_topology(text), lab_id=lab_id)
    assert time.perf_counter() - started < within
    message = str(failed.value)
    assert message.startswith(f"host client: process bad: {cause}"), message
    if logged:
        assert f"its log ends:\n  | {logged}" in message
    assert _gone(lab_id)
    found = subprocess.run(["pgrep", "-f", f"{lab_id}.test"], capture_output=True, check=False)
    assert not found.stdout


def test_up_with_a_dying_program_exits_3_with_the_log_tail(tmp_path: Path) -> None:
    program = "{name: bad, command: \"sh -c 'echo no luck >&2; exit 5'\", ready: {listen: tcp/1}}"
    text = TOPOLOGY.replace("  client:\n", f"  client:\n    run:\n      - {program}\n")
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    result = _cli("up", str(file))
    assert result.returncode == 3, result
    assert "host client: process bad: exited with status 5 before it was ready" in result.stderr
    assert "| no luck" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_detached_lab_keeps_its_programs_until_down(tmp_path: Path) -> None:
    file = tmp_path / "own.yaml"
    file.write_text(TOPOLOGY)
    up = _cli("up", str(file), "--json")
    assert up.returncode == 0, up.stderr
    lab_id = json.loads(up.stdout)["id"]
    try:
        info = _ledger.find_lab(lab_id).info["hosts"]["dns"]
        pids = [p["pid"] for p in info["processes"].values()]
        assert len(pids) == 2
        assert all(_alive(pid) for pid in pids)
        answer = _cli("exec", lab_id, "client", "python3", "-c", DNS_QUERY, "udp")
        assert answer.stdout.strip() == "10.0.1.99", answer
        logs = _cli("logs", lab_id, "dns", "dnsmasq")
        assert "query[A] www.lab.test from 10.0.1.11" in logs.stdout, logs
    finally:
        down = _cli("down", lab_id)
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if _alive(pid)]
    assert _gone(lab_id)


def test_processes_in_a_docker_host_run_inside_the_container() -> None:
    docker_ready()
    # The image's own tools: netharness/host has python3 and no dnsmasq.
    dnsmasq = f"      - name: dnsmasq\n        command: {DNSMASQ}\n"
    dnsmasq += "        ready: {listen: [udp/53, tcp/53]}\n"
    text = TOPOLOGY.replace(dnsmasq, "").replace("cwd: /usr/share/doc/dnsmasq-base", "cwd: /etc")
    with Lab.up(_topology(text), backend="docker") as lab:
        dns = lab.hosts["dns"]
        assert list(dns.processes) == ["web"]
        fetch = (
            "import urllib.request as u; print(u.urlopen('http://10.0.1.53:8080/hostname').read())"
        )
        page = lab.hosts["client"].run(["python3", "-c", fetch])
        assert page.returncode == 0, page.stderr
        assert "GET /hostname" in dns.processes["web"].log_tail()
        shown = dns.start("sh -c 'echo $FOO; pwd'", env={"FOO": "bar"}, cwd="/tmp")
        assert shown.wait(timeout=10) == 0
        assert shown.log.read_text().splitlines() == ["bar", "/tmp"]
        started = time.perf_counter()
        with pytest.raises(ProcessFailed, match="command not found: dnsmasq"):
            dns.start(DNSMASQ)
        assert time.perf_counter() - started < 2
        group = dns.start(["sh", "-c", "trap '' TERM; sleep 60 & wait"], name="group")
        time.sleep(0.2)
        assert group.stop(grace=0.3) == -signal.SIGKILL
        assert not pgroups.live_members(group.pid)
