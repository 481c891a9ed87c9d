"""The docker backend: a host is a container, `nh-<lab>-<host>`, running any local image.

The container runs its image as `docker run` would: the image's entrypoint, cmd (the
host's `command:` replaces it, the entrypoint stays), env, user and workdir, with
`network_mode: none`. As soon as it runs, its network namespace is named
/run/netns/nh-<lab>-<host> (recorded in the ledger first, like a netns host's): the fabric
wires it through that path, addresses, routes, sysctls and nft rules are applied from the
controller, the path stays valid while the lab lives even if the container's main process
exits, and every teardown (Lab.down, `down`, `clean`, the reaper of a killed owner) kills
what runs in it by the namespace rule of hostagent.reaper before removing the name.

netharness's agents run beside the container, not in it: the lab's fork server forks
them into the container's network namespace (as on netns hosts, `user=` included).
Sockets belong to the network namespace, which is what every check looks at, so images
need nothing of ours inside: no python, no copy of the agent. Commands (`host.run`,
`netharness exec`, a host's programs) run inside the container through the exec API,
with the image's own tools; one thread pumps their stdio (and a relay process takes it
over when a lab outlives `netharness up`).

A container that exits while it is brought up fails the lab at once: ProcessFailed
(exit 3) with its exit status and the tail of its log.

Containers are not privileged, no-new-privileges is set, and every capability is
dropped but CAPABILITIES: what server images need to start as root and drop to their
own user, a subset of docker's defaults. Never NET_ADMIN or NET_RAW: the lab's wiring,
routes and firewall are the controller's, and a host's software cannot change or bypass
them. Each container has its own pid namespace with docker-init as pid 1 (reaping
orphans), as under `docker run --init`: the user's main process ending ends only its own
container, and agents live in the root pid namespace, so pids stay unique across hosts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness.backends._docker_pump import Pump, Stream
from harness.backends._forkserver import ForkServerClient
from harness.backends.base import AGENT, Backend, HostHandle, Process, Stdio
from harness.core import _netns, naming
from harness.core.ledger import ABSENT
from harness.core.pgroups import signal_group
from harness.errors import (
    BackendError,
    CleanupError,
    EnvironmentProblem,
    ProcessFailed,
)
from harness.topology import Host
from harness.topology.model import MAIN_PROCESS

LAB_LABEL = "netharness.lab"
HOST_LABEL = "netharness.host"
# What server images need, and no more (all in docker's default set):
#   NET_BIND_SERVICE  root in the container binds ports below 1024 (httpd, nginx on 80);
#   CHOWN, DAC_OVERRIDE, FOWNER  entrypoints chown their data and run directories as
#                     root (the postgres and redis images' entrypoints do);
#   SETUID, SETGID    they then drop to their own user (nginx workers, gosu, su-exec);
#   KILL              a root master signals its workers of another uid (nginx reload).
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID")
LOG_TAIL = 20  # lines of a failed container's log in the error
EXIT_WAIT = 5.0  # seconds for the engine to report the status of a container that exited
REMOVERS = 8  # containers removed at once
CREATORS = 16  # containers created and started at once


class ExecProcess:
    """A process started with the exec API; satisfies `harness.backends.base.Process`."""

    def __init__(self, backend: DockerBackend, exec_id: str, pid: int) -> None:
        self._backend = backend
        self._exec_id = exec_id
        self._pid = pid  # in the host's pid namespace: the controller can signal it
        self._ended = asyncio.Event()
        self._code: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._code

    def _stream_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self._ended.set)

    async def wait(self) -> int:
        await self._ended.wait()
        if self._code is None:
            self._code = await asyncio.to_thread(self._backend.exit_code, self._exec_id)
        return self._code

    def kill(self, sig: int) -> None:
        if self._code is None and self._pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)


def exited(container: Any, host: str) -> ProcessFailed:
    """The error for a container whose main process has exited: its status, its log."""
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    try:
        status = container.wait(timeout=EXIT_WAIT).get("StatusCode")
        log = container.logs(tail=LOG_TAIL).decode(errors="replace")
    except (DockerException, RequestException) as exc:
        return ProcessFailed(
            f"container {container.name} exited; the engine does not say how ({exc})",
            host=host,
            process=MAIN_PROCESS,
        )
    return ProcessFailed(
        f"container {container.name} exited with status {status}",
        host=host,
        process=MAIN_PROCESS,
        log_tail=log.rstrip(),
    )


class DockerBackend(Backend):
    name = "docker"
    needs_root = (
        "the engine runs containers in the initial user namespace, whose network "
        "namespaces a user namespace cannot enter to wire them"
    )

    def __init__(
        self,
        lab_id: str,
        forkserver: ForkServerClient,
        record: Callable[[str, str, dict[str, str]], None],
    ) -> None:
        self._lab_id = lab_id
        self._forkserver = forkserver  # forks agents beside the containers
        self._record = record  # writes the ledger entry before the object exists
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._pump = Pump(f"netharness-{lab_id}-docker")
        self._relay: subprocess.Popen[bytes] | None = None
        self._images: set[str] = set()  # images found on the engine
        self._images_lock = threading.Lock()
        # Blocking SDK calls of bring-up, more at once than asyncio's default pool: the
        # engine overlaps container creation well.
        self._creators = concurrent.futures.ThreadPoolExecutor(CREATORS, "nh-docker")

    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from harness.core.image import engine

                self._client = engine()
            return self._client

    async def create(self, host: Host) -> HostHandle:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._creators, self._create, host)

    def _create(self, host: Host) -> HostHandle:
        from harness.core.image import DEFAULT_IMAGE, require

        client = self.client()
        image = host.image or DEFAULT_IMAGE
        with self._images_lock:  # once per image and lab, not once per container
            if image not in self._images:
                require(client, image)
                self._images.add(image)
        container = self._make_container(client, image, host)
        pid = self._start_container(container, host)
        path = self._name_netns(container, pid, host)
        self._check_running(container, pid, host)  # it may have exited while wired
        return HostHandle(
            name=host.name,
            netns_path=path,
            backend=self.name,
            details={
                "container": container.name,
                "netns": os.path.basename(path),
                "id": container.id,
                "image": image,
                "pid": str(pid),  # the main process (docker-init), in our pid namespace
            },
        )

    def _make_container(self, client: Any, image: str, host: Host) -> Any:
        from docker.errors import APIError, DockerException

        name = naming.host_netns(self._lab_id, host.name)
        self._record("container", name, {"host": host.name})
        try:
            return client.containers.create(
                image,
                list(host.command) if host.command is not None else None,  # None: its CMD
                name=name,
                hostname=host.name,
                labels={LAB_LABEL: self._lab_id, HOST_LABEL: host.name},
                network_mode="none",
                privileged=False,
                cap_drop=["ALL"],
                cap_add=list(CAPABILITIES),
                security_opt=["no-new-privileges"],
                init=True,  # docker-init as pid 1 reaps the orphans of the user's software
                detach=True,
            )
        except APIError as exc:
            if exc.status_code == 409:  # the name is taken: not ours, never remove it
                self._record("container", name, {"host": host.name, "state": ABSENT})
                raise BackendError(
                    f"a container named {name} already exists and is not ours",
                    host=host.name,
                    code=errno.EEXIST,
                ) from None
            raise EnvironmentProblem(
                f"host {host.name}: docker create of {image} failed: {exc.explanation}"
            ) from None
        except DockerException as exc:
            raise EnvironmentProblem(f"host {host.name}: docker create failed: {exc}") from None

    def _start_container(self, container: Any, host: Host) -> int:
        """Start it; its main process's pid, or ProcessFailed if it is not running."""
        from docker.errors import APIError, DockerException

        try:
            container.start()
            container.reload()
        except APIError as exc:  # e.g. its command is not in the image
            raise ProcessFailed(
                f"container {container.name} did not start: {exc.explanation}",
                host=host.name,
                process=MAIN_PROCESS,
            ) from None
        except DockerException as exc:
            raise EnvironmentProblem(
                f"host {host.name}: container {container.name} did not start: {exc}"
            ) from None
        state = container.attrs["State"]
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or not pid:
            raise exited(container, host.name)
        return pid

    def _check_running(self, container: Any, pid: int, host: Host) -> None:
        from docker.errors import DockerException

        try:
            container.reload()
        except DockerException as exc:
            raise EnvironmentProblem(
                f"host {host.name}: container {container.name} went away: {exc}"
            ) from None
        state = container.attrs["State"]
        if not state.get("Running") or int(state.get("Pid") or 0) != pid:
            raise exited(container, host.name)

    def _name_netns(self, container: Any, pid: int, host: Host) -> str:
        """Name the container's network namespace /run/netns/nh-<lab>-<host>; its path."""
        name = naming.host_netns(self._lab_id, host.name)
        path = _netns.netns_path(name)
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # the main process has exited under us
            raise exited(container, host.name) from None
        except OSError as exc:
            raise BackendError.from_os(exc, "cannot open the container's namespace") from None
        try:
            # A pid reused at once by a process of ours would name the root namespace,
            # and the reaper kills whatever is in a lab's namespaces: refuse it.
            if os.fstat(fd).st_ino == _netns.inode("/proc/self/ns/net"):
                raise exited(container, host.name)
            self._check_running(container, pid, host)  # so fd is the container's
            self._record("netns", path, {"host": host.name})
            try:
                _netns.attach(name, fd)
            except FileExistsError as exc:
                self._record("netns", path, {"host": host.name, "state": ABSENT})
                raise BackendError(
                    f"namespace {name} already exists and is not ours",
                    host=host.name,
                    code=exc.errno,
                ) from None
            except OSError as exc:
                raise BackendError.from_os(exc, f"cannot name namespace {name}") from None
            with _netns.entered(fd):
                for conf in ("all", "default"):
                    # The engine turns IPv6 off in containers of non-IPv6 networks.
                    _netns.write_sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "0")
                    # Addresses are usable at once: no duplicate address detection.
                    _netns.write_sysctl(f"net.ipv6.conf.{conf}.accept_dad", "0")
                # The engine lets anyone bind any port in containers; a new namespace's
                # default (the kernel's) is what a netns host has and the suites test.
                _netns.write_sysctl("net.ipv4.ip_unprivileged_port_start", "1024")
        finally:
            os.close(fd)
        return path

    async def start(
        self,
        handle: HostHandle,
        argv: Sequence[str],
        stdio: Stdio,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Process:
        if argv is AGENT:  # beside the container, in its network namespace
            return await self._forkserver.spawn(
                handle.netns_path, None, (stdio.stdin, stdio.stdout, stdio.stderr), user=user
            )
        loop = asyncio.get_running_loop()
        # Our own copies: the caller closes its fds once we return.
        fds = Stdio(os.dup(stdio.stdin), os.dup(stdio.stdout), os.dup(stdio.stderr))
        try:
            return await asyncio.to_thread(
                self._start, handle, list(argv), fds, user, loop, env, cwd
            )
        except BaseException:
            for fd in (fds.stdin, fds.stdout, fds.stderr):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

    def _start(
        self,
        handle: HostHandle,
        command: list[str],
        fds: Stdio,
        user: str | None,
        loop: asyncio.AbstractEventLoop,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecProcess:
        """Run `command` inside the container (the exec API), its stdio pumped to `fds`."""
        from docker.errors import DockerException

        api = self.client().api
        try:
            exec_id = api.exec_create(
                handle.details["id"],
                command,
                stdin=True,
                user=user or "",
                privileged=False,
                environment=dict(env) if env else None,  # added to the image's own
                workdir=cwd,  # None: the image's WORKDIR
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except DockerException as exc:
            raise self._exec_failed(handle, command, exc) from None
        raw: Any = getattr(sock, "_sock", sock)
        pid = 0
        for _ in range(200):  # the engine fills in the pid as the process starts
            info = api.exec_inspect(exec_id)
            pid = int(info.get("Pid") or 0)
            if pid or not info.get("Running"):
                break
        process = ExecProcess(self, exec_id, pid)
        self._pump.add(
            Stream(
                raw,
                fds.stdin,
                fds.stdout,
                fds.stderr,
                lambda: process._stream_ended(loop),
                closers=(sock.close,) if sock is not raw else (),
            )
        )
        return process

    def signal_group(self, handle: HostHandle, process: Process, sig: int) -> None:
        # runc makes an exec'd process a session leader: its group, by its host pid.
        signal_group(process.pid, sig)

    async def check_hosts(self, handles: Sequence[HostHandle]) -> None:
        await asyncio.to_thread(self._check_hosts, handles)

    def _check_hosts(self, handles: Sequence[HostHandle]) -> None:
        """One engine call for the lab: a container that is not running is ProcessFailed."""
        from docker.errors import DockerException

        ids = {h.details["id"]: h.name for h in handles}
        if not ids:
            return
        try:
            found = self.client().containers.list(
                all=True, ignore_removed=True, filters={"label": f"{LAB_LABEL}={self._lab_id}"}
            )
        except DockerException as exc:
            raise EnvironmentProblem(
                f"cannot ask the engine about lab {self._lab_id}: {exc}"
            ) from None
        running = {c.id for c in found if c.status == "running"}
        for container in found:
            if container.id in ids and container.id not in running:
                raise exited(container, ids[container.id])
        missing = set(ids) - {c.id for c in found}
        if missing:
            host = ids[min(missing)]
            raise ProcessFailed(
                f"container {naming.host_netns(self._lab_id, host)} was removed",
                host=host,
                process=MAIN_PROCESS,
            )

    def _exec_failed(self, handle: HostHandle, command: list[str], exc: Exception) -> BackendError:
        """Why an exec could not start: the container exited (its status, its log), or
        the engine's own reason."""
        from docker.errors import DockerException

        try:
            container = self.client().containers.get(handle.details["id"])
            running = container.status == "running"
        except DockerException:
            running = True  # gone altogether: the engine's reason says it
        if not running:
            return exited(container, handle.name)
        return BackendError(f"cannot run {command[0]}: {exc}", host=handle.name)

    def exit_code(self, exec_id: str) -> int:
        from docker.errors import DockerException

        try:
            info = self.client().api.exec_inspect(exec_id)
        except DockerException:
            return -int(signal.SIGKILL)  # the container went away under it
        code = info.get("ExitCode")
        if code is None:
            return -int(signal.SIGKILL)
        return _as_status(int(code))

    async def detach(self, log_fd: int) -> None:
        """Hand the agents' exec streams to a relay process that outlives us: without
        it, their stdin would reach EOF when we exit and the hosts' agents (and the
        services they hold open) would end with us."""
        streams = await asyncio.to_thread(self._pump.handover)
        if not streams:
            return
        specs: list[dict[str, int | str]] = []
        fds: list[int] = []
        for stream in streams:
            stdin = stream.stdin if stream.stdin_open else -1  # a closed stdin is gone
            ends = [stream.sock.fileno(), stdin, stream.stdout, stream.stderr]
            fds += [fd for fd in ends if fd >= 0]
            spec: dict[str, int | str] = dict(
                zip(("sock", "stdin", "stdout", "stderr"), ends, strict=True)
            )
            spec.update(buffer=stream.buffer.hex(), stdin_open=int(stream.stdin_open))
            specs.append(spec)
        try:
            # Kept, never waited for: it outlives us, and ends when the last exec does.
            self._relay = subprocess.Popen(
                [sys.executable, "-m", "harness.backends._docker_pump", json.dumps(specs)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
                start_new_session=True,  # not ours: Ctrl-C on our terminal is not for it
            )
        finally:
            for stream in streams:  # the relay has its own copies now
                for close in stream.closers:
                    with contextlib.suppress(OSError):
                        close()
                stream.sock.close()
                held = {stream.stdout, stream.stderr} | (
                    {stream.stdin} if stream.stdin_open else set()
                )
                for fd in held:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    @classmethod
    def remove_recorded(cls, lab_id: str, entries: list[dict[str, str]]) -> list[str]:
        return remove_recorded(lab_id, entries)

    @classmethod
    def for_lab(cls, **kwargs: Any) -> DockerBackend:
        return cls(kwargs["lab_id"], kwargs["forkserver"], kwargs["record"])

    @classmethod
    def run_attached(cls, host: dict[str, Any], argv: list[str], env: dict[str, str]) -> int:
        # inside the container, with the image's programs and only netharness's variables
        own = {k: v for k, v in env.items() if k.startswith("NETHARNESS_") or k == "PS1"}
        return run_attached(host["details"]["container"], argv, own)

    @classmethod
    def shell_argv(cls, env: Mapping[str, str]) -> list[str]:
        return ["/bin/sh", "-i"]  # the image's shell, whatever the user's is

    async def close(self) -> None:
        self._creators.shutdown(wait=False)
        await asyncio.to_thread(self._pump.close)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _as_status(code: int) -> int:
    # Processes killed by a signal report 128+N through the engine; say -N like Popen.
    return -(code - 128) if 128 < code < 128 + 65 else code


def remove_containers(client: Any, lab_id: str, names: Sequence[str]) -> list[str]:
    """Remove the lab's containers among `names`: only those labelled with `lab_id`."""
    from docker.errors import DockerException, NotFound

    removed, leftovers = [], []
    wanted = set(names)
    try:
        found = client.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{LAB_LABEL}={lab_id}"}
        )
    except DockerException as exc:
        raise CleanupError([f"containers of lab {lab_id} ({exc})"]) from None
    mine = [c for c in found if c.name in wanted]  # labelled ours AND in our ledger

    def remove(container: Any) -> None:
        try:
            container.remove(force=True)
            removed.append(f"container {container.name}")
        except NotFound:
            pass
        except DockerException as exc:
            leftovers.append(f"container {container.name} ({exc})")

    with concurrent.futures.ThreadPoolExecutor(REMOVERS) as pool:  # the engine overlaps them
        list(pool.map(remove, mine))
    if leftovers:
        raise CleanupError(leftovers)
    return removed


def remove_recorded(lab_id: str, entries: list[dict[str, str]]) -> list[str]:
    """The ledger's cleaner for kind "container": what a lab (dead or alive) recorded."""
    latest = {e["name"]: e for e in entries}
    names = [
        name
        for name, e in latest.items()
        if e.get("state") != ABSENT and naming.is_lab_netns(lab_id, name)
    ]
    if not names:
        return []
    from harness.core.image import engine

    try:
        client = engine()
    except EnvironmentProblem as exc:
        raise CleanupError([f"containers {', '.join(names)} ({exc})"]) from None
    try:
        return remove_containers(client, lab_id, names)
    finally:
        client.close()


def run_attached(container: str, argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` in `container` on this process's stdio (`netharness exec`/`shell`);
    returns its exit code. Ctrl-C is passed on to the command."""
    from docker.errors import DockerException

    from harness.core.image import engine

    client = engine()
    pump = Pump("netharness-exec")
    done = threading.Event()
    try:
        api = client.api
        try:
            exec_id = api.exec_create(container, argv, stdin=True, environment=env)["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except DockerException as exc:
            raise BackendError(f"cannot run {argv[0]} in {container}: {exc}") from None
        raw: Any = getattr(sock, "_sock", sock)
        closers = (sock.close,) if sock is not raw else ()
        pump.add(Stream(raw, os.dup(0), os.dup(1), os.dup(2), done.set, closers=closers))
        while True:
            try:
                done.wait()
                break
            except KeyboardInterrupt:
                pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGINT)
        code = api.exec_inspect(exec_id).get("ExitCode")
        return int(code) if code is not None else 1
    finally:
        pump.close()
        client.close()
        with contextlib.suppress(OSError):
            os.set_blocking(0, True)  # the pump made the shared stdin non-blocking
