"""What the root network namespace looks like, read through netlink (pyroute2).

Integration tests compare snapshots before, during and after a lab: a lab must put
nothing into the root namespace, ever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyroute2 import IPRoute


@dataclass(frozen=True)
class RootSnapshot:
    links: frozenset[tuple[int, str]]
    addresses: frozenset[tuple[int, str, int]]
    routes: frozenset[tuple[int, int, str | None, str | None, int | None]]
    namespaces: frozenset[str]
    sysctls: tuple[tuple[str, str], ...]

    def difference(self, other: RootSnapshot) -> list[str]:
        lines = []
        for field in ("links", "addresses", "routes", "namespaces"):
            mine, theirs = getattr(self, field), getattr(other, field)
            lines += [f"{field}: gone {item}" for item in sorted(mine - theirs, key=str)]
            lines += [f"{field}: new {item}" for item in sorted(theirs - mine, key=str)]
        if self.sysctls != other.sysctls:
            lines.append(f"sysctls changed: {self.sysctls} -> {other.sysctls}")
        return lines


SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/ip_unprivileged_port_start",
    "net/ipv6/conf/default/accept_dad",
)


def snapshot() -> RootSnapshot:
    with IPRoute() as ipr:
        links = frozenset((link["index"], link.get("ifname")) for link in ipr.link("dump"))
        addresses = frozenset(
            (a["index"], a.get("address"), a["prefixlen"]) for a in ipr.addr("dump")
        )
        routes = frozenset(
            (r["family"], r.get("table"), r.get("dst"), r.get("gateway"), r.get("oif"))
            for r in ipr.route("dump")
        )
    try:
        namespaces = frozenset(os.listdir("/run/netns"))
    except FileNotFoundError:
        namespaces = frozenset()
    sysctls = []
    for key in SYSCTLS:
        with open(f"/proc/sys/{key}") as f:
            sysctls.append((key, f.read().strip()))
    return RootSnapshot(links, addresses, routes, namespaces, tuple(sysctls))
