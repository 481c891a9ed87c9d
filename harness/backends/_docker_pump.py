"""Stdio of processes run through the Docker exec API, pumped to and from plain fds.

An exec started with `socket=True` gives one hijacked connection: what we write is the
process's stdin (a half-close is its EOF), what we read is its stdout and stderr in the
engine's multiplexed frames (8-byte header: stream, 0, 0, 0, big-endian length). One
thread per backend serves every exec with a selector, so a hundred agents cost one
thread, not two hundred.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

HEADER = struct.Struct(">BxxxL")
CHUNK = 65536


@dataclass
class Stream:
    """One exec's connection and the fds it is pumped to and from."""

    sock: socket.socket
    stdin: int  # read here, written to the exec (closed by the pump)
    stdout: int  # the exec's stdout frames are written here (closed by the pump)
    stderr: int
    on_end: Callable[[], None]
    closers: tuple[Callable[[], None], ...] = ()  # wrappers that hold `sock` (makefile)
    buffer: bytearray = field(default_factory=bytearray)
    stdin_open: bool = True


class Pump:
    """A selector thread serving many exec streams; started on the first `add`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._pending: list[Stream] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._handing_over = False
        self._streams = 0
        self._live: list[Stream] = []  # left unended by a handover

    def add(self, stream: Stream) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("pump is closed")
            self._pending.append(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        os.write(self._wake_write, b"x")

    def close(self) -> None:
        """End every stream (their processes see EOF) and stop the thread."""
        with self._lock:
            self._closing = True
            thread = self._thread
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")
        if thread is not None:
            thread.join()
        else:
            self._finish()

    def handover(self) -> list[Stream]:
        """Stop pumping without ending anything; the live streams, for another process."""
        with self._lock:
            self._closing = self._handing_over = True
            thread = self._thread
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")
        if thread is not None:
            thread.join()
        streams = list(self._live)
        self._live.clear()
        return streams

    # -- on the pump thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:  # an error here would hang every exec: let it end them all
                with self._lock:
                    pending, self._pending = self._pending, []
                    closing = self._closing
                for stream in pending:
                    self._register(stream)
                if closing:
                    break
                for key, _ in self._selector.select():
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_read, 4096)
                        continue
                    stream, what = key.data
                    if what == "in":
                        self._feed(stream)
                    else:
                        self._drain(stream)
        finally:
            self._finish()

    def _register(self, stream: Stream) -> None:
        self._selector.register(stream.sock, selectors.EVENT_READ, (stream, "out"))
        self._streams += 1
        if not stream.stdin_open:
            return
        try:
            self._selector.register(stream.stdin, selectors.EVENT_READ, (stream, "in"))
        except PermissionError:
            # A regular file or /dev/null, which epoll refuses: always readable, so it
            # is sent whole now.
            with contextlib.suppress(OSError):
                while data := os.read(stream.stdin, CHUNK):
                    stream.sock.sendall(data)
            self._close_stdin(stream, registered=False)
        else:
            os.set_blocking(stream.stdin, False)

    def _feed(self, stream: Stream) -> None:
        try:
            data = os.read(stream.stdin, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            if data:
                stream.sock.sendall(data)
                return
        except OSError:
            pass  # the exec is gone; its output side will end too
        self._close_stdin(stream)

    def _close_stdin(self, stream: Stream, registered: bool = True) -> None:
        if not stream.stdin_open:
            return
        stream.stdin_open = False
        if registered:
            self._selector.unregister(stream.stdin)
        os.close(stream.stdin)
        with contextlib.suppress(OSError):
            stream.sock.shutdown(socket.SHUT_WR)  # the process's stdin EOF

    def _drain(self, stream: Stream) -> None:
        try:
            data = stream.sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(stream)
            return
        stream.buffer += data
        while len(stream.buffer) >= HEADER.size:
            kind, size = HEADER.unpack_from(stream.buffer)
            if len(stream.buffer) < HEADER.size + size:
                break
            payload = bytes(stream.buffer[HEADER.size : HEADER.size + size])
            del stream.buffer[: HEADER.size + size]
            target = stream.stderr if kind == 2 else stream.stdout
            with contextlib.suppress(OSError):  # a reader that left loses the output
                _write_all(target, payload)

    def _end(self, stream: Stream) -> None:
        self._close_stdin(stream)
        self._selector.unregister(stream.sock)
        for close in stream.closers:
            with contextlib.suppress(OSError):
                close()
        stream.sock.close()
        for fd in {stream.stdout, stream.stderr}:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._streams -= 1
        stream.on_end()

    def _finish(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data is not None and key.data[1] == "out":
                if self._handing_over:
                    self._live.append(key.data[0])
                else:
                    self._end(key.data[0])
        self._selector.close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(streams: list[dict[str, int | str]]) -> None:
    """Pump inherited streams until every one has ended (`python -m` this module)."""
    done = threading.Semaphore(0)
    pump = Pump("netharness-relay")
    for spec in streams:
        stream = Stream(
            socket.socket(fileno=int(spec["sock"])),
            int(spec["stdin"]),
            int(spec["stdout"]),
            int(spec["stderr"]),
            done.release,
            buffer=bytearray.fromhex(str(spec["buffer"])),
            stdin_open=bool(spec["stdin_open"]),
        )
        pump.add(stream)
    for _ in streams:
        done.acquire()
    pump.close()


if __name__ == "__main__":
    import json
    import sys

    relay(json.loads(sys.argv[1]))
