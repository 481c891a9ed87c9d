"""The helper a lab runs on each ssh machine: the fork server, reached over one SSH session.

The controller's ssh relay (harness/backends/_ssh_relay.py) starts it on a session
channel, `python3 -c LAUNCH <dir>/agent.pyz ...`, once per machine. It forks
hostagent.forkserver's ForkServer, the very one the netns backend runs on the controller's
machine, so agents and commands start here as they do there: a fork of an imported
process, a millisecond, no interpreter start. The fork server wants file descriptors for
each process's stdio, which cannot travel over SSH: this process makes the pipes, hands
their far ends to the fork server, and carries their bytes as frames (hostagent.frames)
over its own stdin and stdout, with the fork server's messages.

It lives exactly as long as its session. EOF on stdin (the relay ended the session, or
the connection dropped because the controller or the relay died) ends the fork server
without an orderly "exit": the user's processes get their grace (SIGTERM, then SIGKILL),
agents are killed, and every child has PR_SET_PDEATHSIG besides. The private directory
is the relay's keeper session's to remove, when that session or the connection ends.

From the relay:
  CONTROL {"op": "spawn", "stream": n, "argv", "user", "env_add", "cwd", "report",
           "grace", "merge"}   pipes, then the fork server's spawn (merge: one pipe for
                               stdout and stderr, as the caller gave one file for both)
  CONTROL {"op": "kill", "stream": n, "signal": s, "group": bool}
  STDIN n                      bytes for its stdin; empty: EOF
To the relay:
  CONTROL {"ready": pid, "python": version}                 first
  CONTROL {"stream": n, "pid": p} | {"stream": n, "error", "errno", "stage"}
  STDOUT n, STDERR n           its output; empty: EOF
  CONTROL {"exited": n, "status": s}    after what it wrote before it exited
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import platform
import selectors
import socket
import sys
from typing import Any

from hostagent import forkserver, frames

SPAWN_KEYS = ("argv", "user", "env_add", "cwd", "report", "grace")


class _Stream:
    """One process: its stdin pipe (what the relay sent, not yet written) and outputs."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.pid = 0
        self.stdin = -1
        self.pending = bytearray()
        self.stdin_ended = False
        self.writing = False  # registered for EVENT_WRITE
        self.outputs: dict[int, int] = {}  # our read end -> STDOUT or STDERR
        self.exited = False


