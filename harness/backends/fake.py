"""A backend for unit tests of the lab's logic, in the spirit of httpx's MockTransport:
its hosts exist only in this object, and what is started in them runs on this machine as
a plain child process (the host agent as `python -m hostagent`), with no namespace.

    backend = FakeBackend()
    handle = await backend.create(host_spec)
    process = await backend.start(handle, AGENT, stdio)

Not a topology backend: a test hands it to what it tests. Nothing it makes needs
cleaning beyond its processes, which the test's runtime kills or closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from harness.backends.base import AGENT, Backend, HostHandle, Process, Stdio
from harness.errors import ProcessFailed
from harness.topology import Host


class _Child:
    """An asyncio child process seen as a `Process`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    def kill(self, signal: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.send_signal(signal)


class FakeBackend(Backend):
    name = "fake"
    local_netns = False  # nothing to enter: its hosts are this machine, unconfined

    def __init__(self) -> None:
        self.hosts: dict[str, HostHandle] = {}
        self.started: list[tuple[str, tuple[str, ...], str | None]] = []  # host, argv, user

    @classmethod
    def for_lab(cls, **kwargs: Any) -> FakeBackend:
        return cls()

    async def create(self, host: Host) -> HostHandle:
        handle = HostHandle(name=host.name, netns_path="", backend=self.name)
        self.hosts[host.name] = handle
        return handle

    async def start(
        self,
        handle: HostHandle,
        argv: Sequence[str],
        stdio: Stdio,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Process:
        if handle.name not in self.hosts:
            raise KeyError(f"no host {handle.name} in this fake backend")
        command = [sys.executable, "-m", "hostagent"] if argv is AGENT else list(argv)
        self.started.append((handle.name, tuple(command), user))
        user_process = env is not None or cwd is not None
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=stdio.stdin,
                stdout=stdio.stdout,
                stderr=stdio.stderr,
                env={**os.environ, **env} if env else None,
                cwd=cwd,
                start_new_session=user_process,  # a group of its own, as the seam says
            )
        except FileNotFoundError as exc:
            if not user_process:
                raise
            missing = command[0] if exc.filename in (None, command[0]) else exc.filename
            what = "command not found" if missing == command[0] else "no such directory"
            raise ProcessFailed(f"{what}: {missing}") from None
        return _Child(process)

    def signal_group(self, handle: HostHandle, process: Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
