"""A running lab: one topology brought up, with one id and a ledger of what it made.

    with Lab.up(load_topology("topologies/lan.yaml")) as lab:
        server = lab.hosts["h2"].agent()

Every acquisition is written to the ledger before it happens, and teardown works from the
ledger, so a failed bring-up, an exception, Ctrl-C and `netharness clean` after a crash
all go through the same removal. Constructing a Lab touches nothing; `start()` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from harness.backends import (
    backend_class,
    check_backend_name,
    create_backend,
    recorded_backend,
)
from harness.backends._forkserver import ForkServerClient
from harness.backends.base import Backend, HostHandle
from harness.core import _netns, userns
from harness.core import ledger as _ledger
from harness.core._loop import LoopThread
from harness.core.agent import Agent
from harness.errors import (
    SEE_DOCTOR,
    AgentError,
    BackendError,
    EnvironmentProblem,
    HarnessError,
    LabNotFound,
    UsageError,
)
from harness.lab import firewall as _firewall
from harness.lab import processes as _processes
from harness.lab import progress as _progress
from harness.lab import teardown as _teardown
from harness.lab.fabric import Fabric, wire_all
from harness.lab.processes import ProcessHandle
from harness.lab.runtime import (
    Agents,
    CommandResult,
    HostRuntime,
    start_programs,
    stop_programs,
)
from harness.observe import capture as _capture
from harness.observe.faults import Fault, Faults, Link
from harness.topology import (
    SYSCTLS,
    Host,
    Ready,
    Topology,
    load_topology,
    parse_topology,
)

AGENT_CLOSE_TIMEOUT = 1.0
T = TypeVar("T")


class LabHost:
    """A host of a running lab: its addresses, its agents, commands run inside it."""

    def __init__(self, lab: Lab, spec: Host, handle: HostHandle, runtime: HostRuntime) -> None:
        self._lab = lab
        self.spec = spec
        self.handle = handle
        self.runtime = runtime  # start agents and commands, open services: lab/runtime.py

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def netns(self) -> str:
        """The namespace name, usable with `ip netns exec` (docker hosts' too); for a
        host with no name there, the path of its namespace, usable with `nsenter --net=`."""
        return self.handle.details.get("netns", self.handle.netns_path)

    def address(self, network: str | None = None, family: int = 4) -> str:
        """This host's address on `network` (its first network if omitted)."""
        interfaces = self.spec.interfaces
        if network is not None:
            interfaces = tuple(i for i in interfaces if i.network == network)
            if not interfaces:
                raise UsageError(f"host {self.name} is not on network {network!r}")
        for interface in interfaces:
            address = interface.address if family == 4 else interface.address6
            if address is not None:
                return str(address.ip)
        raise UsageError(
            f"host {self.name} has no IPv{family} address on {network or 'any network'}"
        )

    @property
    def addresses(self) -> dict[str, list[str]]:
        """Network name → this host's addresses on it (IPv4 first)."""
        return {
            i.network: [str(a.ip) for a in (i.address, i.address6) if a is not None]
            for i in self.spec.interfaces
        }

    @property
    def host_agent(self) -> Agent:
        """The agent started with the host at bring-up; it holds the topology's services."""
        return self._lab.host_agent(self.name)

    def agent(self, user: str | None = None) -> Agent:
        """Start a new agent process in this host: a new application with its own pid.

        `user` (a name or uid) runs it as that unprivileged user instead of root; a rootless
        lab has no other user (RootlessLimit).
        """
        return self.runtime.call(self.runtime.start_agent(user))

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, input: str | bytes | None = None
    ) -> CommandResult:
        """Run a command inside the host, feeding it `input`, and collect its output."""
        data = input.encode() if isinstance(input, str) else input
        return self.runtime.call(self.runtime.run_command(list(argv), timeout, data))

    def sysctl(self, key: str, value: str | None = None) -> str:
        """Read a network sysctl inside this host; with `value`, also set it.

        Returns the value before any change. Only the topology's safe set can be set
        (docs/topology.md); a suite that sets one restores it when done.
        """
        if value is not None and key not in SYSCTLS:
            raise UsageError(
                f"{key} is not one of the sysctls netharness sets: {', '.join(SYSCTLS)}"
            )
        if self._lab._state != "up":
            raise UsageError(f"lab {self._lab.id} is not up")
        path = self.handle.netns_path
        if not path:  # an existing machine (ssh): read it there, never change it
            if value is not None:
                raise UsageError(
                    f"host {self.name} is an existing machine reached over {self.handle.backend}"
                    f": netharness does not change its sysctls ({key})"
                )
            result = self.run(["cat", "/proc/sys/" + key.replace(".", "/")])
            if result.returncode != 0:
                raise BackendError(f"cannot read {key}: {result.stderr}", host=self.name)
            return " ".join(result.stdout.split())
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # setns is per thread
            return pool.submit(_sysctl_in, path, key, value).result()

    def start(
        self,
        command: str | Sequence[str],
        *,
        name: str | None = None,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        ready: Ready | str | Sequence[Ready | str] | None = None,
        ready_timeout: float = 10.0,
    ) -> ProcessHandle:
        """Start a process of yours in this host: a list, or a string split as a shell
        would (no shell runs it). Its stdout and stderr go to its log
        (`netharness logs LAB HOST NAME`); it leads its own process group and dies with
        the lab.

        `ready` ("tcp/8080", a `Ready`, or a list): return only once those sockets
        listen (sock_diag), within `ready_timeout` seconds. A process that exits first,
        a missing command or the timeout raise ProcessFailed with its log's tail; the
        process is stopped and the lab stays up. `name` (unique among this host's live
        processes) defaults to argv[0]'s name plus a counter.
        """
        if self._lab._state != "up":
            raise UsageError(f"lab {self._lab.id} is not up")
        program = _processes.program_for(
            command,
            name=name,
            taken=self.runtime.processes,
            user=user,
            env=env,
            cwd=cwd,
            ready=ready,
            ready_timeout=ready_timeout,
        )
        handle = self.runtime.call(self.runtime.start_process(program))
        self._lab._processes_changed()
        return handle

    @property
    def processes(self) -> Mapping[str, ProcessHandle]:
        """Name -> handle of the user's processes this Lab started in this host (the
        `run:` programs and `start()`), read-only; ended ones stay until a new one
        takes their name."""
        return MappingProxyType(self.runtime.processes)

    def kill_agents(self) -> int:
        """SIGKILL every agent in this host (a crash); returns how many. See restart()."""
        return self._lab.faults.kill_agents(self.name)

    def restart(self) -> None:
        """Start the host's applications over: its agent and topology services come back,
        addresses and routes stay."""
        self._lab.faults.restart(self.name)

    def __repr__(self) -> str:
        return f"<LabHost {self.name} {self.addresses}>"