class Helper:
    """The loop: frames from stdin, the fork server's messages, the processes' pipes."""

    def __init__(self, server: socket.socket, server_pid: int) -> None:
        self.server = server
        self.server_pid = server_pid
        self.selector = selectors.DefaultSelector()
        self.decoder = frames.Decoder()
        self.streams: dict[int, _Stream] = {}
        self.by_pid: dict[int, int] = {}
        self.running = True

    def run(self) -> int:
        self.write(frames.control({"ready": os.getpid(), "python": platform.python_version()}))
        self.selector.register(0, selectors.EVENT_READ, ("relay", None))
        self.selector.register(self.server, selectors.EVENT_READ, ("server", None))
        while self.running:
            for key, _events in self.selector.select():
                what, stream = key.data
                if what == "relay":
                    self.from_relay()
                elif what == "server":
                    self.from_server()
                elif what == "out":
                    self.output(stream, key.fd)
                else:
                    self.flush(stream)
                if not self.running:
                    break
        return self.finish()

    # -- the relay's side ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """To the relay, blocking: a relay that does not read holds everything up."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(1, view) :]
        except OSError:
            self.running = False  # the session is gone

    def from_relay(self) -> None:
        try:
            data = os.read(0, frames.CHUNK)
        except OSError:
            data = b""
        if not data:
            self.running = False
            return
        for kind, number, payload in self.decoder.feed(data):
            if kind == frames.CONTROL:
                self.command(frames.message(payload))
            elif kind == frames.STDIN and number in self.streams:
                stream = self.streams[number]
                if payload:
                    stream.pending += payload
                else:
                    stream.stdin_ended = True
                self.flush(stream)

    def command(self, message: dict[str, Any]) -> None:
        if message.get("op") == "spawn":
            self.spawn(message)
        elif message.get("op") == "kill":
            stream = self.streams.get(int(message["stream"]))
            if stream is not None and stream.pid:
                self.tell_server(
                    {
                        "op": "kill",
                        "pid": stream.pid,
                        "signal": int(message["signal"]),
                        "group": bool(message.get("group")),
                    }
                )

    def spawn(self, message: dict[str, Any]) -> None:
        stream = _Stream(int(message["stream"]))
        in_read, stream.stdin = os.pipe()
        out_read, out_write = os.pipe()
        merged = bool(message.get("merge"))
        err_read, err_write = (-1, out_write) if merged else os.pipe()
        request = {k: message[k] for k in SPAWN_KEYS if k in message}
        request.update(op="spawn", seq=stream.number, netns="", env=None)
        try:
            self.tell_server(request, [in_read, out_write, err_write])
        finally:
            for fd in {in_read, out_write, err_write}:
                os.close(fd)
        os.set_blocking(stream.stdin, False)
        for fd, kind in ((out_read, frames.STDOUT), (err_read, frames.STDERR)):
            if fd >= 0:
                os.set_blocking(fd, False)
                stream.outputs[fd] = kind
                self.selector.register(fd, selectors.EVENT_READ, ("out", stream))
        self.streams[stream.number] = stream

    def flush(self, stream: _Stream) -> None:
        """Write what the relay sent to the process's stdin, as far as the pipe takes it."""
        if stream.stdin < 0:
            stream.pending.clear()
            return
        try:
            while stream.pending:
                del stream.pending[: os.write(stream.stdin, stream.pending)]
        except BlockingIOError:
            if not stream.writing:
                self.selector.register(stream.stdin, selectors.EVENT_WRITE, ("in", stream))
                stream.writing = True
            return
        except OSError:
            stream.pending.clear()  # it does not read any more: what it missed is lost
            stream.stdin_ended = True
        if stream.stdin_ended or stream.exited:
            self.close_stdin(stream)
        elif stream.writing:
            self.selector.unregister(stream.stdin)
            stream.writing = False

    def close_stdin(self, stream: _Stream) -> None:
        if stream.stdin < 0:
            return
        if stream.writing:
            self.selector.unregister(stream.stdin)
            stream.writing = False
        os.close(stream.stdin)
        stream.stdin = -1

    def output(self, stream: _Stream, fd: int) -> bool:
        """Forward one read of a process's output; whether there may be more now."""
        if fd not in stream.outputs:
            return False  # ended earlier in this round of events (its exit drained it)
        try:
            data = os.read(fd, frames.CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        self.write(frames.pack(stream.outputs[fd], stream.number, data))
        if not data:  # its EOF, forwarded as an empty frame
            self.selector.unregister(fd)
            os.close(fd)
            del stream.outputs[fd]
            self.forget_if_done(stream)
        return bool(data)

    def drain(self, stream: _Stream) -> None:
        """Forward what an exited process wrote and we have not read yet (it is all in
        its pipes now), so that its exit follows its output; later writers (what it left
        running) still go on after."""
        for fd in list(stream.outputs):
            while fd in stream.outputs and self.output(stream, fd):
                pass

    def forget_if_done(self, stream: _Stream) -> None:
        if stream.exited and not stream.outputs:
            self.close_stdin(stream)
            self.streams.pop(stream.number, None)

    # -- the fork server's side ----------------------------------------------------------

    def tell_server(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.server.sendmsg([json.dumps(message).encode()], ancillary)

    def from_server(self) -> None:
        try:
            data = self.server.recv(forkserver.MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:
            self.running = False  # the fork server is gone: nothing can start here
            return
        message = json.loads(data)
        if "exited" in message:
            self.exited(int(message["exited"]), int(message["status"]))
        elif "seq" in message and int(message["seq"]) in self.streams:
            self.answered(self.streams[int(message["seq"])], message)
        elif "error" in message:
            sys.stderr.write(f"netharness helper: the fork server says {message['error']}\n")

    def answered(self, stream: _Stream, message: dict[str, Any]) -> None:
        reply = {k: v for k, v in message.items() if k != "seq"}
        reply["stream"] = stream.number
        self.write(frames.control(reply))
        if "pid" in message:
            stream.pid = int(message["pid"])
            self.by_pid[stream.pid] = stream.number
            return
        stream.exited = True  # never started: its pipes have no writer left
        self.drain(stream)

    def exited(self, pid: int, status: int) -> None:
        number = self.by_pid.pop(pid, None)
        stream = self.streams.get(number) if number is not None else None
        if stream is None:
            return
        stream.exited = True
        self.drain(stream)
        self.write(frames.control({"exited": number, "status": status}))
        self.close_stdin(stream)
        self.forget_if_done(stream)

    def finish(self) -> int:
        """Our end: closing the fork server's socket without "exit" ends its processes
        (with their grace), then it exits; we wait for that, so that nothing of ours is
        left when the session's exit status is sent."""
        self.server.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.server_pid, 0)
        return 0


def _serve_forks(server: socket.socket) -> None:
    """Runs in the forked fork server; never returns. Its stdin and stdout are not the
    session's (sshd ends the session only once nobody holds them); stderr is, for its
    rare complaints."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        forkserver.ForkServer(server, None).serve()
        os._exit(0)
    except BaseException:
        os._exit(1)


def main() -> int:
    forkserver.preload()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        _serve_forks(theirs)
    theirs.close()
    return Helper(ours, pid).run()
