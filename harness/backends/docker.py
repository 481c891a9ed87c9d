"""The docker backend: a host is a container, `nh-<lab>-<host>`, with no network of its own.

The container runs with `network_mode: none`; the fabric wires it through its network
namespace, `/proc/<main pid>/ns/net`, exactly like a netns host, and addresses, routes,
sysctls and nft rules are applied from the controller, so the image needs only python3.
The hostagent zipapp and a small spawner are copied in with the archive API before the
container starts; the spawner is the container's main process and forks agents and
commands with the stdio fds the lab hands over its unix socket (reached through
/proc/<pid>/root): a fork costs milliseconds where an exec costs a runtime exec and a
fresh interpreter. Processes as another user go through the exec API (the spawner has no
capability to change users), their stdio pumped to the lab's pipes by one thread.

Containers are not privileged: every capability is dropped but NET_BIND_SERVICE (agents
bind ports below 1024 in the ports suite), and no-new-privileges is set. The lab's
containers share one pid namespace (the first one's), so pids are unique across its
hosts as the suites expect, and private to the lab.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import contextlib
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.backends._docker_pump import Pump, Stream
from harness.backends.base import AGENT, Backend, FutureProcess, HostHandle, Process, Stdio
from harness.core import _netns, naming
from harness.core.ledger import ABSENT
from harness.errors import BackendError, CleanupError, EnvironmentProblem
from harness.topology import Host

LAB_LABEL = "netharness.lab"
HOST_LABEL = "netharness.host"
AGENT_DIR = "/usr/local/lib/netharness"
CAPABILITIES = ("NET_BIND_SERVICE",)
# The container's main process forks agents and commands (see _docker_spawner).
SPAWNER = "spawner.py"
SPAWNER_START = 20.0  # seconds for the spawner's socket to appear (a loaded machine)
REMOVERS = 8  # containers removed at once
CREATORS = 16  # containers created and started at once

_zipapp_lock = threading.Lock()
_zipapp: list[bytes] = []  # the agent archive, built once per controller process


def agent_archive() -> bytes:
    """A tar holding the hostagent zipapp under AGENT_DIR, for put_archive."""
    from hostagent import ZIPAPP_NAME, build_zipapp

    with _zipapp_lock:
        if not _zipapp:
            with tempfile.TemporaryDirectory(prefix="nh-agent-") as tmp:
                data = build_zipapp(Path(tmp)).read_bytes()
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for part in _parents(AGENT_DIR):
                    info = tarfile.TarInfo(part.lstrip("/"))
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                spawner = (Path(__file__).parent / "_docker_spawner.py").read_bytes()
                for name, content in ((ZIPAPP_NAME, data), (SPAWNER, spawner)):
                    info = tarfile.TarInfo(f"{AGENT_DIR}/{name}".lstrip("/"))
                    info.size, info.mode = len(content), 0o644  # readable by any user
                    tar.addfile(info, io.BytesIO(content))
            _zipapp.append(buffer.getvalue())
        return _zipapp[0]


def agent_argv() -> list[str]:
    from hostagent import ZIPAPP_NAME

    return ["python3", f"{AGENT_DIR}/{ZIPAPP_NAME}"]


def zipapp_path() -> str:
    from hostagent import ZIPAPP_NAME

    return f"{AGENT_DIR}/{ZIPAPP_NAME}"


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


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


def spawn_socket(pid: int) -> str:
    """The spawner's socket of the container whose main process is `pid`, from outside."""
    from harness.backends._docker_spawner import SOCKET_NAME

    return f"/proc/{pid}/root{AGENT_DIR}/{SOCKET_NAME}"


async def _wait_for_spawner(path: str, host: str) -> None:
    # Its python starts while the fabric wires the container: wait only when needed.
    deadline = time.monotonic() + SPAWNER_START
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise BackendError(
                f"the container's python3 did not start netharness's spawner within "
                f"{SPAWNER_START:.0f} s; does the image have python3 >= 3.9?",
                host=host,
            )
        await asyncio.sleep(0.005)


