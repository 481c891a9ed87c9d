"""Process groups of the user's processes, seen from the controller through /proc: pids
of this machine's pid namespace (netns hosts' processes, docker execs seen from the host)."""

from __future__ import annotations

import contextlib
import os


def _stat(pid: int | str) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command: state, ppid, pgrp, ...; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ")".
    return stat[stat.rfind(b")") + 2 :].split()


def _running(fields: list[bytes] | None) -> bool:
    """A process that has not exited: a zombie has (its parent just has not reaped it)."""
    return fields is not None and fields[0] not in (b"Z", b"X")


def alive(pid: int) -> bool:
    """Whether `pid` runs; False for no pid at all."""
    return pid > 0 and _running(_stat(pid))


def leads_group(pid: int) -> bool | None:
    """Whether `pid` leads its process group; None if there is no such process."""
    fields = _stat(pid)
    return None if fields is None else int(fields[2]) == pid


def live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that have not exited. Zombies do not count: an
    orphan's zombie waits for init, which may reap late (or, in some sandboxes, never)."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and int(fields[2]) == pgid and _running(fields):
                members.append(int(entry.name))
    return members


def signal_group(pid: int, sig: int) -> None:
    """`sig` to the group `pid` leads (what it started, even after it has exited), or to
    `pid` alone if it is in another's group. A group id is not reused while anyone is in
    it, so a gone leader's group still names only its own members."""
    if pid <= 0:
        return
    leader = leads_group(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if leader is False:
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)
