"""Ownership: the process the topology names is the one that holds the port.

    problems = check_services(lab)              # `services:` entries with `process: NAME`
    seen = accepted_by(lab, "client", "api", "10.0.1.12", 8080, "tcp", "echo")

A process owns a socket when it or one of its descendants holds it (harness.observe.
sockets: servers fork workers). `main` is a docker host's own main process.

- A service with `process: NAME`: every listener of its port (and address, if given)
  is held by NAME; nothing listening fails too.
- An `expect:` cell with `owner: NAME`, TCP: a connection from the source is accepted by
  NAME. The source's agent connects, and the server side's socket of that very
  four-tuple is looked up in the target: the accepted socket belongs to whoever called
  accept() on it. Until someone does, it sits in the listener's queue with no holder;
  that is waited for, up to ACCEPT_WAIT. UDP has no accepted socket: the bound socket
  that receives datagrams to that address and port must be NAME's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, Any

from harness.errors import AgentError, UsageError
from harness.observe import sockets
from harness.observe.sockets import OwnedSocket, SocketTable
from harness.topology.model import MAIN_PROCESS

if TYPE_CHECKING:
    from harness.lab import Lab

__all__ = [
    "ACCEPT_WAIT",
    "MAIN",
    "OwnerCheck",
    "ServiceVerdict",
    "accepted_by",
    "check_services",
    "owner_checks",
    "process_pid",
]

MAIN = MAIN_PROCESS  # a docker host's own main process
ACCEPT_WAIT = 2.0  # seconds a server may take to accept() the check's connection
POLL = 0.01
MAX_PARALLEL = 32


@dataclass(frozen=True)
class OwnerCheck:
    """Who holds the server side of one checked cell; `problem` None: the named process."""

    process: str
    pid: int | None
    holders: tuple[sockets.Owner, ...]
    problem: str | None

    @property
    def passed(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "pid": self.pid,
            "passed": self.passed,
            "problem": self.problem,
            "holders": [o.to_json() for o in self.holders],
        }


@dataclass(frozen=True)
class ServiceVerdict:
    """A `process:` service of a host against its listeners."""

    host: str
    proto: str
    port: int
    address: str | None
    owner: OwnerCheck

    @property
    def passed(self) -> bool:
        return self.owner.passed

    @property
    def label(self) -> str:
        where = f"[{self.address}]" if self.address and ":" in self.address else self.address
        return f"{self.host} {where + ':' if where else ''}{self.port}/{self.proto}"

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "proto": self.proto,
            "port": self.port,
            "address": self.address,
            **self.owner.to_json(),
        }


def process_pid(lab: Lab, host: str, name: str) -> int:
    """The pid of `host`'s process called `name`: a `run:` program or one started with
    `host.start` (by this Lab, or recorded in lab.json by the lab's owner), or `main`."""
    target = lab.hosts[host]
    if name == MAIN:
        pid = target.handle.details.get("pid")
        if pid is None:
            raise UsageError(f"host {host} has no main process (only docker hosts have one)")
        return int(pid)
    handle = target.processes.get(name)
    if handle is not None:
        return handle.pid
    recorded = _recorded_processes(lab, host)
    if name in recorded:
        return int(recorded[name]["pid"])
    known = ", ".join([*target.processes, *recorded]) or "none"
    raise UsageError(f"host {host} runs no process {name!r} (its processes: {known})")


def _recorded_processes(lab: Lab, host: str) -> dict[str, Any]:
    # An attached lab did not start the processes: their owner wrote them to lab.json.
    try:
        info = json.loads((lab.ledger_dir / "lab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(info.get("hosts", {}).get(host, {}).get("processes") or {})


def process_names(lab: Lab, host: str) -> dict[int, str]:
    """pid -> name of every process of `host` the lab knows by name (for messages)."""
    target = lab.hosts[host]
    # lab.json lists what the owner started: only a lab joined with attach() needs it
    recorded = _recorded_processes(lab, host) if lab.attached else {}
    known = {int(info["pid"]): name for name, info in recorded.items()}
    known.update({handle.pid: name for name, handle in target.processes.items()})
    if "pid" in target.handle.details:
        known[int(target.handle.details["pid"])] = MAIN
    return known


def _held_by(found: OwnedSocket, known: Mapping[int, str]) -> str:
    """Who holds it, led by the lab's name for them: `other: python3 (pid 12, ...)`."""
    names = sorted({n for p, n in known.items() for o in found.owners if o.descends_from(p)})
    text = found.owners_text()
    return f"{' and '.join(names)}: {text}" if names else text


def judge(
    process: str,
    pid: int | None,
    found: Sequence[OwnedSocket],
    what: str,
    known: Mapping[int, str] | None = None,
) -> OwnerCheck:
    """Whether every socket of `found` is held by `pid` or its descendants; `known`
    names the host's processes in the message when another one holds it."""
    holders = tuple(o for s in found for o in s.owners)
    if pid is None:
        return OwnerCheck(process, None, holders, f"process {process} is unknown")
    named = f"{process} (pid {pid})"
    if not found:
        return OwnerCheck(process, pid, (), f"nothing {what}; expected {named}")
    strangers = [s for s in found if not s.owned_by(pid)]
    if not strangers:
        return OwnerCheck(process, pid, holders, None)
    problem = "; ".join(
        f"{sockets.endpoint(s.local)} is held by {_held_by(s, known or {})}, not by {named}"
        for s in strangers
    )
    return OwnerCheck(process, pid, holders, problem)


# ---- services ---------------------------------------------------------------------------


def check_services(lab: Lab) -> tuple[ServiceVerdict, ...]:
    """Each `process:` service of each host against its listeners (one request per host)."""
    wanted = {
        name: [s for s in host.spec.services if s.process is not None]
        for name, host in lab.hosts.items()
    }
    wanted = {name: services for name, services in wanted.items() if services}
    if not wanted:
        return ()
    tables = sockets.tables(lab, wanted, listening=True)
    verdicts = []
    for host, services in wanted.items():
        for service in services:
            assert service.process is not None
            found = [
                s
                for s in tables[host].listeners(service.proto, service.port)
                if service.address is None or _same(s.local[0], service.address)
            ]
            verb = "listens" if service.proto == "tcp" else "is bound"
            what = f"{verb} on {service.port}/{service.proto} in {host}"
            pid = _pid_or_none(lab, host, service.process)
            owner = judge(service.process, pid, found, what, process_names(lab, host))
            verdicts.append(
                ServiceVerdict(host, service.proto, service.port, service.address, owner)
            )
    return tuple(verdicts)


def _pid_or_none(lab: Lab, host: str, name: str) -> int | None:
    try:
        return process_pid(lab, host, name)
    except UsageError:
        return None


# ---- cells ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One cell to check the owner of: from `source`, `address`:`port` of `target`."""

    source: str
    target: str
    address: str
    port: int
    proto: str
    process: str


def owner_checks(lab: Lab, cells: Sequence[Target]) -> list[OwnerCheck]:
    """`accepted_by` for every cell, at most MAX_PARALLEL at once."""
    if not cells:
        return []
    workers = min(MAX_PARALLEL, len(cells))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nh-owner") as pool:
        return list(pool.map(lambda c: accepted_by(lab, *_fields(c)), cells))


def _fields(cell: Target) -> tuple[str, str, str, int, str, str]:
    return (cell.source, cell.target, cell.address, cell.port, cell.proto, cell.process)


def accepted_by(
    lab: Lab,
    source: str,
    target: str,
    address: str,
    port: int,
    proto: str,
    process: str,
    wait: float = ACCEPT_WAIT,
) -> OwnerCheck:
    """Whether `process` of `target` takes what `source` sends to `address`:`port`
    (TCP: accepts its connection; UDP: holds the socket that receives its datagrams)."""
    pid = _pid_or_none(lab, target, process)
    if pid is None:
        return judge(process, None, (), "")
    if proto == "udp":
        table = sockets.table(lab.hosts[target], listening=True, port=port, protos=["udp"])
        found = _receivers(table, address, port)
        what = f"is bound to {port}/udp in {target}"
        return judge(process, pid, found, what, process_names(lab, target))
    agent = lab.host_agent(source)
    try:
        conn = agent.request("connect", proto="tcp", address=address, port=port, timeout=wait)
    except AgentError as exc:
        return OwnerCheck(process, pid, (), f"the owner check's own connection failed: {exc}")
    try:
        client = (str(conn["local"][0]), int(conn["local"][1]))
        return _accepted(lab, target, port, client, process, pid, wait)
    finally:
        with contextlib.suppress(AgentError):  # an agent gone took the connection along
            agent.request("close", sock=conn["sock"])


def _accepted(
    lab: Lab,
    target: str,
    port: int,
    client: tuple[str, int],
    process: str,
    pid: int,
    wait: float,
) -> OwnerCheck:
    host = lab.hosts[target]
    deadline = time.monotonic() + wait

    def look() -> tuple[list[OwnedSocket], SocketTable]:
        table = sockets.table(host, port=port, protos=["tcp"])
        mine = [s for s in table.sockets if not s.listening and _is_peer(s.peer, client)]
        return mine, table

    mine, table = _until(look, lambda found: bool(found[0] and found[0][0].owners), deadline)
    peer = sockets.endpoint(client)
    if not mine:
        return OwnerCheck(
            process,
            pid,
            (),
            f"no socket of {target} has the peer {peer} of the check's connection "
            "(is an address translated on the way?)",
        )
    if not mine[0].owners:
        queue = table.listeners("tcp", port)
        holders = "; ".join(s.owners_text() for s in queue) or "nobody"
        return OwnerCheck(
            process,
            pid,
            (),
            f"nobody accepted the connection from {peer} within {wait:g} s: it waits in "
            f"the queue of the listener held by {holders}",
        )
    return judge(process, pid, mine, "", process_names(lab, target))


def _until(
    look: Callable[[], tuple[list[OwnedSocket], SocketTable]],
    done: Callable[[tuple[list[OwnedSocket], SocketTable]], bool],
    deadline: float,
) -> tuple[list[OwnedSocket], SocketTable]:
    while True:
        found = look()
        if done(found) or time.monotonic() >= deadline:
            return found
        time.sleep(POLL)


def _receivers(table: SocketTable, address: str, port: int) -> list[OwnedSocket]:
    """The bound UDP sockets a datagram to `address`:`port` reaches: those bound to the
    address itself, else the wildcard of its family, else (IPv4) a dual-stack `::`."""
    bound = table.listeners("udp", port)
    exact = [s for s in bound if _same(s.local[0], address)]
    if exact:
        return exact
    v6 = ":" in address
    wildcard = [s for s in bound if s.local[0] == ("::" if v6 else "0.0.0.0")]
    if wildcard or v6:
        return wildcard
    return [s for s in bound if s.local[0] == "::"]


def _is_peer(peer: tuple[str, int], client: tuple[str, int]) -> bool:
    return peer[1] == client[1] and _same(peer[0], client[0])


def _same(one: str, other: str) -> bool:
    """Equal addresses, an IPv4 one and its IPv4-mapped IPv6 form included."""
    return _plain(one) == _plain(other)


def _plain(text: str) -> IPv4Address | IPv6Address:
    address = ip_address(text)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
