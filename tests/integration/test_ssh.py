"""The ssh backend against real OpenSSH servers running in the hosts of a netns lab.

The controller reaches them through sockets made in the lab's `ctl` host (see sshd.py):
the suites, probes and `expect:` run across ssh hosts exactly as on a lab; host keys are
refused before any authentication (the servers' DEBUG logs show no userauth request);
a controller killed with SIGKILL leaves no agent and no temporary directory behind.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Lab
from harness.checks import probe
from harness.checks.suites import run_suite
from harness.core import _netns, ledger
from harness.errors import BackendError, HarnessError, HostKeyRefused
from harness.observe import diag
from harness.topology import parse_topology
from hostagent.owners import AGENT_COMM
from tests.integration.sshd import ADDRESSES, SshdLab

REPO = Path(__file__).resolve().parents[2]
# What sshd logs (LogLevel DEBUG) once a client starts authenticating, by any method.
AUTH_MARKS = ("userauth-request", "Accepted ", "Failed ", "Postponed ", "authentication")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdLab]:
    with SshdLab(tmp_path_factory.mktemp("sshd")) as servers:
        yield servers


@pytest.fixture(scope="module")
def lab(sshd: SshdLab) -> Iterator[Lab]:
    with Lab.up(sshd.topology(), backend_options={"ssh_options": sshd.options()}) as running:
        yield running


def remote_dirs(sshd: SshdLab) -> set[str]:
    """The agents' temporary directories (the machines' TMPDIR is the fixture's own)."""
    return {str(p) for p in sshd.remote_tmp.glob("netharness-*")}


def left_on(sshd: SshdLab, name: str, directory: str) -> dict[int, str]:
    """pid -> name of every process of ours on machine `name`: python3 running the zipapp
    in `directory` (the helper, its fork server, agents), and what they started."""
    inode = os.stat(sshd.netns_of(name)).st_ino
    found: dict[int, str] = {}
    for pid in _netns.pids_in({inode}):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if f"{directory}/agent.pyz".encode() in cmdline:
            found[pid] = comm
    return found


def agents_in(sshd: SshdLab, name: str, directory: str) -> list[int]:
    """The agent processes of `directory`'s helper in machine `name`."""
    return [pid for pid, comm in left_on(sshd, name, directory).items() if comm == AGENT_COMM]


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_hosts_are_the_machines_with_no_namespace_here(lab: Lab, sshd: SshdLab) -> None:
    a = lab.hosts["a"]
    assert a.handle.backend == "ssh"
    assert a.handle.netns_path == ""
    directory = a.handle.details["dir"]
    assert Path(directory).parent == sshd.remote_tmp  # mkdtemp there, in its TMPDIR
    assert Path(directory).stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in Path(directory).iterdir()) == ["agent.pyz"]
    info = a.host_agent.info()
    assert info.netns == f"net:[{os.stat(sshd.netns_of('a')).st_ino}]"  # in machine a
    result = a.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert a.sysctl("net.ipv4.ip_unprivileged_port_start") == "80"


def test_diag_through_the_agent_is_the_kernels_view(lab: Lab, sshd: SshdLab) -> None:
    remote = diag.sockets(lab.hosts["b"], "tcp", 4)
    local = diag.sockets_in(sshd.netns_of("b"), "tcp", 4)
    # The ssh connections come and go; the listeners stay and must be identical.
    listening = {s for s in remote if s.state == "LISTEN"}
    assert listening == {s for s in local if s.state == "LISTEN"}
    assert {s.local for s in listening} >= {(ADDRESSES["b"], 22), ("0.0.0.0", 8443)}
    udp = diag.sockets(lab.hosts["b"], "udp", 4, states=["UNCONN"])
    assert ("0.0.0.0", 8443) in {s.local for s in udp}


def test_transport_suites_pass_across_ssh_hosts(lab: Lab) -> None:
    runs: dict[str, dict[str, Any]] = {
        "multiplexing": {"server": "a", "clients": ["b", "c"], "processes": 10},
        "five_tuple": {"server": "a", "clients": ["b", "c"], "connections": 200},
        "ports": {"server": "a", "clients": ["b", "c"]},
    }
    failed = []
    for suite, options in runs.items():
        checks = run_suite(suite, lab, **options)
        assert checks
        failed += [f"{c.suite}/{c.name}: {c.verdict} {c.observed}" for c in checks if c.failed]
    assert failed == []


