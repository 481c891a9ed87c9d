"""What the root network namespace looks like, read through netlink (pyroute2).

Integration tests compare snapshots before, during and after a lab: a lab must put
nothing into the root namespace, ever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from pyroute2 import IPRoute


@dataclass(frozen=True)
class RootSnapshot:
    links: frozenset[tuple[int, str]]
    addresses: frozenset[tuple[int, str, int]]
    routes: frozenset[tuple[int, int, str | None, str | None, int | None]]
    namespaces: frozenset[str]
    sysctls: tuple[tuple[str, str], ...]
    ruleset: str

    def difference(self, other: RootSnapshot) -> list[str]:
        lines = []
        for field in ("links", "addresses", "routes", "namespaces"):
            mine, theirs = getattr(self, field), getattr(other, field)
            lines += [f"{field}: gone {item}" for item in sorted(mine - theirs, key=str)]
            lines += [f"{field}: new {item}" for item in sorted(theirs - mine, key=str)]
        if self.sysctls != other.sysctls:
            changed = sorted(set(self.sysctls) ^ set(other.sysctls))
            lines.append(f"sysctls changed: {changed}")
        if self.ruleset != other.ruleset:
            lines.append("nft ruleset changed")
        return lines


# Every value a lab could plausibly change if it leaked into the root namespace.
SYSCTL_DIRS = (
    "/proc/sys/net/ipv4",
    "/proc/sys/net/ipv6/conf/all",
    "/proc/sys/net/ipv6/conf/default",
    "/proc/sys/net/core",
)


def _sysctls() -> tuple[tuple[str, str], ...]:
    values = []
    for directory in SYSCTL_DIRS:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if not entry.is_file():
                continue
            try:
                with open(entry.path) as f:
                    values.append((entry.path, f.read().strip()))
            except OSError:
                continue  # write-only entries such as route/flush
    return tuple(values)


def _ruleset() -> str:
    # -s: without counters, which root-namespace traffic changes all the time.
    nft = shutil.which("nft")
    if nft is None:
        raise RuntimeError("nft is not installed: `make install` installs nftables")
    return subprocess.run(
        [nft, "-s", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout


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
    return RootSnapshot(links, addresses, routes, namespaces, _sysctls(), _ruleset())
