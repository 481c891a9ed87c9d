"""The backend seam: how a host is made, how a process starts in it, how it goes away.

A backend knows nothing of networks, addresses, firewalls or agents' protocol; the fabric
wires every host through the network namespace handle the backend gives back, and the
rest of netharness is shared. Keep this interface small.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

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
    netns_path: str  # a path that setns(2) accepts, e.g. /run/netns/nh-<lab>-<host>
    backend: str
    details: dict[str, str] = field(default_factory=dict)


AGENT: Sequence[str] = ("<netharness-hostagent>",)
"""argv for `Backend.start` that means: the host agent, delivered the backend's way."""


class Backend(abc.ABC):
    """One kind of host. Instances belong to one lab and are not shared between labs."""

    name: str

    @abc.abstractmethod
    async def create(self, host: Host) -> HostHandle:
        """Make the host (nothing wired yet) and return its namespace handle."""

    @abc.abstractmethod
    async def start(
        self, handle: HostHandle, argv: Sequence[str], stdio: Stdio, user: str | None = None
    ) -> Process:
        """Start `argv` (or `AGENT`) inside the host with the given stdio, as `user`
        (a name or uid; None: as the controller's user)."""

    @abc.abstractmethod
    async def destroy(self, handle: HostHandle) -> None:
        """Remove the host and every process in it. Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release what the backend itself holds once every host is destroyed."""
