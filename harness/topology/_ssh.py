"""Checks for hosts that are existing machines reached over SSH (`ssh:` in the file).

Such a host is not made by the lab: netharness changes nothing on it but a temporary
directory, so what the file may say about it is limited to how to reach it and the
addresses it already has. Everything that would configure it is refused here, before
anything is touched.
"""

from __future__ import annotations

import os
from typing import Any

from harness.topology._paths import Path
from harness.topology._raw import RawHost, RawSsh
from harness.topology.model import SshTarget

# Keys that configure a host; an ssh host is configured by its owner, not by a lab.
_CONFIGURING = {
    "routes": "routes",
    "forwarding": "forwarding",
    "sysctls": "sysctls",
    "nft": "nftables rules",
    "firewall": "firewall",
}


def is_ssh_host(raw: RawHost, written: Any) -> bool:
    """Whether the host is meant as an ssh host (its `ssh:` block may have been cut)."""
    return (
        raw.ssh is not None
        or raw.backend == "ssh"
        or (isinstance(written, dict) and "ssh" in written)
    )


def ssh_problems(name: str, raw: RawHost, written: Any) -> list[tuple[Path, str, str, bool]]:
    """(path, message, fix, at_key) for everything an ssh host may not say."""
    base: Path = ("hosts", name)
    found: list[tuple[Path, str, str, bool]] = []
    has_block = isinstance(written, dict) and "ssh" in written
    if "backend" in raw.model_fields_set and raw.backend != "ssh" and has_block:
        found.append(
            (
                (*base, "backend"),
                f"host {name} has an `ssh:` block but backend {raw.backend!r}",
                "remove `backend:` (an `ssh:` block means backend ssh) or the `ssh:` block",
                False,
            )
        )
    if raw.backend == "ssh" and not has_block:
        found.append(
            (
                (*base, "backend"),
                f"backend ssh needs to know how to reach host {name}",
                "add `ssh: {address: <name or address of the machine>}`",
                False,
            )
        )
    for key, what in _CONFIGURING.items():
        if key in raw.model_fields_set and is_ssh_host(raw, written):
            found.append(
                (
                    (*base, key),
                    f"{name} is an existing machine reached over SSH: netharness does not "
                    f"change its {what}",
                    f"set that up on the machine itself and remove `{key}:` here",
                    True,
                )
            )
    if raw.run and is_ssh_host(raw, written):
        found.append(
            (
                (*base, "run"),
                f"{name} is an existing machine reached over SSH: netharness starts no "
                "processes on it",
                "start them on the machine itself and remove `run:` here",
                True,
            )
        )
    return found


def existing_networks(hosts: dict[str, RawHost], written: Any) -> set[str]:
    """Networks only ssh hosts are on: real networks the lab does not make, so their
    subnets need not come from the lab ranges."""
    written = written if isinstance(written, dict) else {}
    on: dict[str, list[bool]] = {}
    for name, raw in hosts.items():
        ssh = is_ssh_host(raw, written.get(name))
        for network in raw.networks:
            on.setdefault(network, []).append(ssh)
    return {network for network, kinds in on.items() if all(kinds)}


def ssh_target(ssh: RawSsh, filename: str) -> SshTarget:
    """The resolved `ssh:` block; relative paths will be taken from the file's folder."""
    folder = os.getcwd() if filename.startswith("<") else os.path.dirname(os.path.abspath(filename))
    return SshTarget(ssh.address, ssh.port, ssh.user, ssh.key, ssh.known_hosts, folder)
