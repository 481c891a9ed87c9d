"""The ssh backend: a host is an existing machine reached over SSH (paramiko).

Nothing is created there but one private temporary directory (mkdtemp, 0700) holding the
agent zipapp, uploaded by SFTP and checked by its SHA-256. Each agent runs as
`python3 <dir>/agent.pyz` on its own session channel, whose stdio is pumped to the pipes
`Backend.start` gets, so the agent exits when the channel closes. A "keeper" channel
(`cat >/dev/null; rm -rf <dir>`) removes the directory when it closes: at teardown, or
when the connection drops because the controller died.

The host has no network namespace on this machine: its handle's `netns_path` is empty,
the fabric leaves it alone, and `harness.observe.diag` asks its agent for the kernel's sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import shlex
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from harness.backends.base import AGENT, Backend, HostHandle, Process, Stdio
from harness.core import _ssh
from harness.core._ssh import SshOptions
from harness.errors import BackendError
from harness.topology import Host

__all__ = ["SshBackend", "SshOptions"]

AGENT_FILE = "agent.pyz"
MIN_PYTHON = (3, 9)
# Import the whole agent from the zipapp first, then drop to `user` if asked: the
# directory is private to the login user, and nothing is read from it afterwards.
# The stdlib's lazy imports (idna codec, resource) are done first too, as the netns
# backend's fork server does: the interpreter's own files may not be readable by `user`.
_LAUNCH = (
    "import os, pwd, sys; sys.path.insert(0, sys.argv[1]); import hostagent.agent as a\n"
    "import encodings.idna, resource\n"
    "if sys.argv[2]:\n"
    "    u = pwd.getpwuid(int(sys.argv[2])) if sys.argv[2].isdigit() "
    "else pwd.getpwnam(sys.argv[2])\n"
    "    os.setgroups([]); os.setgid(u.pw_gid); os.setuid(u.pw_uid)\n"
    "sys.exit(a.serve(0, 1))"
)
_MKDTEMP = (
    "import sys, tempfile\n"
    "if sys.version_info < {v}: sys.exit('python ' + sys.version.split()[0] + ' < {t}')\n"
    "print(tempfile.mkdtemp(prefix='netharness-'))"
).format(v=MIN_PYTHON, t=".".join(map(str, MIN_PYTHON)))
_SHA256 = "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())"


@dataclass
class _Remote:
    """One machine: its connections (sshd allows MaxSessions channels on each, 10 by
    default, so more agents mean more connections), the private directory, its keeper."""

    host: Host
    options: SshOptions
    clients: list[paramiko.SSHClient]
    directory: str
    keeper: paramiko.Channel
    lock: threading.Lock

    def open_session(self) -> paramiko.Channel:
        with self.lock:
            for client in reversed(self.clients):
                transport = client.get_transport()
                if transport is None or not transport.is_active():
                    continue
                try:
                    return transport.open_session(timeout=30)
                except paramiko.ChannelException:
                    continue  # this connection has all the sessions sshd allows
                except paramiko.SSHException as exc:
                    message = f"cannot open an ssh channel: {exc}"
                    raise BackendError(message, host=self.host.name) from None
            assert self.host.ssh is not None
            client = _ssh.open_client(self.host.name, self.host.ssh, self.options)
            self.clients.append(client)
            return _open_session(client, self.host.name)


class SshBackend(Backend):
    name = "ssh"

    def __init__(self, lab_id: str, options: SshOptions | None = None) -> None:
        self._lab_id = lab_id
        self._options = options or SshOptions()
        self._remotes: dict[str, _Remote] = {}
        self._zipapp: tuple[Path, str] | None = None  # local file, its sha256
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)

    local_netns = False  # another machine: nothing of it to enter from here
    detachable = False  # driven over this process's connections

    @classmethod
    def for_lab(cls, **kwargs: Any) -> SshBackend:
        return cls(kwargs["lab_id"], kwargs.get("ssh_options"))

    async def create(self, host: Host) -> HostHandle:
        if host.ssh is None:
            raise BackendError("an ssh host needs an `ssh:` block", host=host.name)
        zipapp = await self._agent_zipapp()
        remote = await asyncio.to_thread(self._prepare, host, zipapp)
        self._remotes[host.name] = remote
        return HostHandle(
            name=host.name,
            netns_path="",
            backend=self.name,
            details={
                "address": _ssh.known_hosts_name(host.ssh.address, host.ssh.port),
                "dir": remote.directory,
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
        remote = self._remotes.get(handle.name)
        if remote is None:
            raise BackendError("not connected (the lab is going down)", host=handle.name)
        if argv is AGENT:
            agent = shlex.quote(f"{remote.directory}/{AGENT_FILE}")
            command = f"exec python3 -c {shlex.quote(_LAUNCH)} {agent} {shlex.quote(user or '')}"
        elif user is not None:
            raise BackendError("commands run as the login user on ssh hosts", host=handle.name)
        else:
            command = _user_command(list(argv), env, cwd)
        channel = await asyncio.to_thread(remote.open_session)
        try:
            channel.exec_command(command)
        except BaseException:
            channel.close()
            raise
        return _ChannelProcess(next(self._ids), channel, stdio, asyncio.get_running_loop())

    async def close(self) -> None:
        remotes = list(self._remotes.values())
        self._remotes.clear()
        try:
            await asyncio.gather(*(asyncio.to_thread(_close_remote, r) for r in remotes))
        finally:
            if self._scratch is not None:
                self._scratch.cleanup()
                self._scratch = None

    # -- helpers -------------------------------------------------------------------------

    async def _agent_zipapp(self) -> tuple[Path, str]:
        async with self._lock:  # one build for every host of the lab
            if self._zipapp is None:
                from hostagent import build_zipapp

                self._scratch = tempfile.TemporaryDirectory(prefix=f"nh-{self._lab_id}-ssh-")
                path = await asyncio.to_thread(build_zipapp, Path(self._scratch.name))
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                self._zipapp = (path, digest)
            return self._zipapp

    def _prepare(self, host: Host, zipapp: tuple[Path, str]) -> _Remote:
        """Connect, make the private directory, upload and check the agent (blocking)."""
        assert host.ssh is not None
        client = _ssh.open_client(host.name, host.ssh, self._options)
        try:
            status, out, err = _ssh.run(client, host.name, f"python3 -c {shlex.quote(_MKDTEMP)}")
            if status == 127:
                raise BackendError(
                    "python3 is not installed there; the agent needs python3 "
                    f"{'.'.join(map(str, MIN_PYTHON))} or newer (e.g. `apt-get install "
                    "python3-minimal`)",
                    host=host.name,
                )
            if status != 0 or not out.strip().startswith("/"):
                raise BackendError(
                    f"cannot make a temporary directory with python3: {err.strip() or out}",
                    host=host.name,
                )
            directory = out.strip()
            keeper = _keeper(client, directory, host.name)
            try:
                _upload(client, zipapp, directory, host.name)
            except BaseException:
                keeper.close()
                raise
            return _Remote(host, self._options, [client], directory, keeper, threading.Lock())
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()  # the keeper goes with the connection, and the directory with it
            raise BackendError(f"delivering the agent failed: {exc}", host=host.name) from None
        except BaseException:
            client.close()
            raise


def _user_command(argv: list[str], env: Mapping[str, str] | None, cwd: str | None) -> str:
    """The shell line for a command: in `cwd` (the login directory if None), with `env`
    added to the login environment; `exec` so the command is the channel's process."""
    line = shlex.join(argv)
    if env:
        line = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + line
    line = "exec " + line
    if cwd is not None:
        line = f"cd {shlex.quote(cwd)} && {line}"
    return line


