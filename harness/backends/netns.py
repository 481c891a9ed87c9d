"""The netns backend: a host is a named network namespace, `nh-<lab>-<host>`.

Processes start through the lab's fork server (about a millisecond each) and the
namespace is created by this process's loop thread with unshare + bind mount, so
nothing but the namespace file appears outside it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness.backends._forkserver import ForkedProcess, ForkServerClient
from harness.backends.base import AGENT, STOP_GRACE, Backend, HostHandle, Process, Stdio
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

    @classmethod
    def for_lab(cls, **kwargs: Any) -> NetnsBackend:
        return cls(kwargs["lab_id"], kwargs["forkserver"], kwargs["record"])

    @classmethod
    def run_attached(cls, host: dict[str, Any], argv: list[str], env: dict[str, str]) -> int:
        return run_in_namespace(_netns.netns_path(host["netns"]), argv, env)

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
        self,
        handle: HostHandle,
        argv: Sequence[str],
        stdio: Stdio,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Process:
        command = None if argv is AGENT else list(argv)
        fds = (stdio.stdin, stdio.stdout, stdio.stderr)
        if env is None and cwd is None:
            return await self._forkserver.spawn(handle.netns_path, command, fds, user=user)
        # A user's process: the fork server reports a failed exec, and gives it a grace
        # between SIGTERM and SIGKILL if it outlives us (a detached lab going down).
        # Like `ip netns exec`, it starts where the controller is unless told otherwise.
        return await self._forkserver.spawn(
            handle.netns_path,
            command,
            fds,
            user=user,
            env_add=env or {},
            cwd=cwd if cwd is not None else os.getcwd(),
            grace=STOP_GRACE,
        )

    def signal_group(self, handle: HostHandle, process: Process, sig: int) -> None:
        if isinstance(process, ForkedProcess):
            process.kill_group(sig)
        else:
            process.kill(sig)


def run_in_namespace(netns_path: str, argv: list[str], env: dict[str, str]) -> int:
    """Become `argv` inside the namespace, in a child on this terminal; its exit code."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: enter the namespace and become the command
        try:
            _netns.setns(fd)
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"netharness: {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)
    os.close(fd)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child handles Ctrl-C
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGINT, previous)
    return os.waitstatus_to_exitcode(status) if status >= 0 else 1
