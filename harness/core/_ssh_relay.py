"""The ssh backend's relay: the process that holds a lab's SSH connections.

    python -m harness.core._ssh_relay LEDGER_DIR     (fd 0: the lab owner's socket)

The lab's fork server starts it like any process of the lab, so it ends with the lab:
SIGTERM (then SIGKILL after RELAY_GRACE) when the lab ends without an orderly exit
(`netharness down` of a lab that `up` left running, a controller that died), and
PR_SET_PDEATHSIG if the fork server itself is killed. Because it is not the controller,
a lab with ssh hosts outlives `netharness up`.

To its clients it is a fork server (harness/backends/_forkserver.py's protocol) whose
"netns" names an ssh host: the lab's owner on fd 0, later commands (`netharness exec`,
`Lab.attach` for `suite LAB`, `probe LAB`...) through LEDGER_DIR/ssh.sock (mode 0600, and
only our own uid is served). Clients pass each process's stdio as file descriptors; the
relay carries the bytes to and from the machine's helper (hostagent.remote) as frames.
One request more than a fork server has:

  {"op": "connect", "seq": n, "host": name, "route": harness.core._ssh.Route} + [socket]
      log in over the socket (the controller made the TCP connection, its way) and
      prepare the machine (_ssh_machine.Machine); reply {"seq", "dir"}, or
      {"seq", "error", "kind", "host", "code"} (kind: the exception's class name)

What a client started ends when the client leaves ("exit", or its socket closing),
except what the owner started: that is the lab's, and lives until the lab ends. "exit"
from the owner, or SIGTERM, ends the lab's machines (each helper ends its processes,
each keeper session removes the directory) and then the relay.

Threads: the main one reads the clients and the processes' stdin (the controller's
requests to its agents) and sends frames; per machine, one writes the helper's frames
to the processes' fds (blocking: a reader that stops holds up its machine, as a pipe
would) and one copies the helper's stderr to our log; one per connect while it lasts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import queue
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import _ssh
from harness.core._ssh_machine import END_TIMEOUT, Machine
from harness.errors import BackendError, HarnessError
from hostagent import frames
from hostagent.forkserver import receive

SOCKET_NAME = "ssh.sock"  # in the lab's ledger directory
ZIPAPP_NAME = "ssh-agent.pyz"  # built there once, uploaded to every machine
MAX_FDS = 3
SPAWN_KEYS = ("argv", "user", "env_add", "cwd", "report", "grace")


class Client:
    """One client's socket: the owner's, or a later command's."""

    def __init__(self, sock: socket.socket, owner: bool) -> None:
        self.sock = sock
        self.owner = owner
        self.streams: set[int] = set()
        self._lock = threading.Lock()  # machines' threads answer too
        self._closed = False

    def tell(self, message: dict[str, Any]) -> None:
        with self._lock:
            if not self._closed:
                with contextlib.suppress(OSError):  # it left: nobody to tell
                    self.sock.send(json.dumps(message).encode())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.sock.close()


@dataclass(eq=False)
class Stream:
    """One process on a machine: the client's fds for its stdin and its output."""

    number: int  # the "pid" its client knows it by: unique in this relay
    client: Client
    seq: int
    machine: Machine
    stdin: int  # -1 once closed; the main thread's
    outputs: dict[int, int] = field(default_factory=dict)  # frames kind -> fd; the pump's
    answered: bool = False
    exited: bool = False


