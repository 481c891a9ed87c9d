"""The resolved topology: immutable, fully checked, every address decided.

Nothing here is "auto" or "default" any more: automatic addresses have been assigned,
`to: default` routes carry 0.0.0.0/0 or ::/0, and every host has its backend. Mappings
are read-only views that keep the order of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Literal

#: Backends a host may name in `backend:`; the first is the default.
BACKEND_NAMES: tuple[str, ...] = ("netns",)
DEFAULT_BACKEND = BACKEND_NAMES[0]


@dataclass(frozen=True)
class Network:
    """One L2 segment (a bridge in the lab's fabric); at least one subnet is set."""

    name: str
    subnet: IPv4Network | None
    subnet6: IPv6Network | None


@dataclass(frozen=True)
class Interface:
    """A host's attachment to a network; addresses carry the subnet's prefix length."""

    network: str
    ifname: str  # the interface name inside the host; the network name unless set
    address: IPv4Interface | None
    address6: IPv6Interface | None


@dataclass(frozen=True)
class Route:
    """A static route; `to: default` is resolved to 0.0.0.0/0 or ::/0 by `via`'s family."""

    to: IPv4Network | IPv6Network
    via: IPv4Address | IPv6Address


@dataclass(frozen=True)
class Service:
    """A listener opened when the lab comes up; `address` None means every address."""

    proto: Literal["tcp", "udp"]
    port: int
    address: str | None


@dataclass(frozen=True)
class Host:
    """One host: its interfaces in file order, routes, forwarding, sysctls and services.

    `sysctls` maps a key such as "net.ipv4.ip_local_port_range" to the exact string to
    write under /proc/sys, in an order the kernel accepts when written one after another.
    """

    name: str
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...]
    forwarding: bool
    sysctls: Mapping[str, str]
    backend: str
    services: tuple[Service, ...]
    nft: str | None = None  # raw nftables script applied in the host at bring-up

    def interface(self, network: str) -> Interface:
        """The interface of this host on `network`; KeyError if it is not connected."""
        for interface in self.interfaces:
            if interface.network == network:
                return interface
        connected = ", ".join(i.network for i in self.interfaces) or "none"
        raise KeyError(f"host {self.name} is not on network {network} (connected: {connected})")


@dataclass(frozen=True)
class Topology:
    """A whole topology: networks and hosts by name, in file order."""

    name: str
    networks: Mapping[str, Network]
    hosts: Mapping[str, Host]
    source: str  # the file it was read from, or "<string>"
    # The YAML it was parsed from: a running lab keeps it, so `Lab.attach` sees the very
    # topology the lab was built from even if the file changed since.
    text: str = field(default="", repr=False, compare=False)
