"""The lab's wiring, done over netlink with pyroute2.

One fabric namespace per lab (`nh-<lab>`) holds a Linux bridge per network, named after
the network. Each host interface is a veth pair created from the fabric namespace with
its peer placed straight into the host's namespace, so no interface ever exists in the
root namespace, even for a moment. Work for different hosts runs concurrently on one
event loop; each host's own steps stay in order.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from harness import _netns, naming
from harness.errors import BackendError
from harness.ledger import ABSENT
from harness.topology import Host, Topology

Record = Callable[[str, str, dict[str, str]], None]


@contextmanager
def _netlink_errors(host: str | None, what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        raise BackendError(f"{what}: {exc}", host=host, code=exc.code) from exc
    except OSError as exc:
        raise BackendError(f"{what}: {exc.strerror}", host=host, code=exc.errno) from exc


async def _rtnl_in(fd: int) -> AsyncIPRoute:
    """An rtnetlink socket bound to the namespace behind `fd` (sockets keep their netns)."""
    with _netns.entered(fd):
        ipr = AsyncIPRoute()
        # Create the socket now, synchronously: no other task may run while this
        # thread is inside another namespace.
        ipr.socket  # noqa: B018
    await ipr.setup_endpoint()
    return ipr


class Fabric:
    """The fabric namespace of one lab, with a bridge per network."""

    def __init__(self, lab_id: str, topology: Topology, record: Record) -> None:
        self.lab_id = lab_id
        self.topology = topology
        self.name = naming.fabric_netns(lab_id)
        self.path = _netns.netns_path(self.name)
        self._record = record
        self._fd: int | None = None
        self._ipr: AsyncIPRoute | None = None
        self._bridges: dict[str, int] = {}
        self._ports = 0

    async def build(self) -> None:
        self._record("netns", self.path, {"role": "fabric"})
        with _netlink_errors(None, f"fabric namespace {self.name}"):
            try:
                self._fd = _netns.create(self.name)
            except FileExistsError:
                self._record("netns", self.path, {"role": "fabric", "state": ABSENT})
                raise
            with _netns.entered(self._fd):
                # The fabric only switches frames; it has no addresses of its own.
                for conf in ("all", "default"):
                    _netns.write_sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "1")
            self._ipr = await _rtnl_in(self._fd)
            for network in self.topology.networks.values():
                await self._ipr.link(
                    "add",
                    ifname=network.name,
                    kind="bridge",
                    br_stp_state=0,
                    br_forward_delay=0,
                    br_mcast_snooping=0,
                    state="up",
                )
                (self._bridges[network.name],) = await self._ipr.link_lookup(ifname=network.name)

    async def wire(self, host: Host, netns_path: str) -> None:
        """Plug `host` into its networks and configure it (addresses, routes, sysctls)."""
        assert self._ipr is not None, "build() first"
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            inside = await _rtnl_in(fd)
            try:
                await self._wire(host, fd, inside)
            finally:
                inside.close()
        finally:
            os.close(fd)

    async def _wire(self, host: Host, fd: int, inside: AsyncIPRoute) -> None:
        assert self._ipr is not None
        with _netlink_errors(host.name, "loopback"):
            await inside.link("set", index=1, state="up")
        for interface in host.interfaces:
            self._ports += 1
            port = naming.fabric_port(self._ports)
            with _netlink_errors(host.name, f"veth for {interface.ifname}"):
                await self._ipr.link(
                    "add",
                    ifname=port,
                    kind="veth",
                    master=self._bridges[interface.network],
                    ifalias=f"{self.lab_id}:{host.name}:{interface.ifname}",
                    state="up",
                    peer={"ifname": interface.ifname, "net_ns_fd": fd},
                )
            with _netlink_errors(host.name, f"configure {interface.ifname}"):
                (index,) = await inside.link_lookup(ifname=interface.ifname)
                for address in (interface.address, interface.address6):
                    if address is not None:
                        await inside.addr(
                            "add",
                            index=index,
                            address=str(address.ip),
                            prefixlen=address.network.prefixlen,
                            flags=IFA_F_NODAD,
                        )
                await inside.link("set", index=index, state="up")
        for route in host.routes:
            family = socket.AF_INET if route.to.version == 4 else socket.AF_INET6
            with _netlink_errors(host.name, f"route to {route.to} via {route.via}"):
                await inside.route("add", family=family, dst=str(route.to), gateway=str(route.via))
        with _netlink_errors(host.name, "sysctls"), _netns.entered(fd):
            for key, value in _sysctls(host).items():
                _netns.write_sysctl(key, value)

    async def close(self) -> None:
        """Drop our handles; the namespace itself goes with the lab's ledger."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _sysctls(host: Host) -> dict[str, str]:
    # Always written: a new namespace may inherit the root's forwarding setting
    # (net.core.devconf_inherit_init_net), and a host that forwards by accident lies.
    forwarding = "1" if host.forwarding else "0"
    values: dict[str, Any] = {
        "net.ipv4.ip_forward": forwarding,
        "net.ipv6.conf.all.forwarding": forwarding,
    }
    values.update(host.sysctls)
    return {key: str(value) for key, value in values.items()}


async def wire_all(fabric: Fabric, hosts: list[tuple[Host, str]]) -> None:
    """Wire hosts concurrently; the first failure cancels the rest and is raised."""
    async with asyncio.TaskGroup() as group:
        for host, path in hosts:
            group.create_task(fabric.wire(host, path))
