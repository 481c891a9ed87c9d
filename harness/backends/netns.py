"""The netns backend: a host is a named network namespace, `nh-<lab>-<host>`.

Processes start through the lab's fork server (about a millisecond each) and the
namespace is created by this process's loop thread with unshare + bind mount, so
nothing but the namespace file appears outside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from harness.backends._forkserver import ForkServerClient
from harness.backends.base import AGENT, Backend, HostHandle, Process, Stdio
from harness.core import _netns, naming
from harness.core.ledger import ABSENT
from harness.errors import BackendError
from harness.topology import Host


class NetnsBackend(Backend):
    name = "netns"

    def __init__(
        self,
        lab_id: str,
        forkserver: ForkServerClient,
        record: Callable[[str, str, dict[str, str]], None],
    ) -> None:
        self._lab_id = lab_id
        self._forkserver = forkserver
        self._record = record  # writes the ledger entry before the object exists

    async def create(self, host: Host) -> HostHandle:
        name = naming.host_netns(self._lab_id, host.name)
        path = _netns.netns_path(name)
        self._record("netns", path, {"host": host.name})
        try:
            fd = _netns.create(name)
        except FileExistsError as exc:
            self._record("netns", path, {"host": host.name, "state": ABSENT})
            raise BackendError(
                f"namespace {name} already exists and is not ours; remove it or pick "
                "another lab id",
                host=host.name,
                code=exc.errno,
            ) from exc
        except OSError as exc:
            what = f"cannot create namespace {name}"
            raise BackendError.from_os(exc, what, host=host.name) from exc
        try:
            with _netns.entered(fd):
                # Addresses are usable at once: no duplicate address detection in a lab.
                for conf in ("all", "default"):
                    _netns.write_sysctl(f"net.ipv6.conf.{conf}.accept_dad", "0")
        finally:
            os.close(fd)
        return HostHandle(
            name=host.name, netns_path=path, backend=self.name, details={"netns": name}
        )

    async def start(
        self, handle: HostHandle, argv: Sequence[str], stdio: Stdio, user: str | None = None
    ) -> Process:
        command = None if argv is AGENT else list(argv)
        return await self._forkserver.spawn(
            handle.netns_path, command, (stdio.stdin, stdio.stdout, stdio.stderr), user=user
        )

    async def destroy(self, handle: HostHandle) -> None:
        _netns.remove(handle.netns_path)
