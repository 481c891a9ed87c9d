"""The resolved topology: immutable, fully checked, every address decided.

Nothing here is "auto" or "default" any more: automatic addresses have been assigned,
`to: default` routes carry 0.0.0.0/0 or ::/0, and every host has its backend. Mappings
are read-only views that keep the order of the file.
"""

from __future__ import annotations

import os
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
BACKEND_NAMES: tuple[str, ...] = ("netns", "docker", "ssh")
DEFAULT_BACKEND = BACKEND_NAMES[0]
#: The process name of a docker host's own main process (its image's entrypoint and cmd),
#: for `process:` and `owner:`; no `run:` program may take it.
MAIN_PROCESS = "main"


@dataclass(frozen=True)
class Network:
    """One L2 segment (a bridge in the lab's fabric); at least one subnet is set."""

    name: str
    subnet: IPv4Network | None
    subnet6: IPv6Network | None
    capture: bool = False  # record every frame on the network's bridge to a pcap


@dataclass(frozen=True)
class Interface:
    """A host's attachment to a network; addresses carry the subnet's prefix length."""

    network: str
    ifname: str  # the interface name inside the host; the network name unless set
    address: IPv4Interface | None
    address6: IPv6Interface | None
    capture: bool = False  # record this interface's frames (its fabric end) to a pcap


@dataclass(frozen=True)
class Route:
    """A static route; `to: default` is resolved to 0.0.0.0/0 or ::/0 by `via`'s family."""

    to: IPv4Network | IPv6Network
    via: IPv4Address | IPv6Address


@dataclass(frozen=True)
class Service:
    """A listener of the host; `address` None means every address.

    `process` None: the host agent opens it at bring-up. Otherwise the name of a `run:`
    program of the host (or "main", a docker host's own main process) that listens there
    itself: bring-up waits for it, and `check` verifies that process owns the socket.
    """

    proto: Literal["tcp", "udp"]
    port: int
    address: str | None
    process: str | None = None


@dataclass(frozen=True)
class Ready:
    """A program is ready once a socket of the host listens on `proto`/`port` (TCP in
    LISTEN, UDP bound), seen through sock_diag."""

    proto: Literal["tcp", "udp"]
    port: int


@dataclass(frozen=True)
class Program:
    """One `run:` entry: a process of the user's started in the host at bring-up, after
    its networks, routes, sysctls, firewall and services, in file order.

    `argv` is the command split as a shell would (no shell runs it); `user` None runs it
    as the backend's default user (root for netns hosts, the image's user for docker
    hosts); `cwd` None is the backend's default directory.
    """

    name: str
    argv: tuple[str, ...]
    user: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    ready: tuple[Ready, ...] = ()
    ready_timeout: float = 10.0  # seconds, for every `ready` socket together


RuleProto = Literal["tcp", "udp", "icmp", "icmpv6", "any"]
RejectWith = Literal["reset", "port-unreachable", "admin-prohibited", "host-unreachable"]
Subnet = IPv4Network | IPv6Network


@dataclass(frozen=True)
class FirewallRule:
    """One rule of a chain, resolved: names in from/to became their subnets or addresses.

    Empty `ports`, `sources` or `destinations` mean any. `family` None means both, unless
    the protocol or the addresses name one. `reject_with` None picks the closest thing to
    "closed": a TCP reset for TCP, ICMP port unreachable otherwise.
    """

    action: Literal["allow", "reject", "drop"]
    proto: RuleProto
    ports: tuple[tuple[int, int], ...]  # inclusive ranges, sorted, merged
    sources: tuple[Subnet, ...]
    destinations: tuple[Subnet, ...]
    reject_with: RejectWith | None
    family: Literal[4, 6] | None
    line: int  # 1-based position of the rule in the file
    column: int


@dataclass(frozen=True)
class Chain:
    """One hook of a host's firewall; `stateful` adds the conntrack rules first."""

    policy: Literal["accept", "drop"]
    rules: tuple[FirewallRule, ...]
    stateful: bool = True


@dataclass(frozen=True)
class Firewall:
    """A host's policy by hook; a hook that is None is not filtered at all."""

    input: Chain | None = None
    output: Chain | None = None
    forward: Chain | None = None

    def chains(self) -> dict[str, Chain]:
        """The hooks that are set, by name, in input, output, forward order."""
        named = {"input": self.input, "output": self.output, "forward": self.forward}
        return {name: chain for name, chain in named.items() if chain is not None}


ProbeState = Literal["open", "closed", "filtered", "open|filtered"]


@dataclass(frozen=True)
class Expectation:
    """One cell of the truth table the topology promises (one entry of `expect:` expands
    to one Expectation per source, target and port)."""

    source: str  # host name
    target: str  # host name
    proto: Literal["tcp", "udp"]
    port: int
    state: ProbeState
    family: Literal[4, 6]
    address: str | None  # the target address to probe; None: the probe layer picks one
    line: int  # 1-based line and column of the entry in the file
    column: int
    # A process name of the target (`run:` name or "main"): the probe's connection must
    # be accepted by that process, seen on the server side through sock_diag.
    owner: str | None = None


@dataclass(frozen=True)
class SshTarget:
    """How to reach an existing machine (`ssh:` in the file), paths as written.

    None means what ssh does: ~/.ssh/config's User and IdentityFile for `address` (which
    may be a Host alias there), else the controller's user name, keys from ssh-agent and
    ~/.ssh/id_*, ~/.ssh/known_hosts. `port` 22 gives way to the config's Port.
    `key_file` and `known_hosts_file` are the paths to open: ~ expanded, relative ones
    taken from `folder`, the topology file's folder (not part of the topology's meaning:
    equal topologies may come from different folders).
    """

    address: str  # a host name or an IP address to connect to
    port: int = 22
    user: str | None = None
    key: str | None = None  # a private key file
    known_hosts: str | None = None  # checked in addition to ~/.ssh/known_hosts
    folder: str = field(default=".", compare=False)

    @property
    def key_file(self) -> str | None:
        return self._resolve(self.key)

    @property
    def known_hosts_file(self) -> str | None:
        return self._resolve(self.known_hosts)

    def _resolve(self, path: str | None) -> str | None:
        if path is None:
            return None
        return os.path.normpath(os.path.join(self.folder, os.path.expanduser(path)))


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
    image: str | None = None  # docker hosts: the image (None: netharness/host:<version>)
    firewall: Firewall | None = None  # the policy, applied before `nft`
    ssh: SshTarget | None = None  # set exactly when backend is "ssh"
    run: tuple[Program, ...] = ()  # the user's processes, started in this order
    # docker hosts: replaces the image's CMD (the ENTRYPOINT stays), as `docker run IMAGE
    # ARGS` does; None: the image's own
    command: tuple[str, ...] | None = None

    def program(self, name: str) -> Program:
        """The `run:` entry called `name`; KeyError if there is none."""
        for program in self.run:
            if program.name == name:
                return program
        raise KeyError(f"host {self.name} runs no program {name!r}")

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
    expectations: tuple[Expectation, ...] = ()
