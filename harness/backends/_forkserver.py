"""Controller side of hostagent.forkserver: spawn processes in namespaces, learn their exits."""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from harness.backends.base import FutureProcess
from harness.errors import BackendError, ProcessFailed

# Descriptors one message to the server may carry: hostagent.forkserver.MAX_FDS (a test
# holds them equal; importing the server here would cost the controller its ctypes).
MAX_FDS = 64


class ForkedProcess(FutureProcess):
    """A process the fork server started; satisfies `harness.backends.base.Process`."""

    def __init__(self, server: ForkServerClient, pid: int) -> None:
        super().__init__(pid)
        self._server = server

    def kill(self, signal: int) -> None:
        if not self._exit.done():
            self._server.kill(self._pid, signal)

    def kill_group(self, signal: int) -> None:
        """`signal` to the process's group, even after the process itself has exited."""
        self._server.kill(self._pid, signal, group=True)


class _ExecFailed:
    """The fork server's child could not become the command (its report)."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.stage = str(message.get("stage"))
        self.errno = str(message.get("errno"))
        self.detail = str(message.get("error"))

    def explain(self, argv: list[str], cwd: str | None, user: str | None) -> str:
        command = argv[0] if argv else "?"
        if self.stage == "exec" and self.errno == "ENOENT":
            return f"command not found: {command}"
        if self.stage == "exec":
            return f"cannot execute {command}: {self.detail}"
        if self.stage == "cwd":
            return f"cannot start {command} in directory {cwd}: {self.detail}"
        if self.stage == "user":
            return f"cannot start {command} as user {user}: {self.detail}"
        return f"cannot start {command}: {self.detail}"


def exec_failure(
    reply: dict[str, Any],
    argv: list[str],
    cwd: str | None,
    user: str | None,
    host: str | None = None,
) -> BackendError:
    """A spawn's failure reply as the error to raise: ProcessFailed when the child said
    why it could not become the command (a spawn with "report")."""
    if "stage" in reply:
        return ProcessFailed(_ExecFailed(reply).explain(argv, cwd, user), host=host)
    code = getattr(errno, str(reply.get("errno")), None)
    return BackendError(f"spawn failed: {reply.get('error')}", host=host, code=code)


class ForkServerClient:
    """One fork server per lab; if we die, its sentinel reaps the lab.

    `reap` is what the sentinel removes then (hostagent.reaper.reap): {"lab": id,
    "ledger": dir, "full_clean": argv for what needs more than the standard library};
    None for a lab that is not ours to clean (joined with `attach`).
    """

    def __init__(self, reap: dict[str, Any] | None, name: str = "fork server") -> None:
        self._reap = reap
        self._name = name  # in errors: what went away
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._seq = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self.sentinel_pid: int | None = None  # the process that cleans up if we all die

    @classmethod
    def over(cls, sock: socket.socket, name: str) -> ForkServerClient:
        """A client of a server that runs already (the ssh relay speaks this protocol),
        over its connected SOCK_SEQPACKET socket; call from the loop's thread."""
        client = cls(None, name)
        client._adopt(sock)
        return client

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the server process (returns at once; it gets ready in the background)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Its log goes to the lab's ledger once there is one (see `log_to`).
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hostagent.forkserver",
                    str(theirs.fileno()),
                    *([json.dumps(self._reap)] if self._reap else []),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to us; we tear down in order
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._adopt(ours)

    def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        if self._sock is None:
            raise BackendError(f"{self._name} is not running")
        data = json.dumps(message).encode()
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        # Small datagrams on a local socket: a full buffer here means the server is stuck.
        self._sock.setblocking(True)
        try:
            self._sock.sendmsg([data], ancillary)
        except OSError as exc:
            raise BackendError.from_os(exc, self._name) from exc
        finally:
            self._sock.setblocking(False)

    async def spawn(
        self,
        netns_path: str,
        argv: Sequence[str] | None,
        stdio: Sequence[int],
        env: dict[str, str] | None = None,
        user: str | None = None,
        *,
        env_add: Mapping[str, str] | None = None,
        cwd: str | None = None,
        grace: float | None = None,
    ) -> ForkedProcess:
        """Start `argv` (None: the host agent) in the namespace on `stdio`.

        With `env_add`, `cwd` or `grace` it is a user's process: it gets our environment
        plus `env_add` (and HOME/USER/LOGNAME of `user`), starts in `cwd`, and this
        returns once it has exec'd; a failure to (command not found, no such directory or
        user) raises ProcessFailed. `grace`: how long it gets between SIGTERM and SIGKILL
        if the fork server ends without us (a detached lab's `netharness down`).
        """
        user_process = env_add is not None or cwd is not None or grace is not None
        message: dict[str, Any] = {
            "op": "spawn",
            "netns": netns_path,
            "argv": list(argv) if argv is not None else None,
            "env": env,
            "user": user,
        }
        if user_process:
            message.update(env_add=dict(env_add or {}), cwd=cwd, report=True, grace=grace)
        reply = await self.request(message, stdio)
        if "pid" not in reply:
            raise exec_failure(reply, list(argv or ()), cwd, user)
        pid = int(reply["pid"])
        process = ForkedProcess(self, pid)
        self._children[pid] = process
        if pid in self._early_exits:
            process._exited(self._early_exits.pop(pid))
        return process

    async def request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        """Send `message` (given a fresh "seq") with `fds`; the server's reply to it."""
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            self._send({**message, "seq": seq}, fds)
            return await future
        finally:
            self._pending.pop(seq, None)

    def commit(self) -> None:
        """Confirm a detach: from now on our going away is not the lab's end."""
        self._send({"op": "commit"})

    def log_to(self, path: str) -> None:
        self._send({"op": "log", "path": path})

    def kill(self, pid: int, sig: int = signal.SIGKILL, *, group: bool = False) -> None:
        """Signal a child, or with `group` its process group (which it leads), which
        still reaches what it started after the child itself has exited."""
        self._send({"op": "kill", "pid": pid, "signal": sig, "group": group})

    def detach(self, lock_fd: int, drain: Sequence[int], hold: Sequence[int]) -> None:
        """Hand the lab to the server: it keeps it alive until SIGTERM, then cleans it.

        `lock_fd` is our own open lock file, so the lab's lock is held throughout; `drain`
        are the agents' stdout pipes (read and dropped), `hold` their stdin pipes.
        """
        # A message carries at most MAX_FDS descriptors: the pipes go ahead in batches.
        for fds, to_drain in ((drain, True), (hold, False)):
            for start in range(0, len(fds), MAX_FDS):
                self._send({"op": "keep", "drain": to_drain}, fds[start : start + MAX_FDS])
        self._send({"op": "detach", "drain": 0}, [lock_fd])

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost(f"{self._name} exited")
                return
            self._dispatch(json.loads(data))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "sentinel" in message:
            self.sentinel_pid = int(message["sentinel"])
            return
        if "exited" in message:
            pid, status = int(message["exited"]), int(message["status"])
            child = self._children.pop(pid, None)
            if child is None:
                self._early_exits[pid] = status
            else:
                child._exited(status)
            return
        future = self._pending.get(message.get("seq", -1))
        if future is not None and not future.done():
            future.set_result(message)

    def _lost(self, why: str) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendError(why))
        for child in self._children.values():
            child._exited(-signal.SIGKILL)
        self._children.clear()

    async def close(self, orderly: bool = True) -> None:
        """Stop the server; `orderly` tells it not to run the orphan clean-up."""
        if self._sock is None:
            return
        if orderly:
            with contextlib.suppress(BackendError):
                self._send({"op": "exit"})
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        if self._proc is not None:
            proc = self._proc
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 5)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for child in self._children.values():
            child._exited(-signal.SIGKILL)
        self._children.clear()

    def forget(self) -> None:
        """After detach: drop our end without telling the server (it owns the lab now)."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            self._proc.returncode = 0  # not ours to wait for any more
            self._proc = None
