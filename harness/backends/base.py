"""The backend seam: how a host is made, how a process starts in it, how it goes away.

A backend knows nothing of networks, addresses, firewalls or agents' protocol; the fabric
wires every host through the network namespace handle the backend gives back, and the
rest of netharness is shared. Keep this interface small.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.errors import UsageError
from harness.topology import Host


class Process(Protocol):
    """A process started inside a host, as seen from the controller."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int:
        """Wait for the process to exit and return its exit status (negative: signal)."""
        ...

    def kill(self, signal: int) -> None:
        """Send `signal` to the process; no error if it has already exited."""
        ...


class FutureProcess:
    """A `Process` whose exit status arrives as a future, set by `_exited`."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def _exited(self, status: int) -> None:
        if not self._exit.done():
            self._exit.set_result(status)


@dataclass(frozen=True)
class Stdio:
    """File descriptors the new process gets as 0, 1 and 2; the caller keeps its own ends."""

    stdin: int
    stdout: int
    stderr: int


@dataclass
class HostHandle:
    """What a backend gives back for a host it made: the network namespace to wire into."""

    name: str  # the topology's host name
    # A path that setns(2) accepts, e.g. /run/netns/nh-<lab>-<host>; empty for a host
    # with no namespace on this machine (ssh: an existing machine), which is not wired.
    netns_path: str
    backend: str
    details: dict[str, str] = field(default_factory=dict)


STOP_GRACE = 1.0
"""Seconds a user's process gets between SIGTERM and SIGKILL when its lab ends."""

AGENT: Sequence[str] = ("<netharness-hostagent>",)
"""argv for `Backend.start` that means: the host agent, delivered the backend's way."""


class Backend(abc.ABC):
    """One kind of host. Instances belong to one lab and are not shared between labs."""

    name: str
    #: Whether `HostHandle.netns_path` is a namespace on this machine that the controller
    #: may enter (firewall policy, nft). False for hosts that are other machines (ssh).
    local_netns: bool = True
    #: Why its hosts cannot be made from a user namespace (rootless mode); empty if they can.
    needs_root: str = ""

    @classmethod
    @abc.abstractmethod
    def for_lab(cls, **kwargs: Any) -> Backend:
        """The backend of one lab, from `create_backend`'s keyword arguments."""

    @classmethod
    def run_attached(cls, host: dict[str, Any], argv: list[str], env: dict[str, str]) -> int:
        """Run `argv` in a recorded host (its ledger `hosts` entry) on this process's
        stdio; its exit code. Only hosts a detached lab can have need it."""
        raise UsageError(f"cannot enter {cls.name} host {host.get('netns', '?')} from here")

    @classmethod
    def shell_argv(cls, env: Mapping[str, str]) -> list[str]:
        """An interactive shell in such a host: the user's own, by default."""
        return [env.get("SHELL", "/bin/bash")]

    @abc.abstractmethod
    async def create(self, host: Host) -> HostHandle:
        """Make the host (nothing wired yet) and return its namespace handle."""

    @abc.abstractmethod
    async def start(
        self,
        handle: HostHandle,
        argv: Sequence[str],
        stdio: Stdio,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Process:
        """Start `argv` (or `AGENT`) inside the host with the given stdio, as `user`
        (a name or uid; None: as the controller's user).

        `env` or `cwd` given: a user's process. It gets the host's usual environment
        plus `env`, starts in `cwd` (None: the backend's default), leads a process group
        of its own (see `signal_group`), and a command that cannot be started raises
        ProcessFailed ("command not found: X") where the backend can tell.
        """

    def signal_group(self, handle: HostHandle, process: Process, sig: int) -> None:
        """Send `sig` to the process group of a user's process `start` made: it and what
        it started, even after it has itself exited. By default only to the process."""
        process.kill(sig)

    @classmethod
    def remove_recorded(cls, lab_id: str, entries: list[dict[str, str]]) -> list[str]:
        """Remove what a lab's ledger names of this backend's kinds (entries of those
        kinds only, `harness.backends.RECORDED_KINDS`), dead lab or alive; returns what
        it removed. This is the only way a backend's hosts go: `Lab.down`, `netharness
        down` and `clean` all end here."""
        return []

    async def check_hosts(self, handles: Sequence[HostHandle]) -> None:  # noqa: B027
        """At the end of bring-up: raise ProcessFailed if a host's own main process has
        ended meanwhile (a container that exited). Hosts without one: nothing to check."""

    async def detach(self, log_fd: int) -> None:  # noqa: B027 - optional hook, no-op default
        """The lab is about to outlive this process (`netharness up`): hand whatever keeps
        its processes' stdio flowing to a process that stays (stderr to `log_fd`)."""

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release what the backend itself holds (connections, threads); its hosts are
        removed from the ledger (`remove_recorded`)."""
