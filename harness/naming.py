"""Every name a lab gives to something it makes, in one place.

    nh-<lab>            the lab's fabric namespace (bridges, fabric ends of veths)
    nh-<lab>-<host>     a host's namespace; its interfaces are named by the topology
    <network>           a bridge, inside the lab's own fabric namespace
    p<n>                the fabric end of the n-th veth, inside the fabric namespace

Lab ids are 6 characters, so namespace names stay short, and interface names only have
to be unique inside namespaces the lab owns: two labs of one topology never collide.
"""

from __future__ import annotations

import re

IFNAMSIZ = 15  # Linux interface names: at most 15 bytes
NETNS_PREFIX = "nh-"
HOST_NAME_RE = r"[a-z][a-z0-9_-]*"


def fabric_netns(lab_id: str) -> str:
    return f"{NETNS_PREFIX}{lab_id}"


def host_netns(lab_id: str, host: str) -> str:
    return f"{NETNS_PREFIX}{lab_id}-{host}"


def fabric_port(index: int) -> str:
    name = f"p{index}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"too many ports for one fabric: {index}")
    return name


def is_lab_netns(lab_id: str, name: str) -> bool:
    """Whether `name` is a namespace name lab `lab_id` could have made."""
    pattern = rf"{NETNS_PREFIX}{re.escape(lab_id)}(-{HOST_NAME_RE})?"
    return re.fullmatch(pattern, name) is not None
