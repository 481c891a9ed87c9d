"""The lab's wiring: batched rtnetlink requests (harness.core._rtnl).

One fabric namespace per lab (`nh-<lab>`) holds a Linux bridge per network, named after
the network. Each host interface is a veth pair created from the fabric namespace with
its peer placed straight into the host's namespace, so no interface ever exists in the
root namespace, even for a moment. Wiring goes in two rounds of batched requests: the
fabric makes the veth pairs of a group of hosts, then each host of the group configures
its ends (links up, addresses, routes) with one batch on its own socket. The rounds run
on a worker thread: the kernel does its part in our system calls, with the GIL released,
while the event loop starts agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from harness.core import _netns, _rtnl, naming
from harness.core.ledger import ABSENT
from harness.errors import BackendError
from harness.topology import Host, Topology
from harness.topology._sysctls import LAB_DEFAULTS

Record = Callable[[str, str, dict[str, str]], None]
FIRST_INDEX = 1000  # explicit interface indexes, clear of those a new namespace has
GROUP = 32  # hosts wired per round: bounds open namespace fds and sockets


@contextmanager
def _os_errors(host: str | None, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise BackendError.from_os(exc, what, host=host) from exc


class Fabric:
    """The fabric namespace of one lab, with a bridge per network."""

    def __init__(self, lab_id: str, topology: Topology, record: Record) -> None:
        self.lab_id = lab_id
        self.topology = topology
        self.name = naming.fabric_netns(lab_id)
        self.path = _netns.netns_path(self.name)
        self._record = record
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._bridges: dict[str, int] = {}
        self._ports = 0
        self._fresh: dict[str, str] = {}
        self._stop = threading.Event()
        self._idle = threading.Event()  # clear while the worker may use our socket
        self._idle.set()

    async def build(self) -> None:
        self._record("netns", self.path, {"role": "fabric"})
        with _os_errors(None, f"fabric namespace {self.name}"):
            try:
                self._fd = _netns.create(self.name)
            except FileExistsError:
                self._record("netns", self.path, {"role": "fabric", "state": ABSENT})
                raise
            with _netns.entered(self._fd):
                # What every namespace made like this one starts with (the host's
                # net.core.devconf_inherit_init_net decides): such hosts skip writing it.
                self._fresh = {key: _netns.read_sysctl(key) for key in FORWARDING}
                # The fabric only switches frames; it has no addresses of its own.
                for conf in ("all", "default"):
                    _netns.write_sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "1")
            self._sock = _rtnl.open_socket(self._fd)
        bridges = _rtnl.Batch(self._sock)
        for network in self.topology.networks.values():
            index = self._bridges[network.name] = FIRST_INDEX + len(self._bridges)
            what = f"bridge for network {network.name}"
            bridges.add(
                _rtnl.RTM_NEWLINK, _rtnl.CREATE, _rtnl.new_bridge(index, network.name), None, what
            )
        bridges.commit()

    async def wire_all(
        self, hosts: list[tuple[Host, str]], on_wired: Callable[[], None] | None = None
    ) -> None:
        """Plug every host into its networks and configure it (addresses, routes, sysctls).

        The first failure is raised (a BackendError naming the host and the step); when
        cancelled, the worker stops after its current group and is waited for.
        """
        assert self._sock is not None, "build() first"
        self._stop.clear()
        self._idle.clear()
        loop = asyncio.get_running_loop()

        def wired(count: int) -> None:  # on the worker thread
            # Once a group: each wake-up of the loop from here costs the loop thread a
            # turn, and a thousand of them showed in the profile of star1000.
            if on_wired is not None:
                loop.call_soon_threadsafe(_repeat, on_wired, count)

        work = asyncio.ensure_future(asyncio.to_thread(self._wire_groups, hosts, wired))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            self._stop.set()
            with contextlib.suppress(Exception):
                await work
            raise

    def _wire_groups(self, hosts: list[tuple[Host, str]], wired: Callable[[int], None]) -> None:
        try:
            self._wire_groups_until_stopped(hosts, wired)
        finally:
            self._idle.set()

    def _wire_groups_until_stopped(
        self, hosts: list[tuple[Host, str]], wired: Callable[[int], None]
    ) -> None:
        for start in range(0, len(hosts), GROUP):
            if self._stop.is_set():
                return
            with contextlib.ExitStack() as stack:
                group = []
                for host, path in hosts[start : start + GROUP]:
                    with _os_errors(host.name, f"open namespace {path}"):
                        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    stack.callback(os.close, fd)
                    group.append((host, path, fd))
                self._plug([(host, fd) for host, _path, fd in group])
                for host, path, fd in group:
                    self._configure(host, path, fd)
                wired(len(group))

    def _plug(self, group: list[tuple[Host, int]]) -> None:
        """The fabric's round: a veth pair per interface, host ends in their namespaces."""
        assert self._sock is not None
        veths = _rtnl.Batch(self._sock)
        for host, fd in group:
            for number, interface in enumerate(host.interfaces):
                self._ports += 1
                body = _rtnl.new_veth(
                    FIRST_INDEX + len(self._bridges) + self._ports,
                    naming.fabric_port(self._ports),
                    self._bridges[interface.network],
                    f"{self.lab_id}:{host.name}:{interface.ifname}",
                    FIRST_INDEX + number,
                    interface.ifname,
                    fd,
                )
                what = f"veth for {interface.ifname}"
                veths.add(_rtnl.RTM_NEWLINK, _rtnl.CREATE, body, host.name, what)
        veths.commit()

    def _configure(self, host: Host, path: str, fd: int) -> None:
        """The host's round, on its own socket: links up, addresses, routes; sysctls."""
        with _os_errors(host.name, "netlink socket"):
            sock = _rtnl.open_socket(fd)
        with sock:
            batch = _rtnl.Batch(sock)
            new, change = _rtnl.CREATE, _rtnl.CHANGE
            batch.add(
                _rtnl.RTM_NEWLINK, change, _rtnl.set_up(_rtnl.LOOPBACK_INDEX), host.name, "loopback"
            )
            for number, interface in enumerate(host.interfaces):
                index = FIRST_INDEX + number
                what = f"configure {interface.ifname}"
                batch.add(_rtnl.RTM_NEWLINK, change, _rtnl.set_up(index), host.name, what)
                for address in (interface.address, interface.address6):
                    if address is not None:
                        body = _rtnl.new_address(index, address)
                        batch.add(_rtnl.RTM_NEWADDR, new, body, host.name, what)
            for route in host.routes:
                what = f"route to {route.to} via {route.via}"
                body = _rtnl.new_route(route.to, route.via)
                batch.add(_rtnl.RTM_NEWROUTE, new, body, host.name, what)
            batch.commit()
        values = _sysctls(host)
        if _netns.netns_path(naming.host_netns(self.lab_id, host.name)) == path:
            # Made by the netns backend for this lab moments ago, as fresh as the fabric.
            values = {k: v for k, v in values.items() if self._fresh.get(k) != v}
        with _os_errors(host.name, "sysctls"), _netns.entered(fd):
            for key, value in values.items():
                _netns.write_sysctl(key, value)

    async def close(self) -> None:
        """Drop our handles; the namespace itself goes with the lab's ledger."""
        # A cancelled bring-up may have left the worker finishing its group.
        if not self._idle.is_set():
            await asyncio.to_thread(self._idle.wait)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def _repeat(step: Callable[[], None], count: int) -> None:
    for _ in range(count):
        step()


def _sysctls(host: Host) -> dict[str, str]:
    # Forwarding is always set: a new namespace may inherit the root's setting
    # (net.core.devconf_inherit_init_net), and a host that forwards by accident lies.
    forwarding = "1" if host.forwarding else "0"
    values: dict[str, Any] = {key: forwarding for key in FORWARDING}
    values.update(LAB_DEFAULTS)
    values.update(host.sysctls)
    return {key: str(value) for key, value in values.items()}


async def wire_all(
    fabric: Fabric, hosts: list[tuple[Host, str]], on_wired: Callable[[], None] | None = None
) -> None:
    """Wire hosts; the first failure is raised. `on_wired` is called on the event loop
    once per host wired (progress reporting)."""
    await fabric.wire_all(hosts, on_wired)
