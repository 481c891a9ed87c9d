"""One SSH connection to an existing machine: host key checked before any authentication.

paramiko's SSHClient does the key exchange, then checks the server's key against
~/.ssh/known_hosts and the topology's `known_hosts`, and only then authenticates (keys
given, ssh-agent, ~/.ssh/id_*: what `ssh` does; never a password). An unknown key is
refused unless the caller opted in (`trust_new_host_keys`); a changed key is always
refused. known_hosts is written only with `save_host_keys`, one line appended.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from harness.errors import BackendError, HostKeyRefused
from harness.topology import SshTarget

SYSTEM_KNOWN_HOSTS = "~/.ssh/known_hosts"
Connector = Callable[[str, int, float], socket.socket]


@dataclass(frozen=True)
class SshOptions:
    """How the ssh backend connects; `Lab.up(..., backend_options={"ssh_options": ...})`.

    `connect(address, port, timeout)` makes the TCP connection; the default is
    `socket.create_connection`. Tests give a function that opens the socket inside a lab
    namespace (a socket keeps the namespace it was made in).
    """

    trust_new_host_keys: bool = False
    save_host_keys: bool = False
    connect: Connector | None = None
    timeout: float = 15.0


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class _Refused(Exception):
    """The server's key is not known; raised by the policy, before authentication."""

    def __init__(self, key: paramiko.PKey) -> None:
        self.key = key


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, options: SshOptions, save_to: str) -> None:
        self._options = options
        self._save_to = save_to

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        if not self._options.trust_new_host_keys:
            raise _Refused(key)
        if self._options.save_host_keys:
            # One line appended, as `ssh` does: the rest of the file is left alone.
            os.makedirs(os.path.dirname(self._save_to) or ".", mode=0o700, exist_ok=True)
            with open(self._save_to, "a", encoding="ascii") as file:
                file.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def open_client(host: str, target: SshTarget, options: SshOptions) -> paramiko.SSHClient:
    """Connect and authenticate to `target`; BackendError with the reason and the fix."""
    name = known_hosts_name(target.address, target.port)
    save_to = target.known_hosts_file or os.path.expanduser(SYSTEM_KNOWN_HOSTS)
    client = paramiko.SSHClient()
    try:
        client.load_system_host_keys()  # ~/.ssh/known_hosts, never written back
        known_hosts = target.known_hosts_file
        if known_hosts is not None:
            if not os.path.exists(known_hosts):
                raise BackendError(
                    f"known_hosts file {known_hosts} does not exist; create it with "
                    f"the machine's key (see `netharness` README, Running against real "
                    "machines)",
                    host=host,
                )
            client.get_host_keys().load(known_hosts)  # not remembered for saving
        client.set_missing_host_key_policy(_Policy(options, save_to))
        sock = _connect(host, target, options)
        try:
            client.connect(
                target.address,
                port=target.port,
                username=target.user or getpass.getuser(),
                key_filename=target.key_file,
                sock=sock,
                timeout=options.timeout,
                banner_timeout=options.timeout,
                auth_timeout=options.timeout,
                allow_agent=True,
                look_for_keys=target.key is None,
            )
        except _Refused as refused:
            raise _unknown_key(host, name, refused.key, save_to) from None
        except paramiko.BadHostKeyException as exc:
            raise _changed_key(host, name, exc, known_hosts) from None
        except paramiko.AuthenticationException as exc:
            user = target.user or getpass.getuser()
            raise BackendError(
                f"{user}@{name} accepted none of our keys ({exc}); netharness logs in with "
                "the topology's `key`, ssh-agent or ~/.ssh/id_* only (never a password): "
                f"add the public key to ~{user}/.ssh/authorized_keys there",
                host=host,
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise BackendError(f"ssh to {name} failed: {exc}", host=host) from None
    except BaseException:
        client.close()
        raise
    return client


def _connect(host: str, target: SshTarget, options: SshOptions) -> socket.socket:
    connect = options.connect or _tcp
    try:
        return connect(target.address, target.port, options.timeout)
    except OSError as exc:
        where = f"cannot connect to {target.address} port {target.port}"
        raise BackendError.from_os(exc, where, host=host) from None


def _tcp(address: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((address, port), timeout=timeout)


def _unknown_key(host: str, name: str, key: paramiko.PKey, save_to: str) -> HostKeyRefused:
    keyscan = f"ssh-keyscan -p {name.rsplit(':', 1)[-1]}" if name.startswith("[") else "ssh-keyscan"
    address = name.strip("[").split("]")[0]
    return HostKeyRefused(
        f"the host key of {name} is not known: {key.get_name()} {fingerprint(key)}. "
        "Refused before authenticating. If that is the machine's key (compare with "
        "`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on it), add it to "
        f"{save_to} (`{keyscan} {shlex.quote(address)} >> {shlex.quote(save_to)}`), or run "
        "once with --trust-new-host-keys (and --save-host-keys to remember it)",
        host=host,
    )


def _changed_key(
    host: str, name: str, exc: paramiko.BadHostKeyException, given: str | None
) -> HostKeyRefused:
    files = " or ".join(f for f in (given, SYSTEM_KNOWN_HOSTS) if f)
    return HostKeyRefused(
        f"the host key of {name} has CHANGED: it offered {exc.key.get_name()} "
        f"{fingerprint(exc.key)}, known_hosts has {exc.expected_key.get_name()} "
        f"{fingerprint(exc.expected_key)}. Refused before authenticating: someone may be "
        "intercepting the connection, or the machine was reinstalled. If you are sure, "
        f"remove the old line from {files} (`ssh-keygen -R '{name}'`); "
        "--trust-new-host-keys never accepts a changed key",
        host=host,
    )


def run(
    client: paramiko.SSHClient, host: str, command: str, timeout: float = 60.0
) -> tuple[int, str, str]:
    """Run a short command to completion: (exit status, stdout, stderr)."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise BackendError("the ssh connection is closed", host=host)
    try:
        channel = transport.open_session(timeout=timeout)
        with contextlib.closing(channel):
            channel.settimeout(timeout)
            channel.exec_command(command)
            channel.shutdown_write()
            out = _read(channel.makefile("rb"))
            err = _read(channel.makefile_stderr("rb"))
            if not channel.status_event.wait(timeout):
                raise TimeoutError(f"no exit status within {timeout:g} s")
            return channel.recv_exit_status(), out, err
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise BackendError(
            f"running {command.split(maxsplit=1)[0]} there failed: {exc}", host=host
        ) from None


def _read(file: Any) -> str:
    with file:
        data: bytes = file.read()
    return data.decode(errors="replace")