def _keeper(client: paramiko.SSHClient, directory: str, host: str) -> paramiko.Channel:
    """A channel whose end (EOF, or the connection dropping) removes `directory`."""
    channel = _open_session(client, host)
    quoted = shlex.quote(directory)
    channel.exec_command(f"cat >/dev/null; rm -rf -- {quoted}")
    return channel


def _upload(
    client: paramiko.SSHClient, zipapp: tuple[Path, str], directory: str, host: str
) -> None:
    path, digest = zipapp
    target = f"{directory}/{AGENT_FILE}"
    with client.open_sftp() as sftp:
        sftp.put(str(path), target)
        sftp.chmod(target, 0o600)
    check = f"python3 -c {shlex.quote(_SHA256)} {shlex.quote(target)}"
    status, out, err = _ssh.run(client, host, check)
    if status != 0 or out.strip() != digest:
        raise BackendError(
            f"the agent uploaded to {target} does not match (sha256 {out.strip() or err.strip()}"
            f", expected {digest}); is the disk full?",
            host=host,
        )


def _open_session(client: paramiko.SSHClient, host: str) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise BackendError("the ssh connection is closed", host=host)
    try:
        return transport.open_session(timeout=30)
    except paramiko.SSHException as exc:
        raise BackendError(f"cannot open an ssh channel: {exc}", host=host) from None


