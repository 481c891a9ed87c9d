"""The raw limit: a topology's namespaces, bridges, veths, addresses and routes made with
batched netlink requests and nothing else: no agents, no ledger, no fork server.

This is the floor the harness is measured against: the same kernel objects as a lab of
the netns backend, each request packed once (harness.core._rtnl) and sent with the others for
its namespace in one system call per chunk, in the fewest rounds the kernel allows (the
fabric makes the veths, then each host configures its ends).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from harness.core import _netns, _rtnl
from harness.topology import Topology

FIRST_INDEX = 1000


@contextmanager
def raw_lab(topology: Topology, prefix: str) -> Iterator[None]:
    """Make the topology's objects; remove their namespaces on exit."""
    with ExitStack() as stack:
        fds = {}
        for name in ["", *topology.hosts]:
            path = _netns.netns_path(f"{prefix}-{name}" if name else prefix)
            fds[name] = _netns.create(os.path.basename(path))
            stack.callback(_netns.remove, path)
            stack.callback(os.close, fds[name])
        with _netns.entered(fds[""]):  # as the lab's: no addresses, no IPv6 in the fabric
            for conf in ("all", "default"):
                _netns.write_sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "1")
        fabric = _rtnl.Batch(stack.enter_context(_rtnl.open_socket(fds[""])))
        bridges: dict[str, int] = {}
        for network in topology.networks.values():
            bridges[network.name] = FIRST_INDEX + len(bridges)
            body = _rtnl.new_bridge(bridges[network.name], network.name)
            fabric.add(_rtnl.RTM_NEWLINK, _rtnl.CREATE, body, None, network.name)
        inside: dict[str, _rtnl.Batch] = {}
        port = FIRST_INDEX + len(bridges)
        for host in topology.hosts.values():
            sock: socket.socket = stack.enter_context(_rtnl.open_socket(fds[host.name]))
            batch = inside[host.name] = _rtnl.Batch(sock)
            lo = _rtnl.set_up(_rtnl.LOOPBACK_INDEX)
            batch.add(_rtnl.RTM_NEWLINK, _rtnl.CHANGE, lo, host.name, "lo")
            for number, interface in enumerate(host.interfaces):
                port += 1
                index = FIRST_INDEX + number
                body = _rtnl.new_veth(
                    port,
                    f"p{port}",
                    bridges[interface.network],
                    host.name,
                    index,
                    interface.ifname,
                    fds[host.name],
                )
                fabric.add(_rtnl.RTM_NEWLINK, _rtnl.CREATE, body, host.name, "veth")
                batch.add(_rtnl.RTM_NEWLINK, _rtnl.CHANGE, _rtnl.set_up(index), host.name, "up")
                for value in (interface.address, interface.address6):
                    if value is not None:
                        body = _rtnl.new_address(index, value)
                        batch.add(_rtnl.RTM_NEWADDR, _rtnl.CREATE, body, host.name, "address")
            for route in host.routes:
                body = _rtnl.new_route(route.to, route.via)
                batch.add(_rtnl.RTM_NEWROUTE, _rtnl.CREATE, body, host.name, "route")
        fabric.commit()
        for batch in inside.values():
            batch.commit()
        for host in topology.hosts.values():
            if host.forwarding:  # a router has to forward, as in Mininet's own routers
                with _netns.entered(fds[host.name]):
                    _netns.write_sysctl("net.ipv4.ip_forward", "1")
        yield
