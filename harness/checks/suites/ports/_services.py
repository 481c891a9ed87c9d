"""The ports suite's check of real services: what a second process gets when it binds the
port a process of the user's listens on (`process:` services, or the `service=` option).

For each listening socket of the service, two binds of its very address and port:

- by a root process without options: EADDRINUSE (the port is taken, whatever options the
  service set: a listening TCP socket, or a UDP socket without SO_REUSEADDR on both);
- by a process of the socket's own user (its uid as sock_diag reports it) with
  SO_REUSEPORT: Linux lets it join only if every socket already bound there set
  SO_REUSEPORT and belongs to the same effective uid, so with the uid matched, the
  kernel's answer says whether the service's socket set SO_REUSEPORT. The bound socket
  is closed at once; for that moment it is one of the port's sockets and may be handed a
  connection or datagram (a TCP probe listens, as the agent's binds do).

sock_diag does not show SO_REUSEPORT. Where the service's process is on this machine (netns
and docker hosts) the option is also read from the socket itself: pidfd_getfd(2) copies
the service's descriptor (root may), getsockopt(SO_REUSEPORT) reads it, the copy is
closed. The check then passes when the second bind gets EADDRINUSE and the SO_REUSEPORT
bind got in exactly when the socket has the option. Where it cannot be read (an ssh host),
the kernel's answer is reported as the inference, and only the EADDRINUSE bind is judged.
"""

from __future__ import annotations

import ctypes
import os
import socket
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import show
from harness.checks.suites._service import declared_services, real_service
from harness.checks.suites.ports._context import (
    Bind,
    Judgement,
    _Context,
    _NotApplicable,
    _Options,
)

if TYPE_CHECKING:
    from harness.checks.suites._service import RealService
    from harness.observe.sockets import OwnedSocket

SYS_PIDFD_GETFD = 438  # the same number on every architecture Linux added it to
NONE_DECLARED = (
    "not applicable: no service of a process of the user's in this lab (a `services:` "
    "entry with `process:`, or --set ports.service=HOST:PORT/PROTO)"
)


def services_of(ctx: _Context, options: _Options) -> list[str]:
    """The services to check: the option's, else the topology's `process:` services."""
    return [options.service] if options.service else declared_services(ctx.lab)


def _service_binds(ctx: _Context, options: _Options) -> Judgement:
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    lines: list[str] = []
    services = services_of(ctx, options)
    if not services:
        raise _NotApplicable(NONE_DECLARED)
    for text in services:
        real = real_service(ctx.lab, text, suite="ports")
        for listener in real.listeners:
            row, problem, line = _one(ctx, real, listener)
            rows.append(row)
            lines.append(line)
            if problem:
                problems.append(problem)
    observed = "; ".join(lines)
    if problems:
        observed += "; " + "; ".join(problems)
    return not problems, observed, {"services": rows}


def _one(
    ctx: _Context, real: RealService, listener: OwnedSocket
) -> tuple[dict[str, Any], str, str]:
    address, port = listener.local
    second = ctx.bind(ctx.agent(real.host), real.proto, address, port, expected="EADDRINUSE")
    same_user = ctx.agent(real.host, user=str(listener.uid))
    shared = ctx.bind(same_user, real.proto, address, port, reuseport=True)
    if shared.socket is not None:
        shared.socket.close(linger0=True)  # out of the service's group at once
    option = _reuseport_of(ctx, real, listener)
    joined = shared.result == "bound"
    where = f"{real.label} {show(listener.local)}"
    problem = ""
    if second.result != "EADDRINUSE":
        problem = f"{where}: a second bind got {second.result}, not EADDRINUSE"
    elif option is not None and joined != option:
        problem = (
            f"{where}: the socket has SO_REUSEPORT {'on' if option else 'off'}, yet a "
            f"SO_REUSEPORT bind as uid {listener.uid} got {shared.result}"
        )
    told = "on" if option else "off" if option is not None else "not readable here"
    inferred = "set" if joined else "not set"
    line = (
        f"{where} held by {real.describe()}: a second process's bind got {second.result}; "
        f"with SO_REUSEPORT as uid {listener.uid}: {shared.result} (so the service's socket "
        f"has SO_REUSEPORT {inferred}; read from the socket: {told})"
    )
    row = {
        "service": real.label,
        "listener": show(listener.local),
        "holders": [o.to_json() for o in listener.owners],
        "binds": [_bind_row(second), _bind_row(shared)],
        "reuseport_read": option,
        "reuseport_inferred_from_bind": joined,
    }
    return row, problem, line


def _bind_row(bind: Bind) -> dict[str, Any]:
    return bind.row()


def _reuseport_of(ctx: _Context, real: RealService, listener: OwnedSocket) -> bool | None:
    """SO_REUSEPORT as the service's own socket has it, read through a copy of one of its
    holders' descriptors; None when no holder is a process of this machine."""
    if not ctx.lab.hosts[real.host].handle.netns_path:
        return None  # an ssh host: its processes are on another machine
    for owner in listener.owners:
        value = _read_reuseport(owner.pid, owner.fd)
        if value is not None:
            return value
    return None


def _read_reuseport(pid: int, fd: int) -> bool | None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        copy = int(libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
        if copy < 0:
            return None
        with socket.socket(fileno=copy) as sock:  # closes only the copy
            return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    except OSError:
        return None
    finally:
        os.close(pidfd)