class SpawnedProcess(FutureProcess):
    """A process the container's spawner forked; satisfies `Process`. Its pid is the one
    inside the container; signals and the exit status travel over the spawner's socket."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        super().__init__(pid)
        self._sock = sock
        self._reader = asyncio.get_running_loop().create_task(self._read_exit())

    @classmethod
    async def start(
        cls, path: str, argv: list[str] | None, stdio: Stdio, host: str
    ) -> SpawnedProcess:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            await _wait_for_spawner(path, host)
            await loop.sock_connect(sock, path)
            request = json.dumps({"argv": argv, "zipapp": zipapp_path()}).encode()
            fds = array.array("i", [stdio.stdin, stdio.stdout, stdio.stderr])
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            reply = await _read_line(loop, sock, bytearray())
            if "pid" not in reply:
                raise BackendError(f"the spawner refused: {reply.get('error')}", host=host)
            return cls(sock, int(reply["pid"]))
        except OSError as exc:
            sock.close()
            raise BackendError.from_os(exc, "cannot reach the spawner", host=host) from None
        except BaseException:
            sock.close()
            raise

    async def _read_exit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            reply = await _read_line(loop, self._sock, bytearray())
            code = int(reply.get("exit", -int(signal.SIGKILL)))
        except (OSError, ValueError):
            code = -int(signal.SIGKILL)  # the container went away under it
        finally:
            self._sock.close()
        self._exited(code)

    def kill(self, sig: int) -> None:
        if not self._exit.done():
            with contextlib.suppress(OSError):
                self._sock.send(json.dumps({"signal": int(sig)}).encode() + b"\n")


async def _read_line(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, buffer: bytearray
) -> dict[str, Any]:
    while b"\n" not in buffer:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ConnectionResetError("the spawner closed the connection")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    reply: dict[str, Any] = json.loads(line)
    return reply


class DockerBackend(Backend):
    name = "docker"
    recorded_kinds = ("container",)

    def __init__(self, lab_id: str, record: Callable[[str, str, dict[str, str]], None]) -> None:
        self._lab_id = lab_id
        self._record = record  # writes the ledger entry before the object exists
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._pump = Pump(f"netharness-{lab_id}-docker")
        self._relay: subprocess.Popen[bytes] | None = None
        self._holder: str | None = None  # the container whose pid namespace others join
        self._holder_lock = threading.Lock()
        self._images: set[str] = set()  # images found on the engine
        self._images_lock = threading.Lock()
        self._holder_done = threading.Event()  # the holder has started (or failed to)
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
        name = naming.host_netns(self._lab_id, host.name)
        # The lab's first container holds the pid namespace its other containers join:
        # pids are then unique across the lab's hosts, as the suites expect (they tell
        # processes apart by pid), and still private to the lab.
        # Only its creation is serial: the others are created meanwhile and started once
        # it runs.
        with self._holder_lock:
            holder = self._holder
            if holder is None:
                container = self._make_container(client, image, name, host, holder=None)
                self._holder = container.id
        if holder is None:
            try:
                self._start_container(container, host)
            finally:
                self._holder_done.set()
        else:
            container = self._make_container(client, image, name, host, holder=holder)
            self._holder_done.wait()
            self._start_container(container, host)
        return self._wired(container, host, image)

    def _start_container(self, container: Any, host: Host) -> None:
        from docker.errors import DockerException

        try:
            container.start()
            container.reload()
        except DockerException as exc:
            raise BackendError(
                f"container {container.name} did not start: {exc}", host=host.name
            ) from None

    def _make_container(
        self, client: Any, image: str, name: str, host: Host, holder: str | None
    ) -> Any:
        from docker.errors import APIError, DockerException

        self._record("container", name, {"host": host.name})
        try:
            container = client.containers.create(
                image,
                ["python3", f"{AGENT_DIR}/{SPAWNER}"],
                name=name,
                hostname=host.name,
                labels={LAB_LABEL: self._lab_id, HOST_LABEL: host.name},
                network_mode="none",
                pid_mode=f"container:{holder}" if holder else None,
                privileged=False,
                cap_drop=["ALL"],
                cap_add=list(CAPABILITIES),
                security_opt=["no-new-privileges"],
                init=holder is None,  # docker-init, pid 1 of the lab, reaps orphans
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
            raise BackendError(f"docker create failed: {exc.explanation}", host=host.name) from None
        try:
            container.put_archive("/", agent_archive())
        except DockerException as exc:
            raise BackendError(f"copying the agent into {name}: {exc}", host=host.name) from None
        return container

    def _wired(self, container: Any, host: Host, image: str) -> HostHandle:
        name = container.name
        pid = int(container.attrs["State"]["Pid"])
        if not pid:
            raise BackendError(f"container {name} is not running", host=host.name)
        path = f"/proc/{pid}/ns/net"
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
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
        return HostHandle(
            name=host.name,
            netns_path=path,
            backend=self.name,
            details={"container": name, "id": container.id, "image": image, "pid": str(pid)},
        )

    async def start(
        self, handle: HostHandle, argv: Sequence[str], stdio: Stdio, user: str | None = None
    ) -> Process:
        loop = asyncio.get_running_loop()
        if user is None and "pid" in handle.details:  # a fork in the container: fast
            try:
                return await SpawnedProcess.start(
                    spawn_socket(int(handle.details["pid"])),
                    None if argv is AGENT else list(argv),
                    stdio,
                    handle.name,
                )
            except BackendError as exc:
                state = await asyncio.to_thread(self._describe, handle.details["id"])
                raise BackendError(f"{exc} ({state})") from None
        # Another user: the exec API sets it up (the spawner has no capability to).
        command = agent_argv() if argv is AGENT else list(argv)
        # Our own copies: the caller closes its fds once we return.
        fds = Stdio(os.dup(stdio.stdin), os.dup(stdio.stdout), os.dup(stdio.stderr))
        try:
            return await asyncio.to_thread(self._start, handle, command, fds, user, loop)
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
    ) -> ExecProcess:
        from docker.errors import DockerException

        api = self.client().api
        try:
            exec_id = api.exec_create(
                handle.details["id"], command, stdin=True, user=user or "", privileged=False
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except DockerException as exc:
            raise BackendError(f"cannot run {command[0]}: {exc}", host=handle.name) from None
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

    def _describe(self, container_id: str) -> str:
        """The container's state and last log lines, for an error message."""
        from docker.errors import DockerException

        try:
            container = self.client().containers.get(container_id)
            logs = container.logs(tail=5).decode(errors="replace").strip()
        except DockerException as exc:
            return f"container unavailable: {exc}"
        return f"container {container.status}" + (f"; its log ends: {logs}" if logs else "")

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
        return cls(kwargs["lab_id"], kwargs["record"])

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
