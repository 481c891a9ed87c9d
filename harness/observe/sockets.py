"""Who owns each port: every socket of a host with the processes that hold it, the view
of `ss -tupan` (`listening=True`: `ss -tulpn`), for one host or a whole lab at once.

    from harness.observe import sockets
    table = sockets.table(lab.hosts["web"], listening=True)
    for s in table.sockets:
        print(s.netid, s.local, s.state, [(o.pid, o.command) for o in s.owners])
    every = sockets.tables(lab)                 # {host: SocketTable}, all hosts at once

The host's agent answers (its `socket_table` op): it runs in the host's network
namespace, so its sock_diag dump is the host's sockets, and it reads /proc/<pid>/fd for
the processes holding each socket's inode. That works alike for every backend: a netns
host's agent and a docker host's agent (beside the container, in its network namespace)
see the machine's processes with root-namespace pids, an ssh host's agent those of the
remote machine. A socket shared by several processes (a fork after bind) lists them all.

A process owns a socket when it holds it or one of its descendants does (`owned_by`):
servers fork workers that accept. Descent is followed through parent pids, not process
groups or sessions: workers inherit their parent, while a group or session is something
a server and a shell change at will (setsid, job control) and unrelated processes can share.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.observe.diag import STATES

if TYPE_CHECKING:
    from harness.lab import Lab, LabHost

__all__ = [
    "COLUMNS",
    "OwnedSocket",
    "Owner",
    "SocketTable",
    "endpoint",
    "parse",
    "table",
    "table_rows",
    "tables",
    "text",
    "unmapped",
]

MAX_PARALLEL = 64  # hosts asked at once; each request is a thread waiting on the lab's loop


@dataclass(frozen=True)
class Owner:
    """A process holding a socket (through descriptor `fd`), as `ps` describes it."""

    pid: int
    fd: int
    ppid: int
    user: str | None  # from the process's own /etc/passwd; None: not listed there
    uid: int | None
    comm: str  # the kernel's short name, what `ss -p` prints
    cmdline: tuple[str, ...]  # empty for kernel threads and zombies
    ancestors: tuple[int, ...]  # parent, grandparent, ... up to pid 1

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) if self.cmdline else f"[{self.comm}]"

    def descends_from(self, pid: int) -> bool:
        """This process is `pid` or one of its descendants."""
        return pid == self.pid or pid in self.ancestors

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "fd": self.fd,
            "ppid": self.ppid,
            "user": self.user,
            "uid": self.uid,
            "comm": self.comm,
            "command": list(self.cmdline),
            "ancestors": list(self.ancestors),
        }


@dataclass(frozen=True)
class OwnedSocket:
    """One socket of a host and its holders (none: TIME_WAIT, not yet accepted, ...)."""

    proto: Literal["tcp", "udp"]
    family: int  # 4 or 6
    state: str  # STATES' names; an unconnected UDP socket is UNCONN
    local: tuple[str, int]
    peer: tuple[str, int]
    inode: int
    uid: int
    owners: tuple[Owner, ...]

    @property
    def netid(self) -> str:
        """tcp, tcp6, udp or udp6, as netstat names them."""
        return self.proto if self.family == 4 else f"{self.proto}6"

    @property
    def listening(self) -> bool:
        """A TCP listener or a bound, unconnected UDP socket: what `ss -l` lists."""
        return self.state in ("LISTEN", "UNCONN")

    def owned_by(self, pid: int) -> bool:
        """Held by process `pid` or one of its descendants."""
        return any(owner.descends_from(pid) for owner in self.owners)

    def owners_text(self) -> str:
        """`python3 (pid 812, root), nginx (pid 813, www-data)`, or `nobody`."""
        if not self.owners:
            return "nobody (no process holds it)"
        return ", ".join(
            f"{o.comm} (pid {o.pid}, {o.user or o.uid}: {o.command})" for o in self.owners
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "proto": self.netid,
            "state": self.state,
            "local": {"address": self.local[0], "port": self.local[1]},
            "peer": {"address": self.peer[0], "port": self.peer[1]},
            "inode": self.inode,
            "uid": self.uid,
            "owners": [owner.to_json() for owner in self.owners],
        }


@dataclass(frozen=True)
class SocketTable:
    """A host's sockets; `complete` False: some process could not be read (an agent that
    is not root), so a socket's holders may be missing."""

    host: str
    sockets: tuple[OwnedSocket, ...]
    complete: bool = True

    def listeners(self, proto: str, port: int) -> list[OwnedSocket]:
        """The sockets that receive new `proto` connections or datagrams on `port`."""
        return [s for s in self.sockets if s.proto == proto and s.local[1] == port and s.listening]

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "complete": self.complete,
            "sockets": [s.to_json() for s in self.sockets],
        }


