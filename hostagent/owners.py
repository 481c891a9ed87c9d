"""Which processes hold which sockets, found the way `ss -p` finds them: every
`/proc/<pid>/fd/<n>` link that reads `socket:[<inode>]` names a holder of that socket.

The kernel keeps no map from a socket to its processes; the only way is to look at every
process's descriptors. Socket inodes are unique across the machine, so an inode from the
host's sock_diag dump can only be held by processes that hold that very socket. To stay
fast with many hosts on one machine, processes of this agent's network namespace are
read first (one stat each tells which they are), and the others only when a socket is
still without a holder (a process that made it and then moved to another namespace).

A process is described by what `ps` shows: pid, parent, effective user, command line,
and its ancestors (parent, grandparent, ... up to pid 1), so that the controller can tell
whether a socket belongs to a process or to one of the workers it forked. User names are
read from the process's own /etc/passwd (`/proc/<pid>/root`): a container's users are
not the machine's.
"""

from __future__ import annotations

import os
import pwd
from typing import Any

SOCKET_LINK = "socket:["
MAX_DEPTH = 4096  # ancestors followed at most (a loop would be a kernel bug, but never hang)
AGENT_COMM = "nh-agent"  # what hostagent.forkserver names its agents (a test holds them equal)


def holders(inodes: set[int]) -> tuple[dict[int, list[list[int]]], bool]:
    """inode -> [[pid, fd], ...] for the sockets in `inodes`; and whether every
    process's descriptors could be read (False: some holders may be missing)."""
    wanted = {inode for inode in inodes if inode}
    found: dict[int, list[list[int]]] = {}
    if not wanted:
        return found, True
    pids = _pids()
    here, elsewhere = _by_namespace(pids)
    complete = _scan(here, wanted, found)
    if wanted - found.keys():  # held, if at all, by a process of another namespace
        complete = _scan(elsewhere, wanted, found) and complete
    return found, complete


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _by_namespace(pids: list[int]) -> tuple[list[int], list[int]]:
    """(pids in this process's network namespace, every other pid)."""
    try:
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return [], pids
    here: list[int] = []
    elsewhere: list[int] = []
    for pid in pids:
        try:
            ns = os.stat(f"/proc/{pid}/ns/net")
        except OSError:  # gone, or not ours to look at: look later if needed
            elsewhere.append(pid)
            continue
        same = ns.st_ino == own.st_ino and ns.st_dev == own.st_dev
        (here if same else elsewhere).append(pid)
    return here, elsewhere


def _scan(pids: list[int], wanted: set[int], found: dict[int, list[list[int]]]) -> bool:
    complete = True
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue  # exited meanwhile: it holds nothing now
        except OSError:
            complete = False  # not ours to read (an agent that is not root)
            continue
        for name in names:
            try:
                link = os.readlink(f"{folder}/{name}")
            except OSError:
                continue  # closed meanwhile
            if link.startswith(SOCKET_LINK):
                inode = int(link[len(SOCKET_LINK) : -1])
                if inode in wanted:
                    found.setdefault(inode, []).append([pid, int(name)])
    return complete


def describe(pids: set[int]) -> dict[str, dict[str, Any]]:
    """pid (as text, for JSON) -> what `ps` would say of it, for each pid still alive."""
    stats: dict[int, tuple[str, int] | None] = {}
    users = _Users()
    out: dict[str, dict[str, Any]] = {}
    for pid in sorted(pids):
        stat = _stat(pid, stats)
        if stat is None:
            continue
        comm, ppid = stat
        uid = _uid(pid)
        out[str(pid)] = {
            "ppid": ppid,
            "comm": comm,
            "cmdline": _agent_or(comm, _cmdline(pid)),
            "uid": uid,
            "user": users.name(pid, uid),
            "ancestors": _ancestors(ppid, stats),
        }
    return out


def _stat(pid: int, cache: dict[int, tuple[str, int] | None]) -> tuple[str, int] | None:
    """(comm, ppid) of `pid`, None if it is gone."""
    if pid not in cache:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read().decode(errors="replace")
        except OSError:
            cache[pid] = None
        else:
            # comm may hold spaces and parentheses: it ends at the last ')'
            start, end = data.index("("), data.rindex(")")
            cache[pid] = (data[start + 1 : end], int(data[end + 2 :].split()[1]))
    return cache[pid]


def _ancestors(ppid: int, cache: dict[int, tuple[str, int] | None]) -> list[int]:
    chain: list[int] = []
    while ppid > 0 and len(chain) < MAX_DEPTH and ppid not in chain:
        chain.append(ppid)
        stat = _stat(ppid, cache)
        if stat is None:
            break
        ppid = stat[1]
    return chain


def _uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Uid:"):
                    return int(line.split()[2])  # real, effective, ...: ps shows effective
    except (OSError, ValueError, IndexError):
        pass
    return None


def _agent_or(comm: str, cmdline: list[str]) -> list[str]:
    """A netharness agent is a fork of the fork server, which named it (PR_SET_NAME):
    its command line is the server's, so say what it is instead."""
    if comm == AGENT_COMM and "hostagent.forkserver" in cmdline:
        return ["netharness-agent"]
    return cmdline


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            data = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in data.rstrip(b"\0").split(b"\0") if data]


class _Users:
    """uid -> name from each process's own /etc/passwd, read once per root file system."""

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int], dict[int, str]] = {}

    def name(self, pid: int, uid: int | None) -> str | None:
        if uid is None:
            return None
        table = self._table(pid)
        if table is not None:
            return table.get(uid)
        try:
            return pwd.getpwuid(uid).pw_name  # this agent's own view, the best left
        except KeyError:
            return None

    def _table(self, pid: int) -> dict[int, str] | None:
        path = f"/proc/{pid}/root/etc/passwd"
        try:
            found = os.stat(path)
        except OSError:
            return None
        key = (found.st_dev, found.st_ino)
        if key not in self._tables:
            self._tables[key] = _passwd(path)
        return self._tables[key]


def _passwd(path: str) -> dict[int, str]:
    table: dict[int, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit():
                    table.setdefault(int(fields[2]), fields[0])
    except OSError:
        pass
    return table
