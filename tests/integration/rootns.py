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

from harness.backends.docker import LAB_LABEL
from harness.core import ledger, naming

# Set once per test run (tests/conftest.py) and inherited by every process the run starts,
# lab owners included: labs whose owner lacks it belong to another run on this machine.
SESSION_VAR = "NETHARNESS_TEST_SESSION"


@dataclass(frozen=True)
class RootSnapshot:
    links: frozenset[tuple[int, str]]
    addresses: frozenset[tuple[int, str, int]]
    routes: frozenset[tuple[int, int, str | None, str | None, int | None]]
    namespaces: frozenset[str]
    sysctls: tuple[tuple[str, str], ...]
    ruleset: str
    containers: frozenset[str] = frozenset()  # "name (id)" of every container on the engine

    def difference(self, other: RootSnapshot) -> list[str]:
        lines = []
        for field in ("links", "addresses", "routes", "namespaces", "containers"):
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


def foreign_labs() -> frozenset[str]:
    """Ids of live labs owned by something other than this test run (another developer's
    run on a shared machine): their namespaces come and go independently of ours."""
    token = os.environ.get(SESSION_VAR)
    marker = f"{SESSION_VAR}={token}".encode()
    foreign = set()
    for record in ledger.list_labs():
        pid = record.info.get("owner_pid")
        if not isinstance(pid, int) or pid == os.getpid():
            continue  # /proc/self/environ would not show what this process set itself
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue  # the owner is gone: whatever it left is ours to notice
        if token is None or marker not in environ:
            foreign.add(record.id)
    return frozenset(foreign)


def lab_namespaces() -> set[str]:
    """Lab namespaces (nh-*) in /run/netns, less those of other runs' live labs."""
    try:
        names = [n for n in os.listdir("/run/netns") if n.startswith("nh-")]
    except FileNotFoundError:
        return set()
    foreign = foreign_labs()  # other runs' labs on a shared machine
    return {n for n in names if not any(naming.is_lab_netns(lab, n) for lab in foreign)}


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
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        names = []
    foreign = foreign_labs()
    namespaces = frozenset(
        name for name in names if not any(naming.is_lab_netns(lab, name) for lab in foreign)
    )
    return RootSnapshot(
        links, addresses, routes, namespaces, _sysctls(), _ruleset(), _containers(foreign)
    )


def _containers(foreign: frozenset[str]) -> frozenset[str]:
    """`docker ps -a` through the SDK, less the containers of other runs' live labs.
    No engine: nothing to compare (the docker backend's own tests fail without one).
    A rootless run makes no containers (its labs refuse docker hosts) and may not reach
    the engine at all."""
    from harness.core import userns

    if userns.inside():
        return frozenset()
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env()
    except DockerException:
        return frozenset()
    try:
        return frozenset(
            f"{c.name} ({c.short_id})"
            for c in client.containers.list(all=True, ignore_removed=True)
            if c.labels.get(LAB_LABEL) not in foreign
        )
    except DockerException:
        return frozenset()
    finally:
        client.close()