def test_probes_and_expectations_pass_across_ssh_hosts(lab: Lab) -> None:
    report = probe.check(lab, lab.topology.expectations)
    assert len(report.verdicts) == 5
    assert report.passed, report.summary()


def _log_offsets(sshd: SshdLab) -> dict[str, int]:
    return {n: s.log.stat().st_size for n, s in sshd.servers.items()}


def _log_since(sshd: SshdLab, offsets: dict[str, int], name: str) -> str:
    with open(sshd.servers[name].log, "rb") as log:
        log.seek(offsets[name])
        return log.read().decode(errors="replace")


def test_an_unknown_host_key_is_refused_before_authentication(
    sshd: SshdLab, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    before, offsets = remote_dirs(sshd), _log_offsets(sshd)
    topology = sshd.topology(known_hosts=empty, hosts=("a",))
    with pytest.raises(HostKeyRefused) as caught:
        Lab.up(topology, backend_options={"ssh_options": sshd.options()})
    message = str(caught.value)
    key = (sshd.dir / "host_a.pub").read_text().split()
    keygen = ["ssh-keygen", "-lf", str(sshd.dir / "host_a.pub")]
    expected = subprocess.run(keygen, capture_output=True, text=True, check=True).stdout.split()[1]
    assert f"host a: the host key of {ADDRESSES['a']} is not known: {key[0]} {expected}" in message
    assert "--trust-new-host-keys" in message
    log = _log_since(sshd, offsets, "a")
    assert "Connection from 10.0.77.2" in log  # it did connect, and went no further:
    assert not [mark for mark in AUTH_MARKS if mark in log], log
    assert empty.read_text() == ""
    assert remote_dirs(sshd) == before


def test_a_changed_host_key_is_refused_even_when_trusting_new_keys(
    sshd: SshdLab, tmp_path: Path
) -> None:
    wrong = tmp_path / "known_hosts"
    b_key = " ".join((sshd.dir / "host_b.pub").read_text().split()[:2])
    wrong.write_text(f"{ADDRESSES['a']} {b_key}\n")  # b's key written down for a
    offsets = _log_offsets(sshd)
    options = sshd.options(trust_new_host_keys=True, save_host_keys=True)
    with pytest.raises(HostKeyRefused, match="has CHANGED") as caught:
        Lab.up(
            sshd.topology(known_hosts=wrong, hosts=("a",)),
            backend_options={"ssh_options": options},
        )
    assert "ssh-keygen -R" in str(caught.value)
    log = _log_since(sshd, offsets, "a")
    assert not [mark for mark in AUTH_MARKS if mark in log], log
    assert wrong.read_text() == f"{ADDRESSES['a']} {b_key}\n"


def test_trusting_new_keys_is_explicit_and_saving_them_too(sshd: SshdLab, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    topology = sshd.topology(known_hosts=known, hosts=("a",))
    trust = sshd.options(trust_new_host_keys=True)
    with Lab.up(topology, backend_options={"ssh_options": trust}) as lab:
        assert lab.hosts["a"].host_agent.info().uid == 0
    assert known.read_text() == ""  # trusted for this run, not remembered
    save = sshd.options(trust_new_host_keys=True, save_host_keys=True)
    with Lab.up(topology, backend_options={"ssh_options": save}):
        pass
    key = " ".join((sshd.dir / "host_a.pub").read_text().split()[:2])
    assert known.read_text() == f"{ADDRESSES['a']} {key}\n"
    with Lab.up(topology, backend_options={"ssh_options": sshd.options()}):
        pass  # now known: no opt-in needed


CONTROLLER = """\
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from harness import Lab
from tests.integration.sshd import SshdLab, connect_from
from harness.core._ssh import SshOptions
from harness.topology import load_topology

lab = Lab.up(load_topology({topology!r}),
             backend_options={{"ssh_options": SshOptions(connect=connect_from({ctl!r}))}})
for host in lab.hosts.values():
    host.agent()  # a second application on each machine
dirs = {{n: h.handle.details["dir"] for n, h in lab.hosts.items()}}
print(json.dumps({{"lab": lab.id, "dirs": dirs}}), flush=True)
sys.stdin.read()
"""


def relays_of(lab_id: str) -> list[int]:
    """The ssh relay processes of a lab, on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"harness.core._ssh_relay" in cmdline and any(
            part.endswith(f"/{lab_id}".encode()) for part in cmdline
        ):
            found.append(int(entry.name))
    return found


def wait_until_nothing_left(sshd: SshdLab, lab_id: str, dirs: dict[str, str]) -> None:
    """Poll (the machines clean up on their own when a connection drops) for at most 20 s
    until no process, no directory, no relay and no ledger of the lab are left."""
    deadline = time.monotonic() + 20
    while True:
        left: dict[str, object] = {n: left_on(sshd, n, d) for n, d in dirs.items()}
        left |= {d: Path(d).exists() for d in dirs.values()}
        left |= {"relay": relays_of(lab_id), "ledger": (ledger.labs_dir() / lab_id).exists()}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(left.values()), left


def test_a_killed_controller_leaves_no_agent_and_no_directory(
    sshd: SshdLab, tmp_path: Path
) -> None:
    topology = sshd.topology(hosts=("a", "c"))  # no services (the module's lab has them)
    path = tmp_path / "over-ssh.yaml"
    path.write_text(topology.text)
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER.format(repo=str(REPO), topology=str(path), ctl=sshd.ctl_netns))
    controller = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert controller.stdout is not None
        said = json.loads(controller.stdout.readline())
        dirs = said["dirs"]
        assert sorted(dirs) == ["a", "c"]
        for name, directory in dirs.items():
            assert Path(directory, "agent.pyz").exists()
            assert len(agents_in(sshd, name, directory)) == 2
        assert len(relays_of(said["lab"])) == 1
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        wait_until_nothing_left(sshd, said["lab"], dirs)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
        assert controller.stdin is not None
        controller.stdin.close()
        assert controller.stdout is not None
        controller.stdout.close()


def test_the_command_line_refuses_unknown_keys_unless_told_to_trust_them(
    sshd: SshdLab, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    path = tmp_path / "over-ssh.yaml"
    path.write_text(sshd.topology(known_hosts=empty, port=9443).text)  # the module's lab has 8443
    # The controller runs in the lab's `ctl` network (nsenter: that namespace only).
    netharness = [sys.executable, "-m", "harness", "check"]
    command = ["nsenter", f"--net={sshd.ctl_netns}", *netharness]
    refused = subprocess.run(
        [*command, str(path)], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert refused.returncode == 3
    assert "is not known: ssh-ed25519 SHA256:" in refused.stderr
    assert "Traceback" not in refused.stderr
    trust = [*command, str(path), "--trust-new-host-keys"]
    trusted = subprocess.run(trust, capture_output=True, text=True, cwd=REPO, check=False)
    assert trusted.returncode == 0, trusted.stderr
    assert "5 expectations: 5 passed, 0 failed" in trusted.stdout
    assert empty.read_text() == ""


def test_a_machine_without_python3_gets_a_clear_error(sshd: SshdLab) -> None:
    before = remote_dirs(sshd)
    topology = sshd.topology(hosts=("a",), key=sshd.no_python_key)
    with pytest.raises(BackendError) as caught:
        Lab.up(topology, backend_options={"ssh_options": sshd.options()})
    assert str(caught.value).startswith("host a: python3 is not installed there")
    assert remote_dirs(sshd) == before


def test_a_lab_mixes_ssh_hosts_with_namespaces(sshd: SshdLab) -> None:
    text = sshd.topology(hosts=("a",)).text.replace(
        "hosts:\n",
        "  here: {subnet: 10.0.78.0/24}\nhosts:\n  h: {networks: {here: 10.0.78.5}}\n",
    )
    with Lab.up(
        parse_topology(text, str(sshd.dir / "mixed.yaml")),
        backend_options={"ssh_options": sshd.options()},
    ) as lab:
        h, a = lab.hosts["h"], lab.hosts["a"]
        assert (h.handle.backend, a.handle.backend) == ("netns", "ssh")
        assert h.handle.netns_path.startswith("/run/netns/")
        wired = h.run(["ip", "-4", "-o", "addr", "show", "dev", "here"])
        assert "10.0.78.5/24" in wired.stdout
        assert a.host_agent.info().hostname
    assert not Path(h.handle.netns_path).exists()


SSH_CONFIG = """\
Host machine-a
    HostName {a}
    User root
    IdentityFile {key}

Host b-behind-a
    HostName {b}
    User root
    IdentityFile {key}
    ProxyJump machine-a
"""


def test_ssh_config_aliases_and_proxyjump(sshd: SshdLab, tmp_path: Path) -> None:
    # The topology names the machines by ~/.ssh/config aliases only; b is reached through
    # a (ssh -J): b's sshd sees the connection come from a's address, not ctl's.
    config = tmp_path / "config"
    config.write_text(SSH_CONFIG.format(a=ADDRESSES["a"], b=ADDRESSES["b"], key=sshd.user_key))
    lines = ["name: aliases", "networks:", "  lan: {subnet: 10.0.77.0/24}", "hosts:"]
    for name, alias in (("a", "machine-a"), ("b", "b-behind-a")):
        lines += [
            f"  {name}:",
            f"    networks: {{lan: {ADDRESSES[name]}}}",
            f"    ssh: {{address: {alias}, known_hosts: {sshd.known_hosts}}}",
        ]
    topology = parse_topology("\n".join(lines) + "\n", "aliases.yaml")
    offsets = _log_offsets(sshd)
    options = {"ssh_options": sshd.options(config_file=str(config))}
    with Lab.up(topology, backend_options=options) as lab:
        assert lab.hosts["b"].run(["cat", "/proc/sys/kernel/hostname"]).returncode == 0
        assert lab.hosts["b"].agent().pid > 0  # an agent runs on b, over the hop
        connected = _log_since(sshd, offsets, "b")
        assert f"Connection from {ADDRESSES['a']} port" in connected, connected[-2000:]
        assert "Connection from 10.0.77.2 port" not in connected  # not straight from ctl
        assert "direct-tcpip" in _log_since(sshd, offsets, "a")


def test_agents_and_commands_fork_from_one_helper_per_machine(lab: Lab, sshd: SshdLab) -> None:
    a = lab.hosts["a"]
    directory = a.handle.details["dir"]
    offsets = _log_offsets(sshd)
    took, pids = [], []
    for _ in range(5):
        started = time.perf_counter()
        pids.append(a.agent().info().pid)  # started and answering
        took.append(time.perf_counter() - started)
    assert a.run(["true"]).returncode == 0
    ours = left_on(sshd, "a", directory)
    helpers = [pid for pid in ours if parent(pid) not in ours]  # sshd's session started it
    assert len(helpers) == 1
    servers = {parent(pid) for pid in pids}
    assert len(servers) == 1  # every agent a fork of the one fork server,
    assert parent(servers.pop()) == helpers[0]  # which the helper forked
    # over the session the lab opened at bring-up: no new session for any of them
    assert "ctype session" not in _log_since(sshd, offsets, "a")
    # ~10 ms here; a python3 per agent took 400-900 ms: a generous bound that still tells
    assert statistics.median(took) < 0.25, took


def test_a_lab_that_ends_leaves_nothing_on_its_machines(sshd: SshdLab) -> None:
    options = {"ssh_options": sshd.options()}
    with Lab.up(sshd.topology(hosts=("c",)), backend_options=options) as running:
        c = running.hosts["c"]
        c.agent()
        c.start("sleep 300", name="sleeper")
        directory = c.handle.details["dir"]
        ours = left_on(sshd, "c", directory)
        assert sorted(ours.values()).count(AGENT_COMM) == 2
        inode = os.stat(sshd.netns_of("c")).st_ino
        sleepers = [p for p in _netns.pids_in({inode}) if parent(p) in ours and comm(p) == "sleep"]
        assert len(sleepers) == 1
        assert len(relays_of(running.id)) == 1
    # Lab.down waited for each machine's helper and keeper: nothing to wait for here.
    assert left_on(sshd, "c", directory) == {}
    assert comm(sleepers[0]) is None
    assert not Path(directory).exists()
    assert relays_of(running.id) == []


def comm(pid: int) -> str | None:
    """The process's name, None if it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    name, rest = stat.split("(", 1)[1].rsplit(")", 1)
    return None if rest.split()[0] == "Z" else name


def cli(sshd: SshdLab, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`netharness ARGS` in the lab's `ctl` network, where the machines are reachable."""
    command = ["nsenter", f"--net={sshd.ctl_netns}", sys.executable, "-m", "harness", *args]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def test_up_keeps_ssh_hosts_for_later_commands_and_down_removes_them(
    sshd: SshdLab, tmp_path: Path
) -> None:
    path = tmp_path / "over-ssh.yaml"
    path.write_text(sshd.topology(hosts=("a", "b", "c"), port=7443).text)  # 8443: the module's
    up = cli(sshd, "up", str(path), "--json")
    assert up.returncode == 0, up.stderr
    lab_id = json.loads(up.stdout)["id"]
    dirs = {n: h["details"]["dir"] for n, h in ledger.find_lab(lab_id).info["hosts"].items()}
    try:
        assert [row["id"] for row in json.loads(cli(sshd, "ls", "--json").stdout)].count(lab_id)
        said = cli(
            sshd, "exec", lab_id, "a", "--", "sh", "-c", 'echo "on $NETHARNESS_HOST"; exit 7'
        )
        assert (said.returncode, said.stdout) == (7, "on a\n")
        echoed = cli(sshd, "exec", lab_id, "b", "--", "cat", stdin="from stdin\n")
        assert (echoed.returncode, echoed.stdout) == (0, "from stdin\n")
        shell = cli(sshd, "shell", lab_id, "c", stdin="echo in $NETHARNESS_HOST; exit 5\n")
        assert shell.returncode == 5
        assert "in c\n" in shell.stdout
        listening = cli(sshd, "ps", lab_id, "b", "--json")
        assert listening.returncode == 0, listening.stderr
        table = json.loads(listening.stdout)["hosts"]["b"]["sockets"]
        owners = [o for s in table if s["local"]["port"] == 7443 for o in s["owners"]]
        assert owners  # the service's listeners (tcp and udp), held by the host agent
        assert {o["comm"] for o in owners} == {AGENT_COMM}
        assert {tuple(o["command"]) for o in owners} == {("netharness-agent",)}
        checked = cli(sshd, "check", lab_id)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "5 expectations: 5 passed, 0 failed" in checked.stdout
        suite = cli(sshd, "suite", "multiplexing", lab_id, "--server", "b", "--clients", "a,c")
        assert suite.returncode == 0, suite.stdout + suite.stderr
        # what those commands started ended with them; the lab's own agents are still there
        assert {n: len(agents_in(sshd, n, d)) for n, d in dirs.items()} == {"a": 1, "b": 1, "c": 1}
    finally:
        down = cli(sshd, "down", lab_id)
    assert down.returncode == 0, down.stderr
    # `down` returns once the machines are clean: no waiting here either
    assert {n: left_on(sshd, n, d) for n, d in dirs.items()} == {"a": {}, "b": {}, "c": {}}
    assert [d for d in dirs.values() if Path(d).exists()] == []
    assert relays_of(lab_id) == []


def test_a_killed_owner_of_an_up_lab_leaves_nothing_on_its_machines(
    sshd: SshdLab, tmp_path: Path
) -> None:
    path = tmp_path / "over-ssh.yaml"
    path.write_text(sshd.topology(hosts=("a", "c")).text)
    up = cli(sshd, "up", str(path), "--json")
    assert up.returncode == 0, up.stderr
    said = json.loads(up.stdout)
    record = ledger.find_lab(said["id"])
    dirs = {n: h["details"]["dir"] for n, h in record.info["hosts"].items()}
    assert all(agents_in(sshd, n, d) for n, d in dirs.items())
    os.kill(said["owner_pid"], signal.SIGKILL)  # the lab's fork server: its reaper acts
    wait_until_nothing_left(sshd, said["id"], dirs)


def test_a_command_that_times_out_is_killed_on_the_machine(lab: Lab, tmp_path: Path) -> None:
    marker = tmp_path / "pid"  # the machines share this file system
    command = ["sh", "-c", f"echo $$ > {marker}; exec sleep 31.5"]
    with pytest.raises(HarnessError, match=r"did not finish within 0\.5 s in host b"):
        lab.hosts["b"].run(command, timeout=0.5)
    pid = int(marker.read_text())  # it did start there
    assert comm(pid) is None  # SIGKILLed there, and reaped before run() raised