def table(
    host: LabHost,
    *,
    listening: bool = False,
    port: int | None = None,
    protos: Sequence[str] = ("tcp", "udp"),
) -> SocketTable:
    """Every socket of `host` (only listeners with `listening`, only local `port` if
    given) with its holders, from one request to the host's agent."""
    args: dict[str, Any] = {"listening": listening, "protos": list(protos)}
    if port:
        args["port"] = port
    reply = host.host_agent.request("socket_table", **args)
    return parse(host.name, reply)


def tables(
    lab: Lab, hosts: Iterable[str] | None = None, *, listening: bool = False
) -> dict[str, SocketTable]:
    """`table` of each host (all of the lab's by default), asked all at once."""
    names = list(hosts) if hosts is not None else list(lab.hosts)

    def one(name: str) -> SocketTable:
        return table(lab.hosts[name], listening=listening)

    workers = max(1, min(MAX_PARALLEL, len(names)))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nh-ps") as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def parse(host: str, reply: Mapping[str, Any]) -> SocketTable:
    """A SocketTable from the agent's `socket_table` reply."""
    processes = reply.get("processes") or {}
    found = []
    for proto, family, number, src, sport, dst, dport, inode, uid, held in reply["sockets"]:
        state = STATES.get(int(number), f"STATE_{number}")
        if proto == "udp" and state == "CLOSE":
            state = "UNCONN"
        owners = tuple(
            _owner(int(pid), int(fd), processes[str(pid)])
            for pid, fd in held
            if str(pid) in processes  # gone between the two looks
        )
        found.append(
            OwnedSocket(
                proto, int(family), state, (src, int(sport)), (dst, int(dport)), inode, uid, owners
            )
        )
    found.sort(key=_order)
    return SocketTable(host, tuple(found), bool(reply.get("complete", True)))


def _owner(pid: int, fd: int, info: Mapping[str, Any]) -> Owner:
    return Owner(
        pid=pid,
        fd=fd,
        ppid=int(info["ppid"]),
        user=info.get("user"),
        uid=info.get("uid"),
        comm=str(info["comm"]),
        cmdline=tuple(info.get("cmdline") or ()),
        ancestors=tuple(int(p) for p in info.get("ancestors") or ()),
    )


def _order(s: OwnedSocket) -> tuple[Any, ...]:
    # Listeners first, then by protocol, port and address: the order people scan `ss` in.
    return (not s.listening, s.proto, s.family, s.local[1], s.local[0], s.peer)


def unmapped(address: tuple[str, int]) -> tuple[str, int]:
    """An IPv4-mapped IPv6 endpoint (`::ffff:10.0.1.2`, how a dual-stack `[::]` listener
    holds an IPv4 peer) as the IPv4 one it stands for; any other endpoint as it is."""
    host, port = address
    return (host[7:], port) if host.startswith("::ffff:") and "." in host else (host, port)


def endpoint(address: tuple[str, int]) -> str:
    """`10.0.1.12:80`, `[fd00:1::12]:80`, `0.0.0.0:*` (port 0: any)."""
    host, port = address
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port if port else '*'}"


COLUMNS = ("proto", "local", "peer", "state", "pid", "user", "command")


def table_rows(found: SocketTable) -> list[tuple[str, ...]]:
    """One row per socket and owner (COLUMNS); a shared socket's further owners get rows
    of their own with the socket's columns left blank."""
    out: list[tuple[str, ...]] = []
    for s in found.sockets:
        first = (s.netid, endpoint(s.local), endpoint(s.peer), s.state)
        if not s.owners:
            out.append((*first, "-", "-", "-"))
        for index, o in enumerate(s.owners):
            lead = first if index == 0 else ("", "", "", "")
            out.append((*lead, str(o.pid), o.user or str(o.uid), o.command))
    return out


def text(found: SocketTable, width: int = 200) -> str:
    """The table as aligned plain text (diagnostics, logs); commands cut at `width`."""
    grid = [COLUMNS, *table_rows(found)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(COLUMNS) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])[:width]
        for row in grid
    ]
    if not found.complete:
        lines.append("(some processes could not be read: owners may be missing)")
    return "\n".join(line.rstrip() for line in lines)
