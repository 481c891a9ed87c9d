"""The user's own processes in a lab's hosts: `run:` programs and `LabHost.start`.

    server = lab.hosts["api"].start("python3 -m http.server 8080", ready="tcp/8080")
    server.pid, server.log            # its pid on this machine, its log file
    server.stop()                     # SIGTERM to its group, SIGKILL after the grace

Each process leads a process group of its own (so stop() reaches what it started), its
stdout and stderr go to one log, `logs/<host>/<name>.log` under the lab's ledger, and
it dies with the lab. Readiness is the kernel's word: sock_diag in the host's namespace
shows a socket listening (TCP) or bound (UDP) on each `ready` port. A process that exits
before it is ready fails at once, not at the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal as _signal
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backends.base import STOP_GRACE, Backend, HostHandle, Process, Stdio
from harness.core import pgroups
from harness.errors import HarnessError, ProcessFailed, UsageError
from harness.topology import Program, Ready

if TYPE_CHECKING:
    from harness.core._loop import LoopThread

__all__ = ["STOP_GRACE", "ProcessHandle", "parse_ready", "program_for"]

READY_POLL = 0.01  # seconds between sock_diag looks: a quick server is ready in ms
GROUP_POLL = 0.02  # seconds between looks (a /proc scan) for a stopping group's members
KILL_WAIT = 1.0  # seconds for SIGKILLed members to be gone
LOG_TAIL = 20  # lines of the log a failure shows
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# proto -> the ports of that proto a socket listens on (TCP) or is bound to (UDP)
Listening = Callable[[str], Awaitable[set[int]]]


def parse_ready(ready: Ready | str | Sequence[Ready | str] | None) -> tuple[Ready, ...]:
    """`Ready`s from "tcp/8080", a Ready, or a list of them."""
    if ready is None:
        return ()
    if isinstance(ready, (Ready, str)):
        ready = [ready]
    parsed = []
    for item in ready:
        if isinstance(item, Ready):
            parsed.append(item)
            continue
        proto, _, port = str(item).partition("/")
        if proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"ready {item!r}: write PROTO/PORT, e.g. tcp/8080 or udp/53")
        parsed.append(Ready(proto, int(port)))  # type: ignore[arg-type]
    return tuple(parsed)


def program_for(
    command: str | Sequence[str],
    *,
    name: str | None,
    taken: Collection[str] = (),
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    ready: Ready | str | Sequence[Ready | str] | None = None,
    ready_timeout: float = 10.0,
) -> Program:
    """The `Program` that `LabHost.start`'s arguments describe (a string is split as a
    shell would, and no shell runs it); no `name`: argv[0]'s, numbered past `taken`."""
    argv = tuple(shlex.split(command) if isinstance(command, str) else command)
    if not argv:
        raise UsageError("start: the command is empty")
    if name is None:
        name = default_name(argv, taken)
    if not _NAME.fullmatch(name):
        raise UsageError(f"process name {name!r}: use letters, digits, '_', '.' and '-'")
    return Program(
        name=name,
        argv=argv,
        user=user,
        env=dict(env or {}),
        cwd=cwd,
        ready=parse_ready(ready),
        ready_timeout=ready_timeout,
    )


