"""The ssh backend: a host is an existing machine reached over SSH (paramiko).

Three processes carry it, so that agents start in milliseconds and a lab outlives the
command that brought it up (`netharness up`):

- this backend, in the controller: it reads ~/.ssh/config, makes the TCP connection to
  each machine (`SshOptions.connect`) and asks the relay for everything else;
- the relay (harness/core/_ssh_relay.py), a process the lab's fork server starts: it
  holds the SSH connections, and looks to its clients like a fork server whose "netns"
  is a host name (this backend's owner connection; later commands through the ledger's
  `ssh.sock`);
- on each machine, the helper (hostagent.remote): the same fork server the netns
  backend runs locally, reached through one SSH session, which forks every agent and
  command there. Nothing else runs there, and only one private directory is made
  (harness/core/_ssh_machine.py); both go when the lab ends, the relay dies or the
  connection drops.

The host has no network namespace on this machine: its handle's `netns_path` is empty,
the fabric leaves it alone, and `harness.observe.diag` asks its agent for the kernel's
sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.backends._forkserver import ForkedProcess, ForkServerClient, exec_failure
from harness.backends.base import AGENT, STOP_GRACE, Backend, HostHandle, Process, Stdio
from harness.core import _ssh
from harness.core import ledger as _ledger
from harness.core._ssh import SshOptions
from harness.core._ssh_relay import SOCKET_NAME
from harness.errors import BackendError, HostKeyRefused, LabNotFound, ProcessFailed
from harness.topology import Host

__all__ = ["SshBackend", "SshOptions"]

RELAY_GRACE = 10.0  # between SIGTERM and SIGKILL: machines end their processes in ~1 s
RELAY = "ssh relay"


@dataclass
class _Relay:
    """The lab's relay, as its owner has it."""

    client: ForkServerClient
    process: ForkedProcess  # a child of the lab's fork server
    path: str  # where later commands reach it


