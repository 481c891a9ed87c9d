"""One SSH connection to an existing machine: host key checked before any authentication.

paramiko's SSHClient does the key exchange, then checks the server's key against
~/.ssh/known_hosts and the topology's `known_hosts`, and only then authenticates (keys
given, ssh-agent, ~/.ssh/id_*: what `ssh` does; never a password). An unknown key is
refused unless the caller opted in (`trust_new_host_keys`); a changed key is always
refused. known_hosts is written only with `save_host_keys`, one line appended.

~/.ssh/config is read as `ssh` reads it (paramiko's SSHConfig): the topology's `address`
may be a `Host` alias, whose HostName, User, Port, IdentityFile and ProxyJump apply
unless the topology says otherwise (its `user`, `key`, and a `port` other than 22).
ProxyJump hops are connected in turn, each checked like the target, and the target is
reached through a direct-tcpip channel of the last one.

The work is split between two processes. The controller reads the config into a `Route`
(plain data) and makes the TCP connection to its first machine (`first_socket`, through
`SshOptions.connect`); the ssh relay, which holds the lab's connections, gets both and
logs in (`login`).
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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import paramiko

from harness.errors import BackendError, HostKeyRefused

if TYPE_CHECKING:  # the ssh relay logs in without the topology model (pydantic, ~0.1 s)
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
    config_file: str | None = "~/.ssh/config"  # OpenSSH client config; None: none read


@dataclass(frozen=True)
class Endpoint:
    """One machine to log in to, after ~/.ssh/config: the target or a ProxyJump hop."""

    address: str
    port: int
    user: str
    key_files: tuple[str, ...]  # the topology's key or the config's IdentityFile
    look_for_keys: bool  # also ~/.ssh/id_*, as ssh does when no key was given

    @property
    def name(self) -> str:
        """How known_hosts names it."""
        return known_hosts_name(self.address, self.port)


@dataclass(frozen=True)
class Route:
    """Everything a login needs, as plain data: made here from the topology, ~/.ssh/config
    and SshOptions, carried to the ssh relay as JSON (`to_json`, `from_json`)."""

    hops: tuple[Endpoint, ...]
    target: Endpoint
    known_hosts: str | None  # the topology's file, besides ~/.ssh/known_hosts
    save_to: str  # where a key accepted with save_new goes
    trust_new: bool
    save_new: bool
    timeout: float

    @property
    def first(self) -> Endpoint:
        """The machine the TCP connection goes to: the first hop, or the target."""
        return self.hops[0] if self.hops else self.target

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        def endpoint(raw: dict[str, Any]) -> Endpoint:
            return Endpoint(**{**raw, "key_files": tuple(raw["key_files"])})

        return cls(
            **{
                **data,
                "hops": tuple(endpoint(h) for h in data["hops"]),
                "target": endpoint(data["target"]),
            }
        )


def route(host: str, target: SshTarget, options: SshOptions) -> Route:
    """How to reach and log in to `target`, with ~/.ssh/config read now; a missing
    known_hosts file is refused here, before any connection is made."""
    known_hosts = target.known_hosts_file
    if known_hosts is not None and not os.path.exists(known_hosts):
        raise HostKeyRefused(
            f"known_hosts file {known_hosts} does not exist; create it with the machine's "
            "key (see `netharness` README, Running against real machines)",
            host=host,
        )
    hops, endpoint = resolve(target, options.config_file)
    return Route(
        hops=tuple(hops),
        target=endpoint,
        known_hosts=target.known_hosts_file,
        save_to=target.known_hosts_file or os.path.expanduser(SYSTEM_KNOWN_HOSTS),
        trust_new=options.trust_new_host_keys,
        save_new=options.save_host_keys,
        timeout=options.timeout,
    )


def resolve(target: SshTarget, config_file: str | None) -> tuple[list[Endpoint], Endpoint]:
    """(the ProxyJump hops in order, the target), with ~/.ssh/config applied."""
    config = _read_config(config_file)
    found = config.lookup(target.address) if config is not None else {}
    key = target.key_file
    endpoint = _endpoint(
        found,
        target.address,
        port=target.port if target.port != DEFAULT_PORT else None,
        user=target.user,
        keys=(key,) if key else None,
    )
    jump = str(found.get("proxyjump", "none"))
    hops = [] if jump.lower() == "none" else [_hop(h.strip(), config) for h in jump.split(",")]
    return hops, endpoint


DEFAULT_PORT = 22


def _read_config(path: str | None) -> paramiko.SSHConfig | None:
    if path is None or not os.path.exists(os.path.expanduser(path)):
        return None
    try:
        return paramiko.SSHConfig.from_path(os.path.expanduser(path))
    except (OSError, paramiko.ConfigParseError) as exc:
        raise BackendError(f"cannot read the ssh config {path}: {exc}") from None


def _hop(text: str, config: paramiko.SSHConfig | None) -> Endpoint:
    """A ProxyJump entry, `[user@]host[:port]`, with that host's own config applied."""
    user, _, rest = text.rpartition("@")
    host, port = rest, None
    if rest.startswith("["):  # [v6 address]:port
        host, _, tail = rest[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") else None
    elif rest.count(":") == 1:
        host, _, number = rest.partition(":")
        port = int(number)
    found = config.lookup(host) if config is not None else {}
    return _endpoint(found, host, port=port, user=user or None, keys=None)


def _endpoint(
    found: dict[str, Any],
    alias: str,
    *,
    port: int | None,
    user: str | None,
    keys: tuple[str, ...] | None,
) -> Endpoint:
    configured = tuple(os.path.expanduser(k) for k in found.get("identityfile", ()))
    return Endpoint(
        address=str(found.get("hostname", alias)),
        port=port or int(found.get("port", DEFAULT_PORT)),
        user=user or found.get("user") or getpass.getuser(),
        key_files=keys or tuple(k for k in configured if os.path.exists(k)),
        look_for_keys=keys is None,
    )


class _Chained(paramiko.SSHClient):
    """A client reached through ProxyJump hops; closing it closes them too."""

    def __init__(self) -> None:
        super().__init__()
        self.hops: list[paramiko.SSHClient] = []

    def close(self) -> None:
        try:
            super().close()
        finally:
            for hop in reversed(self.hops):
                hop.close()


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
    def __init__(self, route: Route) -> None:
        self._route = route

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        if not self._route.trust_new:
            raise _Refused(key)
        if self._route.save_new:
            # One line appended, as `ssh` does: the rest of the file is left alone.
            save_to = self._route.save_to
            os.makedirs(os.path.dirname(save_to) or ".", mode=0o700, exist_ok=True)
            with open(save_to, "a", encoding="ascii") as file:
                file.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def open_client(host: str, target: SshTarget, options: SshOptions) -> paramiko.SSHClient:
    """Connect and authenticate to `target` (through its ProxyJump hops, if
    ~/.ssh/config names some); BackendError with the reason and the fix."""
    way = route(host, target, options)
    return login(host, way, first_socket(host, way, options))


def first_socket(host: str, route: Route, options: SshOptions) -> socket.socket:
    """The TCP connection to the route's first machine, made with `options.connect`."""
    return _connect(host, route.first, options)


def login(host: str, route: Route, sock: socket.socket) -> paramiko.SSHClient:
    """Log in over `sock` (the connection to `route.first`): each hop, then the target
    through the last hop's direct-tcpip channel. `sock` is the client's from here on."""
    client = _Chained()
    try:
        via_sock: Any = sock
        for index, hop in enumerate(route.hops):
            via = _login(host, hop, via_sock, route)
            client.hops.append(via)
            following = route.hops[index + 1] if index + 1 < len(route.hops) else route.target
            via_sock = _channel(host, via, hop, following, route.timeout)
        _login(host, route.target, via_sock, route, client)
    except BaseException:
        client.close()
        sock.close()  # closed already if a login got as far as the key exchange
        raise
    return client


def _login(
    host: str,
    endpoint: Endpoint,
    sock: Any,
    route: Route,
    client: paramiko.SSHClient | None = None,
) -> paramiko.SSHClient:
    """Key exchange, host key check, then public-key authentication over `sock`."""
    client = client if client is not None else paramiko.SSHClient()
    name = endpoint.name
    # paramiko takes a list of key files too (its stubs say one)
    key_files: Any = list(endpoint.key_files) or None
    try:
        client.load_system_host_keys()  # ~/.ssh/known_hosts, never written back
        known_hosts = route.known_hosts
        if known_hosts is not None:  # `route` made sure it exists
            client.get_host_keys().load(known_hosts)  # not remembered for saving
        client.set_missing_host_key_policy(_Policy(route))
        try:
            client.connect(
                endpoint.address,
                port=endpoint.port,
                username=endpoint.user,
                key_filename=key_files,
                sock=sock,
                timeout=route.timeout,
                banner_timeout=route.timeout,
                auth_timeout=route.timeout,
                allow_agent=True,
                look_for_keys=endpoint.look_for_keys,
            )
        except _Refused as refused:
            raise _unknown_key(host, name, refused.key, route.save_to) from None
        except paramiko.BadHostKeyException as exc:
            raise _changed_key(host, name, exc, known_hosts) from None
        except paramiko.AuthenticationException as exc:
            user = endpoint.user
            raise BackendError(
                f"{user}@{name} accepted none of our keys ({exc}); netharness logs in with "
                "the topology's `key`, the ssh config's IdentityFile, ssh-agent or "
                f"~/.ssh/id_* only (never a password): add the public key to "
                f"~{user}/.ssh/authorized_keys there",
                host=host,
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise BackendError(f"ssh to {name} failed: {exc}", host=host) from None
    except BaseException:
        client.close()
        raise
    return client


def _channel(
    host: str, via: paramiko.SSHClient, hop: Endpoint, following: Endpoint, timeout: float
) -> paramiko.Channel:
    """A TCP connection from jump host `hop` to the next machine (ssh -J's way)."""
    transport = via.get_transport()
    assert transport is not None, "a logged-in client has a transport"
    try:
        return transport.open_channel(
            "direct-tcpip", (following.address, following.port), ("127.0.0.1", 0), timeout=timeout
        )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise BackendError(
            f"the jump host {hop.name} could not reach {following.name}: {exc}", host=host
        ) from None


def _connect(host: str, endpoint: Endpoint, options: SshOptions) -> socket.socket:
    connect = options.connect or _tcp
    try:
        return connect(endpoint.address, endpoint.port, options.timeout)
    except OSError as exc:
        where = f"cannot connect to {endpoint.address} port {endpoint.port}"
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
