"""A container's main process: forks agents and commands on the controller's request.

Copied into every docker host and run as its main process (standard library only,
Python 3.9+). It listens on a unix socket in the container's file system, which the
controller reaches through /proc/<pid>/root. A request is one connection: a JSON line
{"argv": [...] or null for the agent, "zipapp": path} with the process's stdin, stdout
and stderr passed as fds (SCM_RIGHTS). The reply is {"pid": N}, then {"exit": status}
when it ends (negative: killed by that signal); {"signal": N} from the controller
signals it. Starting a process this way costs a fork, where the exec API costs a
runtime exec and a fresh interpreter (about 100 times more).

The controller going away does not end what it started: agents end on stdin EOF, and a
lab that outlives its controller keeps its agents.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

SOCKET_NAME = "spawn.sock"
MAX_FDS = 3


def _agent(zipapp: str) -> Any:
    """The agent's entry point, imported once in the spawner so that forks start warm."""
    if zipapp not in sys.path:
        sys.path.insert(0, zipapp)
    from hostagent.agent import serve  # type: ignore[import-not-found,unused-ignore]

    return serve


def _child(argv: list[str] | None, zipapp: str, fds: list[int]) -> None:
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        if argv is None:
            os._exit(_agent(zipapp)(0, 1))
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"netharness: cannot start {argv or 'agent'}: {exc.strerror}\n".encode())
        os._exit(127)
    except BaseException:
        os._exit(126)


class Spawner:
    def __init__(self, path: str) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a temporary name and renamed once listening: the controller waits
        # for the name, and a connect between bind and listen would be refused.
        building = f"{path}.{os.getpid()}"
        self.listener.bind(building)
        os.chmod(building, 0o600)
        self.listener.listen(128)
        os.rename(building, path)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        self.selector.register(wake_read, selectors.EVENT_READ, "signal")
        self.children: dict[int, socket.socket] = {}  # pid -> its requester's connection
        self.watched: set[socket.socket] = set()

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                try:
                    if key.data == "accept":
                        self.accept()
                    elif key.data == "signal":
                        os.read(key.fd, 4096)
                        self.reap()
                    else:
                        self.control(key.fileobj, key.data)  # type: ignore[arg-type]
                except Exception:
                    traceback.print_exc()  # the container's log

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * 4))
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            request = json.loads(data.decode())
            if request.get("argv") is None:
                _agent(str(request.get("zipapp", "")))  # once: later forks inherit it
            fds_list = list(fds)
            if len(fds_list) != MAX_FDS:
                raise ValueError(f"expected {MAX_FDS} fds, got {len(fds_list)}")
            pid = os.fork()
            if pid == 0:
                conn.close()
                _child(request.get("argv"), str(request.get("zipapp", "")), fds_list)
            for fd in fds_list:
                os.close(fd)
            self.children[pid] = conn
            self.selector.register(conn, selectors.EVENT_READ, pid)
            self.watched.add(conn)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
            conn.close()

    def control(self, conn: socket.socket, pid: int) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:  # the controller went away; the process lives on
            self.selector.unregister(conn)
            self.watched.discard(conn)
            return
        for line in data.splitlines():
            with contextlib.suppress(ValueError, KeyError, ProcessLookupError):
                os.kill(pid, int(json.loads(line)["signal"]))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            if conn in self.watched:
                self.selector.unregister(conn)
                self.watched.discard(conn)
            conn.close()


if __name__ == "__main__":
    Spawner(os.path.join(os.path.dirname(os.path.abspath(__file__)), SOCKET_NAME)).serve()
