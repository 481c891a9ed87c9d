"""The one exception tree of netharness.

    HarnessError                 anything the library raises on purpose
    ├── TopologyError            bad input: carries every problem found (file:line:col)
    ├── UsageError               a call or command that cannot be (unknown host, lab not up)
    ├── EnvironmentProblem       the machine cannot run a lab (not root, missing tool, ...)
    ├── BackendError             a backend or netlink operation failed (host, errno)
    │   ├── HostKeyRefused       an ssh host's key is unknown or changed (before auth)
    │   └── ProcessFailed        a user's process or a container's main process failed
    ├── AgentError               the host agent replied with an error (errno name)
    │   └── AgentGone            the agent process exited or its pipe closed
    ├── LabNotFound              no running lab with that id
    └── CleanupError             teardown could not remove something

Only the CLI prints these and turns them into exit codes; the library never exits.
"""

from __future__ import annotations

import errno as _errno
from typing import NamedTuple


class HarnessError(Exception):
    """Root of every error netharness raises on purpose."""

    exit_code = 1


class Problem(NamedTuple):
    """One thing wrong with a topology file, with where it is and how to fix it.

    A NamedTuple rather than a dataclass: `dataclasses` imports `inspect`, ~13 ms that
    every command would pay for importing this module."""

    file: str
    line: int
    column: int
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        key = f" {self.path}:" if self.path else ""
        fix = f" — {self.fix}" if self.fix else ""
        return f"{where}:{key} {self.message}{fix}"


class TopologyError(HarnessError):
    """A topology is invalid; `problems` lists every error found, in file order."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(HarnessError):
    """The command line or an API call asked for something that cannot be."""

    exit_code = 2


class EnvironmentProblem(HarnessError):
    """The machine cannot do what was asked: not root, a tool or the kernel lacks a feature."""

    exit_code = 3


class RootlessLimit(EnvironmentProblem):
    """A rootless lab cannot do this (harness.core.userns): the message says why."""


# Ends the message of an EnvironmentProblem that `netharness doctor` checks for.
SEE_DOCTOR = "`netharness doctor` lists all this machine lacks, with the fixes"


class BackendError(HarnessError):
    """Creating, wiring or destroying a host failed; carries the host and the errno."""

    def __init__(self, message: str, *, host: str | None = None, code: int | None = None) -> None:
        self.host = host
        self.code = code
        parts = [f"host {host}: " if host else "", message]
        if code:
            parts.append(f" ({_errno.errorcode.get(code, str(code))}: {_strerror(code)})")
        super().__init__("".join(parts))

    @classmethod
    def from_os(cls, exc: OSError, what: str, *, host: str | None = None) -> BackendError:
        """The one mapping of an `OSError` at the seam: what failed, the errno kept."""
        return cls(f"{what}: {exc.strerror or exc}", host=host, code=exc.errno)


class HostKeyRefused(BackendError):
    """An ssh host offered a key known_hosts does not have (or a different one); nothing
    was sent to it. An environment problem: the user decides whom to trust."""

    exit_code = 3


class ProcessFailed(BackendError):
    """A process of the user's (a `run:` program, `host.start`, a docker host's main
    process) exited early, never became ready, or could not be started: the cause and
    the tail of its log. A failure of the user's software or the environment: exit 3."""

    exit_code = 3

    def __init__(
        self, message: str, *, host: str | None = None, process: str = "", log_tail: str = ""
    ) -> None:
        self.process = process
        self.log_tail = log_tail
        tail = "".join(f"\n  | {line}" for line in log_tail.splitlines())
        named = f"process {process}: " if process else ""
        super().__init__(named + message + (f"; its log ends:{tail}" if tail else ""), host=host)


class AgentError(HarnessError):
    """The agent refused a request; `errno` is the name such as "EADDRINUSE" (or None)."""

    def __init__(
        self,
        message: str,
        *,
        errno: str | None = None,
        op: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.errno = errno
        self.op = op
        self.kind = kind  # the protocol's error kind: "os", "timeout", "bad-request", ...
        super().__init__(message)


class AgentGone(AgentError):
    """The agent process exited, or the pipe to it closed, before it answered."""


class LabNotFound(HarnessError):
    """No lab with that id is running on this machine."""

    exit_code = 2


class CleanupError(HarnessError):
    """Teardown could not remove one or more objects; `leftovers` names them."""

    def __init__(self, leftovers: list[str]) -> None:
        self.leftovers = leftovers
        super().__init__("could not remove: " + ", ".join(leftovers))


def _strerror(code: int) -> str:
    import os

    return os.strerror(code)
