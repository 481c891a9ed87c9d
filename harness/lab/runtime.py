"""A running host's machinery: what the lab and its collaborators (faults, diagnostics)
do in a host, without reaching into `Lab`.

    runtime = lab.hosts["h1"].runtime
    agent = runtime.call(runtime.start_agent())

Each method is a coroutine on the lab's event loop; `call` runs one from any other thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from harness.backends.base import AGENT, Backend, HostHandle, Process, Stdio
from harness.core import pgroups, userns
from harness.core.agent import Agent, AgentChannel
from harness.errors import BackendError, HarnessError, ProcessFailed, UsageError
from harness.lab import processes
from harness.lab._pipes import communicate
from harness.lab.processes import ProcessHandle
from harness.observe import diag
from harness.topology import Program, Ready
from harness.topology.model import MAIN_PROCESS as MAIN

if TYPE_CHECKING:
    from harness.backends._forkserver import ForkServerClient
    from harness.core._loop import LoopThread
    from harness.topology import Host

T = TypeVar("T")
MAIN_READY_TIMEOUT = 10.0  # seconds for a container's main process to listen on a service


@dataclass(frozen=True)
class CommandResult:
    """What a command run inside a host did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Agents:
    """Every agent one Lab object started and has not yet closed or handed over."""

    def __init__(self) -> None:
        self._agents: list[Agent] = []

    def add(self, agent: Agent) -> None:
        # Forget agents that have ended, with their event logs (a suite starts thousands).
        self._agents = [a for a in self._agents if a.process.returncode is None]
        self._agents.append(agent)

    def live(self, host: str) -> list[Agent]:
        return [a for a in self._agents if a.host == host and a.process.returncode is None]

    def all(self) -> list[Agent]:
        return list(self._agents)

    def take(self) -> list[Agent]:
        """All of them, now no longer this registry's (to close or to hand over)."""
        agents, self._agents = self._agents, []
        return agents