class SshBackend(Backend):
    name = "ssh"
    local_netns = False  # another machine: nothing of it to enter from here
    needs_root = (
        "the machines are reached over this machine's network, and a rootless lab runs "
        "in a network namespace of its own that has none"
    )

    def __init__(
        self, lab_id: str, forkserver: ForkServerClient, options: SshOptions | None = None
    ) -> None:
        self._lab_id = lab_id
        self._forkserver = forkserver  # the lab's: it starts the relay
        self._options = options or SshOptions()
        self._relay: _Relay | None = None
        self._made: set[str] = set()  # hosts this backend connected (the lab is ours)
        self._joined: dict[str, ForkServerClient] = {}  # relay path -> a later command's
        self._lock = asyncio.Lock()

    @classmethod
    def for_lab(cls, **kwargs: Any) -> SshBackend:
        return cls(kwargs["lab_id"], kwargs["forkserver"], kwargs.get("ssh_options"))

    async def create(self, host: Host) -> HostHandle:
        if host.ssh is None:
            raise BackendError("an ssh host needs an `ssh:` block", host=host.name)
        route = _ssh.route(host.name, host.ssh, self._options)
        relay = await self._own_relay()
        sock = await asyncio.to_thread(_ssh.first_socket, host.name, route, self._options)
        try:
            message = {"op": "connect", "host": host.name, "route": route.to_json()}
            reply = await relay.client.request(message, [sock.fileno()])
        finally:
            sock.close()  # the relay has its own copy
        if "dir" not in reply:
            raise _relayed_error(reply, host.name)
        self._made.add(host.name)
        return HostHandle(
            name=host.name,
            netns_path="",
            backend=self.name,
            details={
                "host": host.name,
                "address": _ssh.known_hosts_name(route.target.address, route.target.port),
                "dir": str(reply["dir"]),
                "relay": relay.path,
            },
        )

    async def start(
        self,
        handle: HostHandle,
        argv: Sequence[str],
        stdio: Stdio,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Process:
        relay = await self._relay_for(handle)
        command = None if argv is AGENT else list(argv)
        fds = (stdio.stdin, stdio.stdout, stdio.stderr)
        if env is None and cwd is None:
            return await relay.spawn(handle.name, command, fds, user=user)
        # A user's process: it starts in the login's home unless told, and gets its
        # grace between SIGTERM and SIGKILL when the lab ends without us.
        return await relay.spawn(
            handle.name, command, fds, user=user, env_add=env or {}, cwd=cwd, grace=STOP_GRACE
        )

    def signal_group(self, handle: HostHandle, process: Process, sig: int) -> None:
        if isinstance(process, ForkedProcess):
            process.kill_group(sig)
        else:
            process.kill(sig)

    @classmethod
    def run_attached(cls, host: dict[str, Any], argv: list[str], env: dict[str, str]) -> int:
        # There, with the login's environment and only netharness's variables added.
        own = {k: v for k, v in env.items() if k.startswith("NETHARNESS_") or k == "PS1"}
        details = host.get("details") or {}
        return run_attached(str(details.get("relay")), str(details.get("host")), argv, own)

    @classmethod
    def shell_argv(cls, env: Mapping[str, str]) -> list[str]:
        return ["/bin/sh", "-i"]  # the machine's shell, whatever ours is

    async def close(self) -> None:
        joined, self._joined = list(self._joined.values()), {}
        for client in joined:
            await client.close(orderly=True)  # what this command started there ends
        relay, self._relay = self._relay, None
        if relay is None:
            return
        await relay.client.close(orderly=True)  # from the owner: the lab's machines end
        try:
            await asyncio.wait_for(relay.process.wait(), RELAY_GRACE)
        except TimeoutError:
            relay.process.kill_group(signal.SIGKILL)

    # -- helpers -------------------------------------------------------------------------

    async def _own_relay(self) -> _Relay:
        async with self._lock:  # one relay for every host of the lab
            if self._relay is None:
                self._relay = await self._start_relay()
            return self._relay

    async def _start_relay(self) -> _Relay:
        ledger = _ledger.Ledger(self._lab_id).dir
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        appending = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        log = os.open(ledger / "logs" / "ssh.log", appending, 0o600)
        try:
            process = await self._forkserver.spawn(
                "",
                [sys.executable, "-m", "harness.core._ssh_relay", str(ledger)],
                (theirs.fileno(), null, log),
                env_add={},
                cwd=os.getcwd(),  # where `python -m` finds harness, as the fork server does
                grace=RELAY_GRACE,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(null)
            os.close(log)
        return _Relay(ForkServerClient.over(ours, RELAY), process, str(ledger / SOCKET_NAME))

    async def _relay_for(self, handle: HostHandle) -> ForkServerClient:
        if handle.name in self._made and self._relay is not None:
            return self._relay.client
        path = handle.details.get("relay", "")
        if path not in self._joined:  # a lab another process owns: join its relay
            sock = _join_relay(path, handle.name)
            self._joined[path] = ForkServerClient.over(sock, RELAY)
        return self._joined[path]


def _relayed_error(reply: dict[str, Any], host: str) -> BackendError:
    """The relay's error, rebuilt: the same class and text as where it was raised."""
    if "kind" not in reply:  # not the relay's answer to us: it went away meanwhile
        return BackendError(f"connecting failed: {reply.get('error')}", host=host)
    cls = HostKeyRefused if reply["kind"] == "HostKeyRefused" else BackendError
    error = cls(str(reply["error"]), host=reply.get("host"))
    error.code = reply.get("code")
    return error


def _join_relay(path: str, host: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise LabNotFound(
                f"host {host}: the lab's ssh relay ({path}) is gone: the lab is going down"
            ) from None
        raise BackendError.from_os(exc, f"cannot reach the ssh relay {path}", host=host) from None
    return sock


def run_attached(path: str, host: str, argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` on ssh host `host` of a running lab, on this process's stdio, through
    the lab's relay (`netharness exec`, `shell`); its exit status. Ctrl-C is sent on."""
    with contextlib.closing(_join_relay(path, host)) as sock:
        request = {
            "op": "spawn",
            "seq": 1,
            "netns": host,
            "argv": argv,
            "env_add": env,
            "report": True,
            "grace": STOP_GRACE,
        }
        _send(sock, request, [0, 1, 2])
        reply = _receive(sock)
        if "pid" not in reply:
            raise exec_failure(reply, argv, None, None, host)
        while True:
            try:
                message = _receive(sock)
            except KeyboardInterrupt:
                kill = {"op": "kill", "pid": reply["pid"], "signal": signal.SIGINT, "group": True}
                _send(sock, kill, [])
                continue
            if "exited" in message:
                return int(message["status"])


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], fds)


def _receive(sock: socket.socket) -> dict[str, Any]:
    data = sock.recv(65536)
    if not data:
        raise ProcessFailed("the lab's ssh relay went away (the lab is going down)")
    message: dict[str, Any] = json.loads(data)
    return message
