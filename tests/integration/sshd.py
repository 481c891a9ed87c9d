"""Real OpenSSH servers inside a netns lab, for the ssh backend's tests.

`SshdLab` brings up a lab whose hosts `a` and `b` each run their own `sshd -D -e` (config,
host key, pid file and log in a temporary directory, LogLevel DEBUG), plus a host `ctl`
that stands in for the controller's network: the ssh backend connects through sockets
made inside `ctl`'s namespace (`connect_from`), since labs never route into the root
namespace the tests run in. `topology()` is the second lab's topology: the same machines
as ssh hosts.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import Lab
from harness.core import _netns
from harness.core._ssh import SshOptions
from harness.topology import Topology, parse_topology

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
# The machines: `a` has its privileged ports lowered to 80 and `d` a ten-port ephemeral
# range, as their owners set them up (the ports suite finds them; it changes nothing).
ADDRESSES = {"a": "10.0.77.11", "b": "10.0.77.12", "c": "10.0.77.13", "d": "10.0.77.14"}
CTL = "10.0.77.2"

SSHD_LAB = f"""\
name: sshd-lab
networks:
  lan: {{subnet: 10.0.77.0/24}}
hosts:
  ctl: {{networks: {{lan: {CTL}}}}}
  a:
    networks: {{lan: {ADDRESSES["a"]}}}
    sysctls: {{net.ipv4.ip_unprivileged_port_start: 80}}
  b: {{networks: {{lan: {ADDRESSES["b"]}}}}}
  c: {{networks: {{lan: {ADDRESSES["c"]}}}}}
  d:
    networks: {{lan: {ADDRESSES["d"]}}}
    sysctls: {{net.ipv4.ip_local_port_range: "40000 40009"}}
"""

SSHD_CONFIG = """\
Port 22
ListenAddress {address}
HostKey {dir}/host_{name}
PidFile {dir}/sshd-{name}.pid
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
PermitUserEnvironment yes
SetEnv TMPDIR={dir}/remote-tmp
LogLevel DEBUG
Subsystem sftp internal-sftp
"""


def keygen(path: Path) -> str:
    """A new ed25519 key pair at `path`; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "netharness-test", "-f", str(path)],
        check=True,
    )
    return (path.with_suffix(".pub")).read_text().strip()


def connect_from(netns_path: str) -> Callable[[str, int, float], socket.socket]:
    """A connector for SshOptions whose sockets are made inside `netns_path`."""

    def make() -> socket.socket:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _netns.entered(fd):
                return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            os.close(fd)

    def connect(address: str, port: int, timeout: float) -> socket.socket:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # setns is per thread
            sock = pool.submit(make).result()
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


@dataclass
class Server:
    name: str
    address: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class SshdLab:
    """The lab with sshd in `a` and `b`; use as a context manager."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.servers: dict[str, Server] = {}
        self.lab: Lab | None = None

    def __enter__(self) -> SshdLab:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user_key = self.dir / "id_user"
        # A second key whose logins find no python3 (nothing on their PATH).
        self.no_python_key = self.dir / "id_no_python"
        (self.dir / "authorized_keys").write_text(
            keygen(self.user_key)
            + "\n"
            + 'environment="PATH=/nonexistent" '
            + keygen(self.no_python_key)
            + "\n"
        )
        lines = []
        for name, address in ADDRESSES.items():
            public = keygen(self.dir / f"host_{name}")
            lines.append(f"{address} {' '.join(public.split()[:2])}")
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text("\n".join(lines) + "\n")
        self.remote_tmp = self.dir / "remote-tmp"  # the machines' TMPDIR: ours alone
        self.remote_tmp.mkdir()
        # Left in place afterwards, as the openssh-server package has it: another test
        # run's sshd may be using it right now.
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.lab = Lab.up(parse_topology(SSHD_LAB, "sshd-lab.yaml"))
        for name, address in ADDRESSES.items():
            config = self.dir / f"sshd_{name}.conf"
            config.write_text(SSHD_CONFIG.format(address=address, dir=self.dir, name=name))
            log = self.dir / f"sshd-{name}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        self.lab.hosts[name].netns,
                        SSHD,
                        "-D",
                        "-e",
                        "-f",
                        str(config),
                    ],
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            self.servers[name] = Server(name, address, log, process)
        for server in self.servers.values():
            self._wait_listening(server)

    def _wait_listening(self, server: Server) -> None:
        connect = connect_from(self.ctl_netns)
        deadline = time.monotonic() + 20
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"sshd in {server.name} exited: {server.log_text()}")
            try:
                connect(server.address, 22, 1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def ctl_netns(self) -> str:
        assert self.lab is not None
        return self.lab.hosts["ctl"].handle.netns_path

    def netns_of(self, name: str) -> str:
        assert self.lab is not None
        return self.lab.hosts[name].handle.netns_path

    def options(self, **overrides: object) -> SshOptions:
        return SshOptions(connect=connect_from(self.ctl_netns), **overrides)  # type: ignore[arg-type]

    def topology(
        self,
        known_hosts: Path | None = None,
        hosts: tuple[str, ...] = tuple(ADDRESSES),
        port: int = 8443,
        key: Path | None = None,
    ) -> Topology:
        """The same machines as ssh hosts, driven from `ctl`; `b` serves tcp and udp
        `port`, and `expect:` says what a and c must see of it (and of port + 1)."""
        kh = known_hosts or self.known_hosts
        lines = ["name: over-ssh", "networks:", "  lan: {subnet: 10.0.77.0/24}", "hosts:"]
        for name in hosts:
            address = ADDRESSES[name]
            lines += [
                f"  {name}:",
                f"    networks: {{lan: {address}}}",
                f"    ssh: {{address: {address}, user: root, key: {key or self.user_key}, "
                f"known_hosts: {kh}}}",
            ]
            if name == "b":
                lines.append(
                    f"    services: [{{proto: tcp, port: {port}}}, {{proto: udp, port: {port}}}]"
                )
        if {"a", "b", "c"} <= set(hosts):
            lines += [
                "expect:",
                f"  - {{from: [a, c], to: b, proto: tcp, port: {port}, state: open}}",
                f"  - {{from: [a, c], to: b, proto: tcp, port: {port + 1}, state: closed}}",
                f"  - {{from: a, to: b, proto: udp, port: {port}, state: open}}",
            ]
        return parse_topology("\n".join(lines) + "\n", str(self.dir / "over-ssh.yaml"))

    def __exit__(self, *exc: object) -> None:
        try:
            for server in self.servers.values():
                if server.process.poll() is None:
                    os.killpg(server.process.pid, signal.SIGTERM)
                    try:
                        server.process.wait(10)
                    except subprocess.TimeoutExpired:
                        os.killpg(server.process.pid, signal.SIGKILL)
                        server.process.wait()
        finally:
            if self.lab is not None:
                self.lab.down()
