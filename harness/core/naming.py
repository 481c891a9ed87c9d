"""Every name a lab gives to something it makes, in one place.

    nh-<lab>            the lab's fabric namespace (bridges, fabric ends of veths)
    nh-<lab>-<host>     a host's namespace; its interfaces are named by the topology
    <network>           a bridge, inside the lab's own fabric namespace
    p<n>                the fabric end of the n-th veth, inside the fabric namespace

Lab ids are 6 characters, so namespace names stay short, and interface names only have
to be unique inside namespaces the lab owns: two labs of one topology never collide.
"""

from __future__ import annotations

from hostagent.reaper import HOST_NAME_RE, NETNS_PREFIX, is_lab_netns

__all__ = [
    "HOST_NAME_RE",
    "NETNS_PREFIX",
    "fabric_netns",
    "fabric_port",
    "host_netns",
    "is_lab_netns",
]

IFNAMSIZ = 15  # Linux interface names: at most 15 bytes


def fabric_netns(lab_id: str) -> str:
    return f"{NETNS_PREFIX}{lab_id}"


def host_netns(lab_id: str, host: str) -> str:
    return f"{NETNS_PREFIX}{lab_id}-{host}"


def fabric_port(index: int) -> str:
    name = f"p{index}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"too many ports for one fabric: {index}")
    return name
