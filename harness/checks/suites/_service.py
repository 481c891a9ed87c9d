"""A server of the user's as a suite's server: `service=HOST:PORT/PROTO`.

    service = real_service(lab, "web:8080/tcp", suite="five_tuple")
    service.pids                    # the processes holding the listener (not their workers)
    service.owns(owned_socket)      # held by one of them or by a process they forked

The user's server reports nothing to netharness, so everything a suite knows of its side
comes from the host's socket table (`harness.observe.sockets`: sock_diag in the host's
namespace, each socket's holders from /proc/*/fd): the listener, and each connection it
accepted with the process that holds it. The service's processes are the holders of its
listener(s) that descend from no other holder: a pre-forking server's master, or each of
several processes sharing the port with SO_REUSEPORT. When the topology declares the
service's process (`process: NAME`), only that process and its descendants are the
service, and any other holder is a stranger the checks name. A socket belongs to the
service when one of its processes or their descendants holds it (`OwnedSocket.owned_by`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from harness.checks.owners import process_pid
from harness.errors import HarnessError, UsageError
from harness.observe import sockets
from harness.observe.sockets import OwnedSocket, Owner, SocketTable

if TYPE_CHECKING:
    from harness.lab import Lab

__all__ = [
    "RealService",
    "declared_services",
    "parse_service",
    "real_service",
    "roots",
    "wait_accepted",
]

_SPEC = re.compile(r"(?P<host>[^:\s]+):(?P<port>\d{1,5})/(?P<proto>tcp|udp)")
WILDCARDS = ("0.0.0.0", "::")
POLL = 0.02


@dataclass(frozen=True)
class RealService:
    """A listener of a user's process, as the host's socket table shows it."""

    host: str
    proto: Literal["tcp", "udp"]
    port: int
    listeners: tuple[OwnedSocket, ...]
    processes: tuple[Owner, ...]  # the holders that descend from no other holder
    declared: str | None = None  # the topology's `process:` name for it, if any

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}/{self.proto}"

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.processes)

    def owns(self, s: OwnedSocket) -> bool:
        """Held by one of the service's processes or one of their descendants."""
        return any(s.owned_by(pid) for pid in self.pids)

    def describe(self) -> str:
        """`python3 (pid 812, root: python3 -m http.server 8080)`, and the others."""
        name = f"{self.declared}: " if self.declared else ""
        return name + ", ".join(
            f"{p.comm} (pid {p.pid}, {p.user or p.uid}: {p.command})" for p in self.processes
        )

    def listen_address(self, family: int) -> str | None:
        """The address clients must connect to for `family`: None when the listener takes
        any address of the host (a wildcard; `::` also takes IPv4 unless IPV6_V6ONLY)."""
        mine = [s for s in self.listeners if s.family == family]
        if family == 4:
            mine += [s for s in self.listeners if s.family == 6 and s.local[0] == "::"]
        if not mine:
            raise UsageError(
                f"{self.label} listens on {_where(self.listeners)}: nothing there takes "
                f"IPv{family} (set family= to match)"
            )
        specific = [s.local[0] for s in mine if s.local[0] not in WILDCARDS]
        return None if len(specific) < len(mine) else specific[0]


def parse_service(text: str, suite: str) -> tuple[str, int, Literal["tcp", "udp"]]:
    """HOST:PORT/PROTO, checked."""
    match = _SPEC.fullmatch(str(text).strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise UsageError(
            f"{suite}: service={text!r}: write HOST:PORT/PROTO, e.g. web:8080/tcp or dns:53/udp"
        )
    proto: Literal["tcp", "udp"] = "tcp" if match["proto"] == "tcp" else "udp"
    return match["host"], int(match["port"]), proto


def real_service(lab: Lab, text: str, *, suite: str, server: str | None = None) -> RealService:
    """The service `text` names, found listening; a UsageError (exit 2) naming what does
    listen on the host when nothing listens there."""
    host, port, proto = parse_service(text, suite)
    if host not in lab.hosts:
        raise UsageError(
            f"{suite}: service={text!r}: no host {host!r} in lab {lab.id} "
            f"(hosts: {', '.join(lab.hosts)})"
        )
    if server is not None and server != host:
        raise UsageError(f"{suite}: server={server!r} but service={text!r} is on {host}")
    table = sockets.table(lab.hosts[host], listening=True)
    found = tuple(table.listeners(proto, port))
    if not found:
        verb = "listens" if proto == "tcp" else "is bound"
        raise UsageError(
            f"{suite}: nothing {verb} on {port}/{proto} in {host}; its listeners: {_listing(table)}"
        )
    named = next(
        (
            s.process
            for s in lab.hosts[host].spec.services
            if s.process and s.port == port and s.proto == proto
        ),
        None,
    )
    holders = [o for s in found for o in s.owners]
    if named is not None:  # the topology says whose it is: others holding it are strangers
        pid = process_pid(lab, host, named)
        holders = [o for o in holders if o.descends_from(pid)]
    held = roots(holders)
    if not held:
        whose = f"process {named}'s" if named else "any process netharness can see"
        raise HarnessError(
            f"{suite}: {host}:{port}/{proto} is not held by {whose}: "
            + "; ".join(f"{sockets.endpoint(s.local)} {s.owners_text()}" for s in found)
            + ("" if table.complete else " (some processes could not be read)")
        )
    return RealService(host, proto, port, found, held, named)


def declared_services(lab: Lab) -> list[str]:
    """HOST:PORT/PROTO of each topology service a process of the user's holds."""
    return [
        f"{name}:{s.port}/{s.proto}"
        for name, host in lab.hosts.items()
        for s in host.spec.services
        if s.process is not None
    ]


def roots(holders: Sequence[Owner]) -> tuple[Owner, ...]:
    """The holders that descend from no other holder, one per pid, by pid."""
    pids = {o.pid for o in holders}
    unique = {o.pid: o for o in holders}
    top = [o for o in unique.values() if not any(a in pids for a in o.ancestors)]
    return tuple(sorted(top, key=lambda o: o.pid))


def _where(found: Sequence[OwnedSocket]) -> str:
    return ", ".join(sockets.endpoint(s.local) for s in found) or "nothing"


def _listing(table: SocketTable) -> str:
    if not table.sockets:
        return "none"
    return "; ".join(
        f"{s.netid} {sockets.endpoint(s.local)} {s.owners_text()}" for s in table.sockets
    )


def wait_accepted(
    lab: Lab, service: RealService, expected: int, stall: float, timeout: float
) -> tuple[list[OwnedSocket], list[OwnedSocket]]:
    """Read the service port's established sockets until `expected` of them have been
    accepted (by the service's processes or any other), or no more were accepted for
    `stall` seconds, or `timeout` passed: (the service's, the others'). A connection has
    no holder until accept() returns it, and a server with a short backlog takes the last
    ones only as the kernel retries."""
    host = lab.hosts[service.host]
    started = progress = time.monotonic()
    held = -1
    while True:
        table = sockets.table(host, port=service.port, protos=[service.proto])
        established = [s for s in table.sockets if s.state == "ESTABLISHED"]
        mine = [s for s in established if service.owns(s)]
        accepted = sum(1 for s in established if s.owners)
        now = time.monotonic()
        if accepted > held:
            held, progress = accepted, now
        if held >= expected or now - progress > stall or now - started > timeout:
            return mine, [s for s in established if not service.owns(s)]
        time.sleep(POLL)