class Lab:
    """One running instance of a topology. Use `Lab.up(...)` as a context manager."""

    def __init__(
        self,
        topology: Topology,
        *,
        lab_id: str | None = None,
        backend: str | None = None,
        capture: bool = False,
        capture_dir: str | os.PathLike[str] | None = None,
        backend_options: Mapping[str, Any] | None = None,
        progress: _progress.Callback | None = None,
    ) -> None:
        self.topology = topology
        self.id = lab_id or _ledger.new_lab_id()
        self.backend_name = backend  # overrides every host's own `backend:` when set
        # Extra keyword arguments for the backends' factories, e.g. the ssh backend's
        # `ssh_options` (harness.backends.ssh.SshOptions); each takes what it knows.
        self.backend_options = dict(backend_options or {})
        self.hosts: Mapping[str, LabHost] = MappingProxyType({})
        self._ledger = _ledger.Ledger(self.id)
        self._runner = LoopThread(f"netharness-{self.id}")
        self._forkserver: ForkServerClient | None = None
        self._backends: dict[str, Backend] = {}  # one instance per backend name in use
        self._fabric: Fabric | None = None
        self._agents = Agents()
        self._lifecycle: asyncio.Lock | None = None
        self._state = "new"  # new → starting → up → down | detached
        self._created = 0.0
        self._attached: _ledger.LabRecord | None = None  # set when joined, not owned
        self._progress = _progress.guarded(progress) if progress is not None else None
        self.timings: dict[str, float] = {}
        self._capture_all = capture  # every network, besides what the topology asks
        self._capture_dir = Path(capture_dir) if capture_dir is not None else None
        self._captures: list[_capture.Capture] = []
        self.faults = Faults(self)  # lab.link(...), partition, heal: harness/observe/faults.py

    # -- lifecycle -------------------------------------------------------------------

    def host_backend(self, spec: Host) -> str:
        """The backend a host of this lab is made with: `--backend`, else its own. An ssh
        host is an existing machine: no override makes it anything else."""
        if not backend_class(spec.backend).local_netns:
            return spec.backend
        return self.backend_name or spec.backend

    @classmethod
    def up(
        cls,
        topology: Topology | str | os.PathLike[str],
        *,
        backend: str | None = None,
        lab_id: str | None = None,
        capture: bool = False,
        capture_dir: str | os.PathLike[str] | None = None,
        backend_options: Mapping[str, Any] | None = None,
        progress: _progress.Callback | None = None,
    ) -> Lab:
        """Validate, build and start a lab; on any failure nothing is left behind.

        `capture` records every network to a pcap (besides the topology's `capture:`);
        pcaps go to `capture_dir`, by default the lab's ledger (gone with the lab).
        `progress` is called with a `harness.lab.progress.Event` per step of bring-up and
        teardown (from the lab's own thread; keep it quick).
        """
        if not isinstance(topology, Topology):
            topology = load_topology(topology)
        lab = cls(
            topology,
            lab_id=lab_id,
            backend=backend,
            capture=capture,
            capture_dir=capture_dir,
            backend_options=backend_options,
            progress=progress,
        )
        lab.start()
        return lab

    @classmethod
    def attach(cls, lab_id: str) -> Lab:
        """Join a lab that is already running (from `netharness up` or another program).

        The attached Lab starts its own agents and commands in the lab's hosts; leaving it
        (`down()` or the end of a `with` block) ends only what it started: the lab stays.
        """
        record = _ledger.find_lab(lab_id)
        if not record.alive:
            raise LabNotFound(
                f"lab {lab_id} has no live owner; `netharness clean` removes what it left"
            )
        try:
            text = (record.dir / "topology.yaml").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LabNotFound(f"lab {lab_id} is still coming up or going down") from None
        topology = parse_topology(text, str(record.info.get("source", lab_id)))
        lab = cls(topology, lab_id=lab_id)
        lab._attached = record
        _check_environment()
        cls.prepare_process(lab_id)
        lab._state = "starting"
        lab._runner.start()
        try:
            lab._runner.run(lab._join(record))
        except BaseException:
            lab.down()
            raise
        lab._state = "up"
        return lab

    @staticmethod
    def prepare_process(lab_id: str | None = None) -> None:
        """Put this process where rootless labs' namespaces are (harness.core.userns): a
        user namespace of its own, or that of the running lab `lab_id`. A no-op as root.
        `start` and `attach` do it; a program that starts threads first must call it
        before them (the kernel moves only a single-threaded process)."""
        if not userns.wanted():
            return
        if lab_id is None:
            userns.enter()
            return
        record = _ledger.find_lab(lab_id)
        if record.alive and record.owner_pid is not None:
            userns.join(record.owner_pid)

    def start(self) -> None:
        if self._state != "new":
            raise UsageError(f"lab {self.id} was already started")
        if self.backend_name is not None:
            check_backend_name(self.backend_name)
        _check_environment()
        if userns.wanted():
            self._enter_user_namespace()
        self._state = "starting"
        self._runner.start()
        try:
            self._runner.run(self._bring_up())
        except BaseException:
            self.down()
            raise
        self._state = "up"

    def down(self) -> None:
        """Tear everything down. Idempotent; safe after a failed or partial start."""
        if self._state in ("down", "detached", "new"):
            return
        try:
            try:
                self._release_faults()
            finally:
                self._runner.run(self._tear_down())
        finally:
            self._ledger.release()
            self._runner.stop()
            self._state = "down"

    def detach(self, announce: Callable[[int], None] | None = None) -> int:
        """Leave the lab running after this process exits; returns the new owner's pid.

        The lab's fork server takes it over (and its lock), keeps its agents and services
        alive, and tears it down on SIGTERM (`netharness down`). The hand-over commits
        only after `announce(owner_pid)` returns: if this process dies or `announce`
        raises before that, the lab is torn down rather than left running unannounced.
        """
        if self._state != "up":
            raise UsageError(f"lab {self.id} is not up")
        committed = False
        try:
            pid = self._runner.run(self._detach())
            if announce is not None:
                announce(pid)
            committed = True
        finally:
            self._runner.run(self._end_detach(committed))
            self._ledger.release()
            self._runner.stop()
            self._state = "detached"
        return pid

    def _enter_user_namespace(self) -> None:
        for spec in self.topology.hosts.values():
            reason = backend_class(self.host_backend(spec)).needs_root
            if reason:
                raise EnvironmentProblem(
                    f"host {spec.name}: {self.host_backend(spec)} hosts need root, and this "
                    f"lab is rootless (not root, or {userns.FORCE_ENV}=1): {reason}. Run as "
                    "root, or use netns hosts (--backend netns)"
                )
            for program in spec.run:  # refused before anything is made, not half-way
                userns.check_user(program.user)
        userns.enter()

    @property
    def state(self) -> str:
        """new, starting, up, down or detached."""
        return self._state

    @property
    def attached(self) -> bool:
        """Joined with `attach`: another process owns the lab (and its host services)."""
        return self._attached is not None

    def host_agent(self, host: str) -> Agent:
        """The agent a host got at bring-up (it holds the services; probes use it). A lab
        joined with `attach` starts one per host on first use and keeps it."""
        if host not in self.hosts:
            raise UsageError(f"lab {self.id} has no host {host!r}")
        runtime = self.hosts[host].runtime
        agent = runtime.host_agent
        if agent is None or agent.process.returncode is not None:
            agent = runtime.host_agent = self.hosts[host].agent()
        return agent

    # -- faults (harness/observe/faults.py) -------------------------------------------------

    def link(self, host: str, network: str) -> Link:
        """`host`'s cable to `network`: `.down()`, `.up()`, `.loss(%)`, `.rate("4mbit")`."""
        return self.faults.link(host, network)

    def partition(self, *groups: Iterable[str]) -> Fault:
        """Cut each group of hosts off from the others until `heal()` (or `.undo()`)."""
        return self.faults.partition(*groups)

    def heal(self) -> None:
        """Undo every fault in place, newest first: the lab is as it was before them."""
        self.faults.heal()

    def _release_faults(self) -> None:
        try:
            self.faults.release()
        except HarnessError:
            if self._attached is not None:  # the lab lives on: say what was left
                raise
            # An owned lab's namespaces are about to go, and with them any fault.

    def __enter__(self) -> Lab:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def ledger_dir(self) -> Path:
        return self._ledger.dir

    @property
    def capture_dir(self) -> Path:
        return self._capture_dir or self._ledger.dir / "captures"

    @property
    def captures(self) -> dict[str, Path]:
        """Label (`lan`, `h1:eth0`) → pcap path of every capture this Lab started."""
        return {c.target.label: c.path for c in self._captures}

    def capture(
        self, target: str, path: str | os.PathLike[str] | None = None
    ) -> _capture.LabCapture:
        """Start capturing `target` (a network, or `host:iface`) to `path` now."""
        parsed = _capture.parse_target(self.topology, target)
        file = Path(path) if path is not None else self.capture_dir / parsed.filename
        assert self._forkserver is not None
        started = self._run(
            _capture.start(
                self._forkserver,
                self.id,
                [parsed],
                file.parent,
                self._ledger.logs,
                self._host_netns(),
                file.name,
            )
        )
        self._captures += started
        if self._attached is None:  # lab.json lists them (an attached lab's is not ours)
            self._ledger.write_info(self.describe())
        return _capture.LabCapture(started[0], self._runner)

    def diagnostics(self, hosts: Sequence[str] | None = None) -> str:
        """Each host's links, routes, sockets, nft ruleset, agent log and pcaps, as text."""
        from harness.observe.diagnostics import text

        return text(self, hosts)

    def _runtime(self, spec: Host, handle: HostHandle) -> HostRuntime:
        return HostRuntime(
            spec,
            handle,
            self._backends[handle.backend],
            runner=self._runner,
            agents=self._agents,
            logs=self._ledger.logs,
            forkserver=lambda: self._forkserver,
        )

    def _phase(self, name: str, total: int) -> _progress.Phase:
        return _progress.Phase(self._progress, self.id, name, total)

    def _removal_progress(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(_progress.Event(self.id, "removed", done, total))

    def _host_netns(self) -> dict[str, str]:
        return {name: host.handle.netns_path for name, host in self.hosts.items()}

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._state != "up":
            coro.close()
            raise UsageError(f"lab {self.id} is not up (state: {self._state})")
        return self._runner.run(coro)

    def describe(self) -> dict[str, Any]:
        """What `up --json` prints and lab.json stores."""
        return {
            "id": self.id,
            "topology": self.topology.name,
            "source": self.topology.source,
            "owner_pid": os.getpid(),
            "created": self._created,
            "state": self._state,
            "hosts": {
                name: {
                    "netns": host.netns,
                    "backend": host.handle.backend,
                    "addresses": host.addresses,
                    "netns_path": host.handle.netns_path,
                    "details": host.handle.details,
                    "processes": {n: p.describe() for n, p in host.runtime.processes.items()},
                }
                for name, host in self.hosts.items()
            },
            "captures": {label: str(path) for label, path in self.captures.items()},
        }

    # -- on the loop thread ------------------------------------------------------------

    async def _bring_up(self) -> None:
        self._lifecycle = asyncio.Lock()
        async with self._lifecycle:
            started = time.perf_counter()
            self._created = time.time()
            # The reaper first: from here on, if this process dies, the lab is cleaned
            # up by the fork server's sentinel, ledger included.
            self._forkserver = ForkServerClient(
                {
                    "lab": self.id,
                    "ledger": str(self._ledger.dir),
                    "full_clean": [
                        sys.executable,
                        "-m",
                        "harness",
                        "clean",
                        "--lab",
                        self.id,
                        "--quiet",
                    ],
                }
            )
            self._forkserver.start()
            self._ledger.open(self.describe())
            (self._ledger.dir / "topology.yaml").write_text(self.topology.text, encoding="utf-8")
            self._forkserver.log_to(str(self._ledger.logs / "forkserver.log"))
            for name in dict.fromkeys(map(self.host_backend, self.topology.hosts.values())):
                self._backends[name] = create_backend(
                    name,
                    lab_id=self.id,
                    forkserver=self._forkserver,
                    record=self._ledger.record,
                    **self.backend_options,
                )
            self._fabric = Fabric(self.id, self.topology, self._ledger.record)
            await self._fabric.build()
            hosts = await self._create_hosts()
            self.hosts = MappingProxyType(hosts)
            self.timings["hosts"] = time.perf_counter() - started
            # Hosts without a namespace here (ssh: existing machines) are not wired.
            local = [(h.spec, h.handle.netns_path) for h in hosts.values() if h.handle.netns_path]
            wiring = self._phase("wired", len(local))
            await asyncio.gather(
                wire_all(self._fabric, local, wiring.step), self._start_host_agents()
            )
            self.timings["wired"] = time.perf_counter() - started
            await self._fabric.close()  # its netlink socket would pin the namespace
            targets = _capture.targets_of(self.topology, self._capture_all)
            self._captures = await _capture.start(
                self._forkserver,
                self.id,
                targets,
                self.capture_dir,
                self._ledger.logs,
                self._host_netns(),
            )
            await self._apply_nft()
            await self._open_services()
            await start_programs([h.runtime for h in self.hosts.values()])
            self.timings["programs"] = time.perf_counter() - started
            for name, backend in self._backends.items():  # a container that exited meanwhile
                await backend.check_hosts(
                    [h.handle for h in self.hosts.values() if h.handle.backend == name]
                )
            self._state = "up"
            self._ledger.write_info(self.describe())
            self.timings["up"] = time.perf_counter() - started

    async def _join(self, record: _ledger.LabRecord) -> None:
        self._lifecycle = asyncio.Lock()
        async with self._lifecycle:
            self._forkserver = ForkServerClient(None)  # not ours to clean up if we die
            self._forkserver.start()

            def refuse(kind: str, name: str, attrs: dict[str, str]) -> None:
                raise UsageError(f"an attached lab creates no {kind} ({name})")

            hosts = {}
            for spec in self.topology.hosts.values():
                info = record.info["hosts"][spec.name]
                backend = recorded_backend(info)
                if backend not in self._backends:
                    self._backends[backend] = create_backend(
                        backend, lab_id=self.id, forkserver=self._forkserver, record=refuse
                    )
                netns_path = info.get("netns_path")  # "": a machine of its own (ssh)
                if netns_path is None:  # older ledgers: netns hosts only
                    netns_path = _netns.netns_path(info["netns"])
                handle = HostHandle(
                    name=spec.name,
                    netns_path=netns_path,
                    backend=backend,
                    details=dict(info.get("details") or {}),
                )
                hosts[spec.name] = LabHost(self, spec, handle, self._runtime(spec, handle))
            self.hosts = MappingProxyType(hosts)

    async def _create_hosts(self) -> dict[str, LabHost]:
        # Concurrently: a container takes a few hundred ms to start, a namespace ~1 ms.
        specs = list(self.topology.hosts.values())
        made = self._phase("hosts", len(specs))
        handles = await asyncio.gather(
            *(made.counted(self._backends[self.host_backend(spec)].create(spec)) for spec in specs),
            return_exceptions=True,
        )
        for handle in handles:
            if isinstance(handle, BaseException):
                raise handle  # everything created is in the ledger; teardown removes it
        return {
            spec.name: LabHost(self, spec, handle, self._runtime(spec, handle))
            for spec, handle in zip(specs, handles, strict=True)
            if isinstance(handle, HostHandle)
        }

    async def _start_host_agents(self) -> None:
        # One agent per host at bring-up: services and probes use it; agent() adds more.
        agents = self._phase("agents", len(self.hosts))
        started = await asyncio.gather(
            *(agents.counted(h.runtime.start_agent()) for h in self.hosts.values())
        )
        for host, agent in zip(self.hosts.values(), started, strict=True):
            host.runtime.host_agent = agent

    async def _apply_nft(self) -> None:
        # The policy, then the raw `nft:` script, by the controller's nft in each namespace.
        assert self._forkserver is not None
        targets = [
            _firewall.Target(
                h.spec,
                h.handle.netns_path,
                self._backends[h.handle.backend].local_netns and bool(h.handle.netns_path),
            )
            for h in self.hosts.values()
        ]
        await _firewall.apply_all(self._forkserver, targets)

    async def _open_services(self) -> None:
        for host in self.hosts.values():
            await host.runtime.open_services()

    def _processes_changed(self) -> None:
        if self._attached is None:  # lab.json lists them (an attached lab's is not ours)
            self._ledger.write_info(self.describe())

    async def _close_agents(self) -> None:
        async def close(agent: Agent) -> None:
            with contextlib.suppress(AgentError, OSError):
                await agent.channel.aclose()
            try:
                await asyncio.wait_for(agent.process.wait(), AGENT_CLOSE_TIMEOUT)
            except TimeoutError:
                agent.process.kill(signal.SIGKILL)

        await asyncio.gather(*(close(a) for a in self._agents.take()))

    async def _tear_down(self) -> None:
        lock = self._lifecycle or asyncio.Lock()
        async with lock:  # waits for a cancelled bring-up to finish unwinding
            try:
                try:
                    await stop_programs([h.runtime for h in self.hosts.values()])
                finally:
                    await self._close_agents()
            finally:
                await _capture.stop(self._captures)
                if self._fabric is not None:
                    await self._fabric.close()
                try:
                    # Before the fork server: what a backend started through it (the ssh
                    # relay) ends in order, not by the fork server's SIGKILL.
                    for backend in self._backends.values():
                        await backend.close()
                finally:
                    if self._forkserver is not None:
                        await self._forkserver.close(orderly=True)
                    record = _ledger.read_lab(self._ledger.dir)
                    if self._attached is None and record is not None and record.dir.exists():
                        await asyncio.to_thread(
                            _teardown.destroy_recorded, record, self._removal_progress
                        )

    async def _detach(self) -> int:
        assert self._forkserver is not None
        assert self._forkserver.pid is not None
        drain, hold = [], []
        agents = self._agents.all()
        for agent in agents:
            read_fd, write_fd = agent.channel.pipe_fds
            drain.append(read_fd)
            hold.append(write_fd)
        log = os.open(
            self._ledger.logs / "relay.log",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            for backend in self._backends.values():
                await backend.detach(log)
        finally:
            os.close(log)
        lock_fd = self._ledger.lock_fd
        self._forkserver.detach(lock_fd, drain, hold)
        owner = self._forkserver.pid
        info = self.describe()
        info.update(
            owner_pid=owner, reaper_pid=self._forkserver.sentinel_pid, state="up", detached=True
        )
        self._ledger.write_info(info)

        async def drop(agent: Agent) -> None:
            # The fork server holds copies of the pipes, so the agents see no EOF; we
            # only drop our ends (timeout 0: no point waiting for output to end).
            with contextlib.suppress(AgentError, OSError):
                await agent.channel.aclose(timeout=0)

        await asyncio.gather(*map(drop, agents))  # a few loop turns each: not in turn
        self._agents.take()
        return owner

    async def _end_detach(self, commit: bool) -> None:
        assert self._forkserver is not None
        if commit:
            self._forkserver.commit()
        self._forkserver.forget()  # without a commit, the server cleans the lab up


def _sysctl_in(netns_path: str, key: str, value: str | None) -> str:
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _netns.entered(fd):
            with open("/proc/sys/" + key.replace(".", "/")) as f:
                before = " ".join(f.read().split())
            if value is not None:
                _netns.write_sysctl(key, value)
        return before
    finally:
        os.close(fd)


def _check_environment() -> None:
    if not os.path.exists("/proc/self/ns/net"):
        raise EnvironmentProblem(
            f"this kernel has no network namespaces (CONFIG_NET_NS); {SEE_DOCTOR}"
        )