def _close_remote(remote: _Remote) -> None:
    """End the keeper (the directory goes with it), then the connection."""
    try:
        if not remote.keeper.closed:
            remote.keeper.shutdown_write()
            remote.keeper.status_event.wait(30)  # its `rm -rf` has run (or it is gone)
    except (OSError, paramiko.SSHException, EOFError):
        pass  # the connection is gone; the keeper's end removes the directory anyway
    finally:
        remote.keeper.close()
        for client in remote.clients:
            client.close()


class _ChannelProcess:
    """A remote process on a session channel, its stdio pumped to local pipe fds.

    Three threads per process: stdin → channel (EOF closes the channel's write side),
    channel → stdout, channel stderr → stderr. The local fds are our own copies, closed
    when each pump ends, so readers see EOF when the remote process ends.
    """

    def __init__(
        self,
        number: int,
        channel: paramiko.Channel,
        stdio: Stdio,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._number = number
        self._channel = channel
        self._returncode: int | None = None
        self._done = asyncio.Event()
        self._loop = loop
        fds = [os.dup(stdio.stdin), os.dup(stdio.stdout), os.dup(stdio.stderr)]
        pumps = [
            threading.Thread(target=self._feed, args=(fds[0],), daemon=True),
            threading.Thread(target=self._drain, args=(fds[1], channel.recv), daemon=True),
            threading.Thread(target=self._drain, args=(fds[2], channel.recv_stderr), daemon=True),
        ]
        self._outputs = pumps[1:]
        for pump in pumps:
            pump.start()
        threading.Thread(target=self._reap, daemon=True).start()

    @property
    def pid(self) -> int:
        return self._number  # the remote pid is the agent's (its hello); this is ours

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None
        return self._returncode

    def kill(self, signal: int) -> None:
        # SSH has no reliable signal delivery; closing the channel ends an agent (EOF).
        self._channel.close()

    def _feed(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 65536):
                self._channel.sendall(chunk)
            self._channel.shutdown_write()
        except (OSError, paramiko.SSHException, EOFError):
            pass  # the channel is gone: nobody reads any more
        finally:
            os.close(fd)

    def _drain(self, fd: int, recv: Any) -> None:
        try:
            while chunk := recv(65536):
                _write_all(fd, chunk)
        except (OSError, paramiko.SSHException, EOFError):
            pass  # our reader went away, or the channel did
        finally:
            os.close(fd)

    def _reap(self) -> None:
        status = self._channel.recv_exit_status()  # -1: closed without a status
        for pump in self._outputs:
            pump.join()
        self._channel.close()
        code = status if status >= 0 else -9
        with contextlib.suppress(RuntimeError):  # the lab's loop has ended: nobody waits
            self._loop.call_soon_threadsafe(self._finish, code)

    def _finish(self, code: int) -> None:
        self._returncode = code
        self._done.set()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