def default_name(argv: Sequence[str], taken: Collection[str]) -> str:
    """argv[0]'s base name plus a counter: python3-1, python3-2, ..."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(argv[0])).lstrip(".") or "process"
    number = 1
    while f"{base}-{number}" in taken:
        number += 1
    return f"{base}-{number}"


class ProcessHandle:
    """A user's process in a host, started by this Lab; it dies with the lab.

    `pid` is its pid on this machine for netns and docker hosts (what /proc and
    sock_diag owners show); `log` the file holding its stdout and stderr.
    """

    def __init__(
        self,
        program: Program,
        host: HostHandle,
        backend: Backend,
        process: Process,
        log: Path,
        runner: LoopThread,
    ) -> None:
        self.program = program
        self.log = log
        self._host = host
        self._backend = backend
        self._process = process
        self._runner = runner

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def host(self) -> str:
        return self._host.name

    @property
    def argv(self) -> tuple[str, ...]:
        return self.program.argv

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit status after (negative: killed by that signal)."""
        return self._process.returncode

    @property
    def state(self) -> str:
        """ "running", "exited N" or "killed by SIGNAME"."""
        return describe_status(self.returncode)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit; its exit status. TimeoutError after `timeout` seconds."""
        if self.returncode is not None:
            return self.returncode
        return self._runner.run(self._wait(timeout))

    def signal(self, sig: int) -> None:
        """Send `sig` to its process group: it and what it started."""
        self._backend.signal_group(self._host, self._process, sig)

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM to its group; after `grace` seconds SIGKILL to what is left of it.
        Returns its exit status."""
        if self.returncode is not None:
            with contextlib.suppress(HarnessError):  # the lab may be gone, and all with it
                self.signal(_signal.SIGKILL)  # what it started may still run
            return self.returncode
        return self._runner.run(self.astop(grace))

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        """The last `lines` lines of its log."""
        return tail(self.log, lines)

    def describe(self) -> dict[str, Any]:
        """What lab.json records of it (for `netharness logs`, `ps` and diagnostics)."""
        return {"pid": self.pid, "argv": list(self.argv), "log": str(self.log)}

    def __repr__(self) -> str:
        return f"<ProcessHandle {self.host}/{self.name} pid {self.pid} {self.state}>"

    # -- on the lab's loop -----------------------------------------------------------

    async def _wait(self, timeout: float | None) -> int:
        try:
            return await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"process {self.name} in host {self.host} still runs after {timeout} s"
            ) from None

    async def astop(self, grace: float = STOP_GRACE) -> int:
        """stop() on the loop: TERM, wait for the group up to `grace`, KILL the rest
        and wait (briefly) until it is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.signal(_signal.SIGTERM)  # even if it has exited: what it started may run
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), grace)
            await self._group_gone(deadline)
        self.signal(_signal.SIGKILL)
        status = await self._process.wait()
        await self._group_gone(loop.time() + KILL_WAIT)
        return status

    async def _group_gone(self, deadline: float) -> None:
        # Its members are visible from here only when its pids are this machine's
        # (netns and docker hosts); elsewhere the leader's exit is all we know.
        loop = asyncio.get_running_loop()
        while self._host.netns_path and loop.time() < deadline:
            if not await asyncio.to_thread(pgroups.live_members, self.pid):
                return
            await asyncio.sleep(GROUP_POLL)

    async def until_ready(self, listening: Listening, ready: Sequence[Ready] | None = None) -> None:
        """Return once every `ready` socket (default: the program's) listens;
        ProcessFailed at once if the process exits first, or after the program's ready
        timeout (and then it is stopped)."""
        ready = self.program.ready if ready is None else ready
        timeout = self.program.ready_timeout
        if not ready:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        exited = asyncio.ensure_future(self._process.wait())
        try:
            while True:
                missing = await _not_listening(ready, listening)
                if not missing:
                    return
                if exited.done():
                    raise self.failure(self.exit_cause(exited.result()))
                if loop.time() >= deadline:
                    raise self.failure(
                        f"not ready after {timeout:g} s: nothing listens on {missing}"
                    )
                await asyncio.wait([exited], timeout=min(READY_POLL, deadline - loop.time()))
        except BaseException:
            await self.astop()
            raise
        finally:
            exited.cancel()

    def failure(self, cause: str) -> ProcessFailed:
        return ProcessFailed(cause, host=self.host, process=self.name, log_tail=self.log_tail())

    def exit_cause(self, status: int, when: str = " before it was ready") -> str:
        """Why it ended, for a ProcessFailed: not found, its status or signal."""
        if status in (126, 127) and "not found" in self.log_tail().lower():
            return f"command not found: {self.argv[0]}"  # a shell's 127, the engine's 126
        if status < 0:
            return f"was {describe_status(status)}{when}"
        hint = ""
        if status == 0 and when:
            hint = " (a program that daemonizes must be told to stay in the foreground)"
        return f"exited with status {status}{when}{hint}"


async def start(
    program: Program,
    host: HostHandle,
    backend: Backend,
    log_dir: Path,
    runner: LoopThread,
) -> ProcessHandle:
    """Start `program` in the host, its output to `log_dir/<name>.log`; not yet waited
    for (`until_ready`). A command that cannot start raises ProcessFailed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{program.name}.log"
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        process = await backend.start(
            host,
            program.argv,
            Stdio(null, out, out),
            user=program.user,
            env=dict(program.env),
            cwd=program.cwd,
        )
    except ProcessFailed as exc:
        raise ProcessFailed(
            str(exc), host=host.name, process=program.name, log_tail=tail(log, LOG_TAIL)
        ) from None
    except HarnessError as exc:
        raise ProcessFailed(
            f"cannot start {program.argv[0]}: {exc}",
            host=host.name,
            process=program.name,
            log_tail=tail(log, LOG_TAIL),
        ) from None
    finally:
        os.close(out)
        os.close(null)
    handle = ProcessHandle(program, host, backend, process, log, runner)
    if process.pid <= 0:  # it never ran (a docker exec the engine could not start)
        raise handle.failure(handle.exit_cause(await process.wait(), when=" at once"))
    return handle


async def stop_all(handles: Sequence[ProcessHandle], grace: float = STOP_GRACE) -> None:
    """Stop them all at once: one grace for all, not one each."""
    await asyncio.gather(*(h.astop(grace) for h in handles))


async def _not_listening(ready: Sequence[Ready], listening: Listening) -> str:
    """The `ready` sockets not listening yet, as "udp/53, tcp/53" ("" when all are)."""
    ports: dict[str, set[int]] = {}
    for proto in dict.fromkeys(r.proto for r in ready):
        ports[proto] = await listening(proto)
    return ", ".join(f"{r.proto}/{r.port}" for r in ready if r.port not in ports[r.proto])


def describe_status(status: int | None) -> str:
    if status is None:
        return "running"
    if status < 0:
        try:
            return f"killed by {_signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited {status}"


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log ("" if there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))  # enough for any sane tail
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:]) if lines > 0 else ""
