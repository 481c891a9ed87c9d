"""Pipes for commands run in hosts: start one on fresh pipes, feed it, collect its output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.backends.base import Process


REAP_TIMEOUT = 5.0  # a SIGKILLed process is reaped in milliseconds; never wait forever


async def communicate(
    start: Callable[[tuple[int, int, int]], Awaitable[Process]], stdin: bytes, timeout: float
) -> tuple[int, bytes, bytes]:
    """Start a process with `start((stdin, stdout, stderr))` on fresh pipes, feed it
    `stdin`, and return its exit status, stdout and stderr. After `timeout` seconds it is
    SIGKILLed and TimeoutError raised."""
    loop = asyncio.get_running_loop()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    in_read, in_write = os.pipe()
    try:
        process = await start((in_read, out_write, err_write))
    except BaseException:
        for fd in (out_read, err_read, in_write):
            os.close(fd)
        raise
    finally:
        for fd in (in_read, out_write, err_write):
            os.close(fd)
    try:  # write_all closes in_write: commands that read to EOF see it
        out, err, _, code = await asyncio.wait_for(
            asyncio.gather(
                loop.run_in_executor(None, read_all, out_read),
                loop.run_in_executor(None, read_all, err_read),
                loop.run_in_executor(None, write_all, in_write, stdin),
                process.wait(),
            ),
            timeout,
        )
    except TimeoutError:
        process.kill(signal.SIGKILL)
        # Reaped before we say so: nothing this call started outlives it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), REAP_TIMEOUT)
        raise
    finally:
        for fd in (out_read, err_read):
            with contextlib.suppress(OSError):
                os.close(fd)
    return code, out, err


def write_all(fd: int, data: bytes) -> None:
    """Feed a command's stdin, then close it (EOF), whatever the command does with it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass  # the command exited without reading it all; its exit status says why
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
    """Read until EOF (the command closed its end)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