class Relay:
    def __init__(self, ledger: Path, owner: socket.socket) -> None:
        self.ledger = ledger
        self.owner = Client(owner, owner=True)
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.machines: dict[str, Machine] = {}
        self.streams: dict[int, Stream] = {}
        self.numbers = itertools.count(1)
        self.stopping = False
        self._zipapp: tuple[Path, str] | None = None
        self._zipapp_lock = threading.Lock()
        self._closing: queue.SimpleQueue[Stream] = queue.SimpleQueue()  # stdins to close
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.path = ledger / SOCKET_NAME
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.listener.listen(16)

    def serve(self) -> None:
        signal.set_wakeup_fd(self._wake_write)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop)
        self.selector.register(self._wake_read, selectors.EVENT_READ, ("wake", None))
        self.selector.register(self.listener, selectors.EVENT_READ, ("listen", None))
        self.selector.register(self.owner.sock, selectors.EVENT_READ, ("client", self.owner))
        # Built while the first machine logs in, not after (~0.1 s on a busy machine).
        threading.Thread(target=self.zipapp, daemon=True).start()
        try:
            while not self.stopping:
                for key, _ in self.selector.select():
                    self.dispatch(*key.data)
        finally:
            self.shutdown()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def dispatch(self, what: str, subject: Any) -> None:
        if what == "client":
            self.on_client(subject)
        elif what == "stdin":
            self.on_stdin(subject)
        elif what == "listen":
            self.accept()
        else:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_read, 512)
            while not self._closing.empty():
                self.close_stdin(self._closing.get())

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    # -- clients ---------------------------------------------------------------------------

    def accept(self) -> None:
        sock, _ = self.listener.accept()
        uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid not in (os.getuid(), 0):
            sock.close()  # it could run commands on the machines as our login: not for others
            return
        client = Client(sock, owner=False)
        self.selector.register(sock, selectors.EVENT_READ, ("client", client))

    def on_client(self, client: Client) -> None:
        data, fds = receive(client.sock, MAX_FDS)
        if not data:
            _close_all(fds)
            self.leave(client)
            return
        message: dict[str, Any] = {}
        try:
            message = json.loads(data)
            self.handle(client, message, fds)
        except (ValueError, KeyError, TypeError) as exc:
            _close_all(fds)
            error = f"bad request: {exc}"
            client.tell({"seq": message.get("seq"), "error": error, "errno": "EINVAL"})

    def handle(self, client: Client, message: dict[str, Any], fds: list[int]) -> None:
        op = message["op"]
        if op == "spawn":
            self.spawn(client, message, fds)
            return
        if op == "connect" and fds:
            _close_all(fds[1:])
            args = (client, message, fds[0])
            threading.Thread(target=self.connect, args=args, daemon=True).start()
            return
        _close_all(fds)
        if op == "kill":
            self.kill(client, message)
        elif op == "exit" and client.owner:
            self.stopping = True
        elif op == "exit":
            self.leave(client)
        elif "seq" in message:
            error = f"the ssh relay does not do {op!r}"
            client.tell({"seq": message["seq"], "error": error, "errno": "EINVAL"})

    def leave(self, client: Client) -> None:
        """A client is gone: what it started goes too, but the owner's (the lab's)."""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        client.close()
        if client.owner:
            return  # detached (`netharness up`), or dead: then the lab's end SIGTERMs us
        with self.lock:
            left = [self.streams[n] for n in client.streams if n in self.streams]
        for stream in left:
            if not stream.exited:
                self.tell_machine(stream, {"op": "kill", "signal": signal.SIGKILL, "group": True})
            self.close_stdin(stream)

    # -- processes -------------------------------------------------------------------------

    def spawn(self, client: Client, message: dict[str, Any], fds: list[int]) -> None:
        seq = int(message["seq"])
        host = str(message.get("netns"))
        machine = self.machines.get(host)
        if len(fds) != 3 or machine is None:
            _close_all(fds)
            error = "spawn needs three fds" if machine else f"no ssh connection to host {host}"
            client.tell({"seq": seq, "error": error, "errno": "EINVAL" if machine else "ENOTCONN"})
            return
        merged = _same_file(fds[1], fds[2])
        if merged:
            os.close(fds[2])  # the helper gives the process one pipe for both
        outputs = {frames.STDOUT: fds[1]} | ({} if merged else {frames.STDERR: fds[2]})
        stream = Stream(next(self.numbers), client, seq, machine, fds[0], outputs)
        with self.lock:
            self.streams[stream.number] = stream
            client.streams.add(stream.number)
        request = {k: message[k] for k in SPAWN_KEYS if message.get(k) is not None}
        request.update(op="spawn", stream=stream.number, merge=merged)
        try:
            machine.send(frames.control(request))
        except OSError:
            return  # the machine's pump sees its session end and answers for it
        try:
            self.selector.register(stream.stdin, selectors.EVENT_READ, ("stdin", stream))
        except PermissionError:
            self.send_whole_stdin(stream)  # a file or /dev/null: epoll refuses those

    def send_whole_stdin(self, stream: Stream) -> None:
        with contextlib.suppress(OSError):  # a machine gone: its pump answers for it
            while data := os.read(stream.stdin, frames.CHUNK):
                stream.machine.send(frames.pack(frames.STDIN, stream.number, data))
        self.close_stdin(stream, registered=False)

    def on_stdin(self, stream: Stream) -> None:
        if stream.stdin < 0:
            return  # closed earlier in this round of events
        try:
            data = os.read(stream.stdin, frames.CHUNK)
        except OSError:
            data = b""
        if not data:
            self.close_stdin(stream)
            return
        with contextlib.suppress(OSError):
            stream.machine.send(frames.pack(frames.STDIN, stream.number, data))

    def close_stdin(self, stream: Stream, registered: bool = True) -> None:
        """The main thread's: the process will not read (more) from its client, and gets
        its EOF (an agent then exits, whatever became of a kill sent before its pid)."""
        if stream.stdin < 0:
            return
        if registered:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(stream.stdin)
        os.close(stream.stdin)
        stream.stdin = -1
        if not stream.exited:
            with contextlib.suppress(OSError):
                stream.machine.send(frames.pack(frames.STDIN, stream.number))
        self.forget_if_done(stream)

    def kill(self, client: Client, message: dict[str, Any]) -> None:
        stream = self.streams.get(int(message["pid"]))
        if stream is None or stream.client is not client or stream.exited:
            return  # not its own, or over already
        signal_ = {"signal": int(message["signal"]), "group": bool(message.get("group"))}
        self.tell_machine(stream, {"op": "kill", **signal_})

    def tell_machine(self, stream: Stream, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            stream.machine.send(frames.control({**message, "stream": stream.number}))

    def forget_if_done(self, stream: Stream) -> None:
        with self.lock:
            if stream.exited and not stream.outputs and stream.stdin < 0:
                self.streams.pop(stream.number, None)
                stream.client.streams.discard(stream.number)

    # -- machines (their own threads) ------------------------------------------------------

    def connect(self, client: Client, message: dict[str, Any], fd: int) -> None:
        seq, host = message.get("seq"), str(message.get("host"))
        sock = socket.socket(fileno=fd)
        try:
            route = _ssh.Route.from_json(message["route"])
            machine = Machine.prepare(host, _ssh.login(host, route, sock), self.zipapp())
        except HarnessError as exc:
            client.tell(_error_reply(seq, exc))
            return
        except Exception as exc:  # paramiko's surprises, or ours: still an answer
            sock.close()
            traceback.print_exc()
            client.tell(_error_reply(seq, BackendError(f"connecting failed: {exc!r}", host=host)))
            return
        with self.lock:
            taken = self.stopping or host in self.machines
            if not taken:
                self.machines[host] = machine
        if taken:
            machine.close()
            reason = "the lab is going down" if self.stopping else "connected already"
            client.tell(_error_reply(seq, BackendError(reason, host=host)))
            return
        threading.Thread(target=self.pump, args=(machine,), daemon=True).start()
        threading.Thread(target=self.copy_complaints, args=(machine,), daemon=True).start()
        client.tell({"seq": seq, "dir": machine.directory})

    def zipapp(self) -> tuple[Path, str]:
        """The agent, built once for every machine of the lab, and its SHA-256."""
        with self._zipapp_lock:
            if self._zipapp is None:
                from hostagent import build_zipapp

                path = build_zipapp(self.ledger / ZIPAPP_NAME, bytecode=True)
                self._zipapp = (path, hashlib.sha256(path.read_bytes()).hexdigest())
            return self._zipapp

    def pump(self, machine: Machine) -> None:
        try:
            while batch := machine.receive():
                for kind, number, payload in batch:
                    if kind == frames.CONTROL:
                        self.on_helper(frames.message(payload))
                    else:
                        self.on_output(number, kind, payload)
        except (frames.FrameError, ValueError) as exc:
            sys.stderr.write(f"host {machine.name}: the helper's frames are broken: {exc}\n")
        finally:
            self.lost(machine)

    def on_output(self, number: int, kind: int, payload: bytes) -> None:
        stream = self.streams.get(number)
        fd = stream.outputs.get(kind) if stream is not None else None
        if stream is None or fd is None:
            return
        if payload:
            try:
                _write_all(fd, payload)
                return
            except OSError:
                pass  # its reader left: the rest is dropped
        del stream.outputs[kind]
        os.close(fd)
        self.forget_if_done(stream)

    def on_helper(self, message: dict[str, Any]) -> None:
        number = message.get("exited", message.get("stream"))
        stream = self.streams.get(int(number)) if number is not None else None
        if stream is None:
            return
        if "exited" in message:
            stream.client.tell({"exited": stream.number, "status": int(message["status"])})
        elif "pid" in message:
            stream.answered = True
            stream.client.tell({"seq": stream.seq, "pid": stream.number, "rpid": message["pid"]})
            return
        else:  # it could not start: the fork server's reasons, for its client
            why: dict[str, Any] = {"seq": stream.seq}
            why.update((k, message[k]) for k in ("error", "errno", "stage") if k in message)
            stream.client.tell(why)
        stream.exited = True
        self._closing.put(stream)  # on the main thread, which owns the selector
        self.wake()

    def lost(self, machine: Machine) -> None:
        """Its session ended: every process there is over, as far as clients can tell."""
        with self.lock:
            if self.machines.get(machine.name) is machine:
                del self.machines[machine.name]
            there = [s for s in self.streams.values() if s.machine is machine]
        if not self.stopping:
            sys.stderr.write(f"host {machine.name}: the ssh session to its helper ended\n")
        for stream in there:
            if not stream.exited and stream.answered:
                stream.client.tell({"exited": stream.number, "status": -signal.SIGKILL})
            elif not stream.exited:
                error = f"the ssh connection to host {machine.name} ended"
                stream.client.tell({"seq": stream.seq, "error": error, "errno": "ECONNRESET"})
            stream.exited = True
            for kind in list(stream.outputs):
                os.close(stream.outputs.pop(kind))
            self._closing.put(stream)
        self.wake()

    def copy_complaints(self, machine: Machine) -> None:
        while data := machine.complaints():
            for line in data.decode(errors="replace").splitlines():
                sys.stderr.write(f"host {machine.name}: {line}\n")

    def shutdown(self) -> None:
        """End every machine (in parallel: each waits for its helper and keeper)."""
        self.stopping = True
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self.lock:
            machines = list(self.machines.values())
        closing = [threading.Thread(target=m.close, daemon=True) for m in machines]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(2 * END_TIMEOUT + 5)


def _error_reply(seq: Any, exc: HarnessError) -> dict[str, Any]:
    """An error as the controller rebuilds it (harness.backends.ssh): same class, text."""
    host = getattr(exc, "host", None)
    text = str(exc).removeprefix(f"host {host}: " if host else "")
    code = getattr(exc, "code", None)
    return {"seq": seq, "error": text, "kind": type(exc).__name__, "host": host, "code": code}


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _same_file(a: int, b: int) -> bool:
    first, second = os.fstat(a), os.fstat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    """All of it, even to an fd someone made non-blocking (then we wait, as a pipe would)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m harness.core._ssh_relay LEDGER_DIR\n")
        return 2
    Relay(Path(argv[1]), socket.socket(fileno=0)).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
