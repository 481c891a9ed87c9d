"""Address arithmetic for topologies: lab ranges, usable host addresses, allocation."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

Address = IPv4Address | IPv6Address
Subnet = IPv4Network | IPv6Network

#: Labs only ever use these ranges, so they never take a real network's addresses.
LAB_RANGES: dict[int, tuple[Subnet, ...]] = {
    4: (IPv4Network("10.0.0.0/8"), IPv4Network("198.18.0.0/15")),
    6: (IPv6Network("fd00::/8"), IPv6Network("2001:db8::/32")),
}
RANGES_TEXT = (
    "labs use only 10.0.0.0/8 and 198.18.0.0/15 (IPv4) and fd00::/8 and 2001:db8::/32 "
    "(IPv6), so they never take a real network's addresses"
)


def in_lab_ranges(subnet: Subnet) -> bool:
    """Whether `subnet` lies inside one of the ranges labs may use."""
    return any(
        subnet.version == allowed.version and subnet.subnet_of(allowed)  # type: ignore[arg-type]
        for allowed in LAB_RANGES[subnet.version]
    )


def host_count(subnet: Subnet) -> int:
    """Usable host addresses: not the network address, nor IPv4's broadcast."""
    return subnet.num_addresses - (2 if subnet.version == 4 else 1)


def special(address: Address, subnet: Subnet) -> str:
    """What reserved address of `subnet` this is ("" if an ordinary host address)."""
    if address == subnet.network_address:
        return "network address" if subnet.version == 4 else "subnet-router anycast address"
    if subnet.version == 4 and address == subnet.broadcast_address:
        return "broadcast address"
    return ""


def host_span(subnet: Subnet) -> str:
    """The usable host addresses of `subnet`, as "first to last" for messages."""
    first = subnet.network_address + 1
    last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
    return f"{first} to {last}"


def free_addresses(subnet: Subnet, taken: set[Address]) -> Iterator[Address]:
    """Host addresses of `subnet` not in `taken`, lowest first (::1, ::2... for IPv6)."""
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - (1 if subnet.version == 4 else 0)
    number = first
    while number <= last:
        address = ip_address(number) if subnet.version == 4 else IPv6Address(number)
        if address not in taken:
            yield address
        number += 1


def sort_key(address: Address) -> tuple[int, int]:
    """IPv4 before IPv6, then numerically."""
    return address.version, int(address)