class HostRuntime:
    """One host of a running lab: start agents and commands in it, open its services."""

    def __init__(
        self,
        spec: Host,
        handle: HostHandle,
        backend: Backend,
        *,
        runner: LoopThread,
        agents: Agents,
        logs: Path,
        forkserver: Callable[[], ForkServerClient | None],
    ) -> None:
        self.spec = spec
        self.handle = handle
        self.host_agent: Agent | None = None  # started at bring-up; holds the services
        self.processes: dict[str, ProcessHandle] = {}  # the user's, that this Lab started
        self._backend = backend
        self._runner = runner
        self._agents = agents
        self._logs = logs
        self._forkserver = forkserver

    @property
    def name(self) -> str:
        return self.spec.name

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one of these coroutines on the lab's loop and wait for it."""
        return self._runner.run(coro)

    async def start_agent(self, user: str | None = None) -> Agent:
        """A new agent process in the host (as `user` if given), its stderr in the log."""
        userns.check_user(user)
        in_read, in_write = os.pipe()
        out_read, out_write = os.pipe()
        log = os.open(
            self._logs / f"{self.name}.agents.log",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            process = await self._backend.start(
                self.handle, AGENT, Stdio(in_read, out_write, log), user=user
            )
        except BaseException:
            for fd in (in_write, out_read):
                os.close(fd)
            raise
        finally:
            for fd in (in_read, out_write, log):
                os.close(fd)
        try:
            channel = await AgentChannel.open_pipes(out_read, in_write)
        except BaseException:
            process.kill(signal.SIGKILL)
            raise
        agent = Agent(channel, self._runner, host=self.name, process=process)
        self._agents.add(agent)
        return agent

    async def open_services(self) -> None:
        """The topology's `services:` of this host, listening in its host agent."""
        agent = self.host_agent
        assert agent is not None, "open_services before the host agent started"
        for service in self.spec.services:
            if service.process is not None:
                continue  # the user's process listens there itself
            addresses = [service.address] if service.address else ["0.0.0.0"]
            if service.address is None and any(i.address6 for i in self.spec.interfaces):
                addresses.append("::")
            for address in addresses:
                await agent.channel.request(
                    "listen",
                    proto=service.proto,
                    address=address,
                    port=service.port,
                    v6only=True if ":" in address else None,
                    echo=True,
                )

    async def run_command(
        self,
        argv: list[str],
        timeout: float,
        stdin: bytes | None = None,
        *,
        from_controller: bool = False,
    ) -> CommandResult:
        """Run `argv` in the host; `from_controller`: the controller's own binary, started
        by the fork server in the host's namespace (whatever the backend, no image needs it)."""

        def start(fds: tuple[int, int, int]) -> Awaitable[Process]:
            if from_controller:
                forkserver = self._forkserver()
                assert forkserver is not None, "a controller command before bring-up"
                return forkserver.spawn(self.handle.netns_path, argv, fds)
            return self._backend.start(self.handle, argv, Stdio(*fds))

        try:
            code, out, err = await communicate(start, stdin or b"", timeout)
        except TimeoutError:
            raise HarnessError(
                f"{' '.join(argv)} did not finish within {timeout} s in host {self.name}"
            ) from None
        return CommandResult(
            tuple(argv), code, out.decode(errors="replace"), err.decode(errors="replace")
        )

    async def kill_agents(self, timeout: float) -> int:
        """SIGKILL every live agent this Lab started here and reap them; how many."""
        agents = self._agents.live(self.name)
        for agent in agents:
            agent.process.kill(signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.gather(*(a.process.wait() for a in agents)), timeout)
        except TimeoutError:
            alive = [str(a.pid) for a in agents if a.process.returncode is None]
            raise BackendError(
                f"agents {', '.join(alive)} still running {timeout:g} s after SIGKILL "
                f"(backend {self.handle.backend})",
                host=self.name,
            ) from None
        # Their pipes go with them (what they said stays readable in their event logs).
        await asyncio.gather(*(a.channel.aclose(timeout=0) for a in agents))
        return len(agents)

    async def restart(self, timeout: float) -> None:
        """The host's applications over again: its agents killed, a new host agent with
        the topology's services; addresses, routes and rules stay."""
        await self.kill_agents(timeout)
        self.host_agent = await self.start_agent()
        await self.open_services()

    # -- the user's processes (harness/lab/processes.py) -------------------------------

    async def start_process(self, program: Program) -> ProcessHandle:
        """Start a user's process and wait until it is ready; on failure it is stopped
        and ProcessFailed raised. Its name must not be a live process's of this host."""
        userns.check_user(program.user)
        current = self.processes.get(program.name)
        if current is not None and current.returncode is None:
            raise UsageError(
                f"host {self.name} already runs a process {program.name!r} (pid {current.pid})"
            )
        handle = await processes.start(
            program, self.handle, self._backend, self._logs / self.name, self._runner
        )
        self.processes[program.name] = handle
        await handle.until_ready(self.listening)
        return handle

    async def run_programs(self) -> None:
        """The host's `run:` programs in file order, each ready before the next starts."""
        for program in self.spec.run:
            await self.start_process(program)

    async def await_process_services(self) -> None:
        """Wait until each service a process of the user's holds listens; a `run:`
        program that exits first, or the timeout, raises ProcessFailed."""
        for service in self.spec.services:
            if service.process is None:
                continue
            owner = self.processes.get(service.process)
            if owner is not None:
                await owner.until_ready(self.listening, [Ready(service.proto, service.port)])
            elif service.process == MAIN:
                await self._await_main(Ready(service.proto, service.port))

    async def _await_main(self, ready: Ready, timeout: float = MAIN_READY_TIMEOUT) -> None:
        """Wait until the host's own main process (a container's) listens on `ready`;
        ProcessFailed at once if it ends first (the backend says how, with its log)."""
        pid = int(self.handle.details.get("pid", "0"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while ready.port not in await self.listening(ready.proto):
            if not pgroups.alive(pid):
                await self._backend.check_hosts([self.handle])  # raises, with its log
                raise ProcessFailed("ended before it listened", host=self.name, process=MAIN)
            if loop.time() >= deadline:
                raise ProcessFailed(
                    f"not ready after {timeout:g} s: nothing listens on {ready.proto}/{ready.port}",
                    host=self.name,
                    process=MAIN,
                )
            await asyncio.sleep(processes.READY_POLL)

    async def stop_processes(self, grace: float = processes.STOP_GRACE) -> None:
        await processes.stop_all(list(self.processes.values()), grace)

    async def listening(self, proto: str) -> set[int]:
        """The ports on which a `proto` socket of the host listens (TCP) or is bound
        (UDP), IPv4 and IPv6, as sock_diag shows them."""
        states = {"LISTEN"} if proto == "tcp" else None
        found: set[int] = set()
        for family in (4, 6):
            if self.handle.netns_path:
                rows = await asyncio.to_thread(
                    diag.sockets_in,
                    self.handle.netns_path,
                    proto,  # type: ignore[arg-type]
                    family,
                    states=states,
                    label=self.name,
                )
                found |= {s.local[1] for s in rows}
            else:  # an existing machine: its agent asks its kernel
                found |= await self._listening_through_agent(proto, family)
        return found

    async def _listening_through_agent(self, proto: str, family: int) -> set[int]:
        assert self.host_agent is not None, "the host agent starts before any process"
        mask = 1 << 10 if proto == "tcp" else (1 << 13) - 1  # LISTEN; UDP: any state
        reply = await self.host_agent.channel.request(
            "sock_diag", proto=proto, family=family, states=mask
        )
        return {int(row[2]) for row in reply["sockets"]}


async def start_programs(hosts: Sequence[HostRuntime]) -> None:
    """Every host's `run:` programs, hosts at once, each host's in file order, then the
    services programs and containers' own main processes hold; the first failure stops
    the rest (what started is stopped by the teardown that follows)."""
    await _first_failure(h.run_programs() for h in hosts if h.spec.run)
    await _first_failure(h.await_process_services() for h in hosts)


async def stop_programs(hosts: Sequence[HostRuntime]) -> None:
    """Before the namespaces go: every group gets SIGTERM and one grace together."""
    await asyncio.gather(*(h.stop_processes() for h in hosts))


async def _first_failure(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run them at once until all are done or one fails; then the others are cancelled
    and its exception raised."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    if not tasks:
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
