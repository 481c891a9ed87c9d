"""Semantic checks and resolution: from a structurally valid file to a `Topology`.

Every check appends a `Problem` and carries on, so one run reports everything. A check
whose input is already known to be wrong (reported earlier, or cut out by the structural
pass) is skipped rather than reported twice in another form.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from types import MappingProxyType

from harness.errors import Problem
from harness.topology import _sysctls
from harness.topology._addresses import (
    RANGES_TEXT,
    Address,
    Subnet,
    free_addresses,
    host_count,
    host_span,
    in_lab_ranges,
    sort_key,
    special,
)
from harness.topology._expect import check_expectations
from harness.topology._paths import Path, format_path, printable
from harness.topology._policy import check_firewall
from harness.topology._programs import Runs, check_runs, unknown_process
from harness.topology._raw import (
    HOST_NAME_MAX,
    IFNAME_MAX,
    NAME_PATTERN,
    RESERVED_IFNAMES,
    TOPOLOGY_NAME_MAX,
    RawAttachment,
    RawHost,
    RawTopology,
)
from harness.topology._ssh import existing_networks, is_ssh_host, ssh_problems, ssh_target
from harness.topology._structure import Damage
from harness.topology._yaml import Document
from harness.topology.model import (
    BACKEND_NAMES,
    Expectation,
    Firewall,
    Host,
    Interface,
    Network,
    Route,
    Service,
    Topology,
)

_NAME = re.compile(NAME_PATTERN)
# A docker image reference, loosely: [registry/]name[:tag][@digest], no spaces.
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$", re.IGNORECASE)
_KEY = {4: "subnet", 6: "subnet6"}
_ADDRESS_KEY = {4: "address", 6: "address6"}
_EXAMPLE_SUBNET = {4: "10.0.1.0/24", 6: "fd00:1::/64"}


@dataclass
class _Net:
    name: str
    subnets: dict[int, Subnet] = field(default_factory=dict)  # family -> subnet
    bad: set[int] = field(default_factory=set)  # families given but unusable (reported)


@dataclass
class _Attachment:
    network: str
    path: Path
    ifname: str
    ifname_path: Path
    static: dict[int, tuple[Address, Path]] = field(default_factory=dict)
    auto: dict[int, Path] = field(default_factory=dict)  # families to assign, and where
    resolved: dict[int, Address] = field(default_factory=dict)
    capture: bool = False


@dataclass
class _Host:
    name: str
    raw: RawHost
    attachments: list[_Attachment] = field(default_factory=list)
    uncertain: bool = False  # some of its addresses are unknown: skip checks that need all
    ssh: bool = False  # an existing machine: its addresses are given, never assigned


class Checker:
    """Runs every semantic check over a raw topology and builds the resolved model."""

    def __init__(self, raw: RawTopology, damage: Damage, doc: Document, filename: str) -> None:
        self.raw = raw
        self.damage = damage
        self.doc = doc
        self.filename = filename
        self.problems: list[Problem] = []
        self.nets: dict[str, _Net] = {}
        self.hosts: dict[str, _Host] = {}
        self.sysctls: dict[str, dict[str, str]] = {}  # host -> resolved, in write order
        self.firewalls: dict[str, Firewall | None] = {}
        self.runs: dict[str, Runs] = {}  # host -> its programs and the names that refer to them
        self.expectations: tuple[Expectation, ...] = ()

    def problem(self, path: Path, message: str, fix: str, *, at_key: bool = False) -> None:
        line, column = self.doc.key_pos(path) if at_key else self.doc.value_pos(path)
        message, fix = printable(message), printable(fix)
        self.problems.append(Problem(self.filename, line, column, format_path(path), message, fix))

    def run(self) -> Topology | None:
        """Check everything; the resolved topology if nothing at all was wrong."""
        if not self.damage.name:
            self.check_name(("name",), self.raw.name, "topology", TOPOLOGY_NAME_MAX)
        self.check_networks()
        self.check_hosts()
        self.assign_addresses()
        for host in self.hosts.values():
            self.runs[host.name] = check_runs(self, host)
            self.check_routes(host)
            self.check_services(host)
            self.firewalls[host.name] = check_firewall(self, host.name)
        self.expectations = check_expectations(self)
        if self.problems:
            return None
        return self.build()

    # -- names ---------------------------------------------------------------------------

    def check_image(self, path: Path, raw: RawHost) -> None:
        image = raw.image or ""
        if raw.backend != "docker":
            self.problem(
                (*path, "image"),
                f"image is only used by docker hosts, and this host's backend is {raw.backend}",
                "add `backend: docker` to the host, or remove image",
            )
        elif not _IMAGE.match(image):
            self.problem(
                (*path, "image"),
                f"image {image!r} is not an image reference",
                "name a local image such as `netharness/host:0.1.0` or `debian:bookworm`",
            )

    def check_name(
        self,
        path: Path,
        name: str,
        what: str,
        max_length: int,
        *,
        at_key: bool = False,
        is_ifname: bool = False,
    ) -> bool:
        if not _NAME.match(name):
            fix = "use lowercase letters, digits, - and _, starting with a letter"
            better = re.sub(r"[^a-z0-9_-]+", "-", name.lower())
            if _NAME.match(better) and len(better) <= max_length:
                fix += f", e.g. {better!r}"
            self.problem(path, f"{what} name {name!r} is not valid", fix, at_key=at_key)
            return False
        if len(name.encode()) > max_length:
            why = " (Linux limits interface names to 15)" if is_ifname else ""
            self.problem(
                path,
                f"{what} name {name!r} has {len(name)} characters, more than {max_length}{why}",
                f"use a name of at most {max_length} characters",
                at_key=at_key,
            )
            return False
        if is_ifname and name in RESERVED_IFNAMES:
            self.problem(
                path,
                f"{what} name {name!r} is reserved: lo, all and default exist in every host",
                "choose another name" + (", or set ifname where it is used" if at_key else ""),
                at_key=at_key,
            )
            return False
        return True

    # -- networks ------------------------------------------------------------------------

    def check_networks(self) -> None:
        placed: list[tuple[str, Subnet, Path]] = []
        existing = existing_networks(self.raw.hosts, self.doc.data.get("hosts"))
        for name, raw in self.raw.networks.items():
            path: Path = ("networks", name)
            self.check_name(path, name, "network", IFNAME_MAX, at_key=True, is_ifname=True)
            net = _Net(name)
            self.nets[name] = net
            if name in self.damage.incomplete_networks:  # a subnet key may have been cut
                net.bad.update(f for f, t in ((4, raw.subnet), (6, raw.subnet6)) if t is None)
            elif raw.subnet is None and raw.subnet6 is None:
                self.problem(
                    path,
                    f"network {name} has no subnet",
                    "add `subnet:` (IPv4, e.g. 10.0.9.0/24) and/or `subnet6:` "
                    "(IPv6, e.g. fd00:9::/64)",
                    at_key=True,
                )
                net.bad.update((4, 6))
                continue
            for family, text in ((4, raw.subnet), (6, raw.subnet6)):
                if text is None:
                    continue
                subnet_path = (*path, _KEY[family])
                subnet = self.parse_subnet(text, family, subnet_path, name in existing)
                if subnet is None:
                    net.bad.add(family)
                    continue
                net.subnets[family] = subnet
                for other, other_subnet, other_path in placed:
                    if subnet.version == other_subnet.version and subnet.overlaps(other_subnet):
                        line = self.doc.value_pos(other_path)[0]
                        self.problem(
                            subnet_path,
                            f"{subnet} overlaps {other_subnet} of network {other} (line {line})",
                            "give every network its own, non-overlapping range",
                        )
                        break
                placed.append((name, subnet, subnet_path))

    def parse_subnet(
        self, text: str, family: int, path: Path, existing: bool = False
    ) -> Subnet | None:
        key = _KEY[family]
        example = _EXAMPLE_SUBNET[family]
        if "/" not in text:
            try:
                _unscoped_address(text)
            except ValueError:
                self.problem(path, f"{text!r} is not a subnet", f"write it as CIDR, e.g. {example}")
            else:
                self.problem(
                    path,
                    f"{text} is an address, not a subnet",
                    f"add the prefix length, e.g. {example}",
                )
            return None
        try:
            subnet = _unscoped_network(text)
        except ValueError:
            self.problem(path, f"{text!r} is not a subnet", f"write it as CIDR, e.g. {example}")
            return None
        if subnet.version != family:
            right = _KEY[subnet.version]
            self.problem(
                path,
                f"{text} is an IPv{subnet.version} subnet, but {key} is for IPv{family}",
                f"put it under {right}",
            )
            return None
        if ip_interface(text).ip != subnet.network_address:
            self.problem(path, f"{text} has host bits set", f"did you mean {subnet}?")
            return None
        if not in_lab_ranges(subnet) and not existing:  # existing: only ssh hosts on it
            self.problem(path, f"{subnet} is outside the address ranges for labs", RANGES_TEXT)
        if host_count(subnet) < 1:
            self.problem(
                path,
                f"{subnet} leaves no address for hosts",
                f"use a shorter prefix, e.g. /{24 if family == 4 else 64}",
            )
            return None
        return subnet

    # -- hosts and their addresses -------------------------------------------------------

    def check_hosts(self) -> None:
        hosts = self.doc.data.get("hosts")
        if isinstance(hosts, dict) and not hosts:
            self.problem(
                ("hosts",),
                "there are no hosts",
                "add at least one host, e.g. `h1: {networks: {lan: auto}}`",
            )
        seen: dict[Address, tuple[str, str]] = {}  # address -> (host, network)
        for name, raw in self.raw.hosts.items():
            path: Path = ("hosts", name)
            self.check_name(path, name, "host", HOST_NAME_MAX, at_key=True)
            host = _Host(name, raw, uncertain=name in self.damage.uncertain_hosts)
            self.hosts[name] = host
            written = self.doc.data["hosts"].get(name)
            host.ssh = is_ssh_host(raw, written)
            for where, message, fix, at_key in ssh_problems(name, raw, written):
                self.problem(where, message, fix, at_key=at_key)
            if "backend" in raw.model_fields_set and raw.backend not in BACKEND_NAMES:
                self.problem(
                    (*path, "backend"),
                    f"unknown backend {raw.backend!r}",
                    _closest(raw.backend, BACKEND_NAMES, "valid backends"),
                )
            if raw.image is not None:
                self.check_image(path, raw)
            ifnames: dict[str, str] = {}
            for network, value in raw.networks.items():
                attachment = self.attachment(host, network, value)
                if attachment is None:
                    continue
                host.attachments.append(attachment)
                if attachment.ifname in ifnames:
                    self.problem(
                        attachment.ifname_path,
                        f"interface name {attachment.ifname!r} is already used for network "
                        f"{ifnames[attachment.ifname]} in this host",
                        "set a different `ifname:` for one of them",
                    )
                ifnames[attachment.ifname] = network
                for address, where in attachment.static.values():
                    if address in seen:
                        owner, on = seen[address]
                        self.problem(
                            where,
                            f"{address} is already the address of {owner} on {on}",
                            "give every interface its own address, or write auto",
                        )
                    else:
                        seen[address] = (name, network)
            self.check_sysctls(host)

    def attachment(
        self, host: _Host, network: str, value: str | RawAttachment | None
    ) -> _Attachment | None:
        path: Path = ("hosts", host.name, "networks", network)
        if self.damage.all_networks or network in self.damage.networks:
            host.uncertain = True  # reported already: the network itself is broken
            return None
        net = self.nets.get(network)
        if net is None:
            host.uncertain = True
            defined = list(self.nets)
            fix = (
                _closest(network, defined, "defined networks")
                if defined
                else "no networks are defined: add it under `networks:`"
            )
            self.problem(path, f"network {network!r} is not defined", fix, at_key=True)
            return None
        if net.bad:
            host.uncertain = True
        ifname, ifname_path = network, path
        written: list[tuple[str, Path, int | None]] = []  # text, where, family of the key
        if isinstance(value, str) and value != "auto":
            written.append((value, path, None))
        elif isinstance(value, RawAttachment):
            written += [
                (text, (*path, _ADDRESS_KEY[family]), family)
                for family, text in ((4, value.address), (6, value.address6))
                if text != "auto"
            ]
            if value.ifname is not None:
                ifname, ifname_path = value.ifname, (*path, "ifname")
                self.check_name(ifname_path, ifname, "interface", IFNAME_MAX, is_ifname=True)
        attachment = _Attachment(network, path, ifname, ifname_path)
        attachment.capture = isinstance(value, RawAttachment) and value.capture
        if attachment.capture and host.ssh:
            self.problem(
                (*path, "capture"),
                "an ssh host's interfaces are the machine's own, not wired through the lab's "
                "fabric, so netharness cannot capture them",
                "remove `capture`; capture the network on a lab host's side, or run tcpdump on "
                "the machine",
            )
        static_families: set[int] = set()
        for text, where, family in written:
            address = self.parse_address(text, family, where)
            if address is None:
                host.uncertain = True
                static_families.update([family] if family else [4, 6])
                continue
            static_families.add(address.version)
            if self.fits(address, net, where):
                attachment.static[address.version] = (address, where)
            else:
                host.uncertain = True
        if host.ssh and not written:
            self.problem(
                path,
                f"{host.name} is an existing machine: its address on {network} cannot be auto",
                f"write the address it already has, e.g. `{network}: {_example_address(net)}`",
            )
            host.uncertain = True
        for family in net.subnets:
            if family not in static_families and not host.ssh:
                attachment.auto[family] = path
        return attachment

    def parse_address(
        self, text: str, family: int | None, path: Path, *, fix: str = ""
    ) -> Address | None:
        """Parse an interface address, or a gateway or bind address when `fix` is given."""
        if "/" in text:
            self.problem(
                path,
                f"{text} has a prefix length",
                fix
                or f"write just the address ({text.partition('/')[0]}); "
                "the prefix length comes from the network's subnet",
            )
            return None
        try:
            if "%" in text:
                raise ValueError(text)
            address = ip_address(text)
        except ValueError:
            kind = f"IPv{family} address" if family else "IP address"
            example = {4: "10.0.1.11", 6: "fd00:1::11", None: "10.0.1.11 or fd00:1::11"}[family]
            fix = fix or f"write an address such as {example}, or auto"
            self.problem(path, f"{text!r} is not an {kind}", fix)
            return None
        if family and address.version != family:
            self.problem(
                path,
                f"{text} is an IPv{address.version} address, but {_ADDRESS_KEY[family]} is "
                f"for IPv{family}",
                f"put it under {_ADDRESS_KEY[address.version]}",
            )
            return None
        return address

    def fits(self, address: Address, net: _Net, path: Path) -> bool:
        """Whether a static address belongs on `net`; reports why not."""
        family = address.version
        subnet = net.subnets.get(family)
        if subnet is None:
            if family not in net.bad:
                self.problem(
                    path,
                    f"network {net.name} has no IPv{family} subnet for {address}",
                    f"add `{_KEY[family]}:` to network {net.name}, or remove this address",
                )
            return False
        if address not in subnet:
            self.problem(
                path,
                f"{address} is not in network {net.name}'s subnet {subnet}",
                f"use an address from {host_span(subnet)}",
            )
            return False
        kind = special(address, subnet)
        if kind:
            self.problem(
                path,
                f"{address} is the {kind} of {subnet}",
                f"use an address from {host_span(subnet)}",
            )
            return False
        return True

    def assign_addresses(self) -> None:
        """Give automatic addresses: lowest free first, hosts in file order."""
        on: dict[str, list[tuple[_Host, _Attachment]]] = {name: [] for name in self.nets}
        for host in self.hosts.values():
            for attachment in host.attachments:
                on[attachment.network].append((host, attachment))
        for net in self.nets.values():
            for family, subnet in net.subnets.items():
                wanting = [(h, a) for h, a in on[net.name] if family in a.auto]
                taken = {a.static[family][0] for _, a in on[net.name] if family in a.static}
                free = free_addresses(subnet, taken)
                for index, (host, attachment) in enumerate(wanting):
                    address = next(free, None)
                    if address is None:
                        more = len(wanting) - index - 1
                        extra = f" (and {more} more host{'s' if more > 1 else ''})" if more else ""
                        self.problem(
                            attachment.auto[family],
                            f"network {net.name} has no free IPv{family} address left for "
                            f"{host.name}{extra}",
                            f"use a larger subnet than {subnet}, or fewer hosts",
                        )
                        break
                    attachment.resolved[family] = address
        for host in self.hosts.values():
            for attachment in host.attachments:
                for family, (address, _) in attachment.static.items():
                    attachment.resolved[family] = address

    # -- routes, sysctls, services -------------------------------------------------------

    def check_routes(self, host: _Host) -> None:
        base: Path = ("hosts", host.name, "routes")
        indices = self.damage.indices(base, len(host.raw.routes))
        destinations: dict[Subnet, int] = {}
        for index, route in zip(indices, host.raw.routes, strict=True):
            path = (*base, index)
            via = self.parse_address(
                route.via, None, (*path, "via"), fix="write the gateway's address, e.g. 10.0.1.1"
            )
            if via is None:
                continue
            if route.to == "default":
                to: Subnet = ip_network("0.0.0.0/0" if via.version == 4 else "::/0")
            else:
                parsed = self.parse_destination(route.to, (*path, "to"))
                if parsed is None:
                    continue
                to = parsed
                if to.version != via.version:
                    self.problem(
                        (*path, "via"),
                        f"gateway {via} is IPv{via.version}, but the destination {to} "
                        f"is IPv{to.version}",
                        f"use an IPv{to.version} gateway",
                    )
                    continue
            if to in destinations:
                self.problem(
                    (*path, "to"),
                    f"a route to {to} is already defined (routes[{destinations[to]}])",
                    "keep one route per destination",
                )
            else:
                destinations[to] = index
            if not host.uncertain:
                self.check_gateway(host, to, via, path)

    def parse_destination(self, text: str, path: Path) -> Subnet | None:
        if "/" not in text:
            fix = "write `default` or a network in CIDR form, e.g. 10.0.2.0/24"
            try:
                address = _unscoped_address(text)
            except ValueError:
                self.problem(path, f"{text!r} is not a destination", fix)
            else:
                single = 32 if address.version == 4 else 128
                self.problem(
                    path,
                    f"{text} is an address, not a network",
                    f"write {text}/{single} for this one address, or give the network",
                )
            return None
        try:
            subnet = _unscoped_network(text)
        except ValueError:
            self.problem(
                path,
                f"{text!r} is not a destination",
                "write `default` or a network in CIDR form, e.g. 10.0.2.0/24",
            )
            return None
        if ip_interface(text).ip != subnet.network_address:
            self.problem(path, f"{text} has host bits set", f"did you mean {subnet}?")
            return None
        return subnet

    def check_gateway(self, host: _Host, to: Subnet, via: Address, path: Path) -> None:
        on: list[tuple[_Attachment, Subnet]] = [
            (a, self.nets[a.network].subnets[via.version])
            for a in host.attachments
            if via.version in self.nets[a.network].subnets
        ]
        for attachment, subnet in on:
            if to == subnet:
                self.problem(
                    (*path, "to"),
                    f"{to} is the subnet of network {attachment.network}, which "
                    f"{host.name} is on: it is reached directly",
                    "remove this route",
                )
                return
        where = (*path, "via")
        for attachment, subnet in on:
            if via not in subnet:
                continue
            kind = special(via, subnet)
            if kind:
                self.problem(
                    where,
                    f"gateway {via} is the {kind} of {subnet}",
                    f"use the address of a router on {attachment.network}",
                )
            elif attachment.resolved.get(via.version) == via:
                self.problem(
                    where,
                    f"gateway {via} is {host.name}'s own address on {attachment.network}",
                    f"use the address of another host on {attachment.network}, such as a router",
                )
            return
        if on:
            nets = ", ".join(f"{a.network} ({s})" for a, s in on)
            fix = f"use an address on a network {host.name} is on: {nets}"
        else:
            fix = f"connect {host.name} to a network with an IPv{via.version} subnet first"
        self.problem(where, f"gateway {via} is not on any network {host.name} is on", fix)

    def check_sysctls(self, host: _Host) -> None:
        base: Path = ("hosts", host.name, "sysctls")
        values, findings = _sysctls.check(host.raw.sysctls)
        for key, at_key, message, fix in findings:
            self.problem((*base, key), message, fix, at_key=at_key)
        self.sysctls[host.name] = values

    def check_services(self, host: _Host) -> None:
        base: Path = ("hosts", host.name, "services")
        indices = self.damage.indices(base, len(host.raw.services))
        seen: dict[tuple[str, int, str], int] = {}  # (proto, port, bind address) -> index
        mine = {a for att in host.attachments for a in att.resolved.values()}
        for index, service in zip(indices, host.raw.services, strict=True):
            path = (*base, index)
            if service.process is not None:
                self.check_process(host.name, (*path, "process"), service.process)
            address: str | None = None
            if service.address is not None:
                parsed = self.parse_address(
                    service.address,
                    None,
                    (*path, "address"),
                    fix="write one of the host's addresses, or 0.0.0.0 or :: for all of them",
                )
                if parsed is None:
                    continue
                address = str(parsed)
                if not parsed.is_unspecified and parsed not in mine and not host.uncertain:
                    listed = ", ".join(str(a) for a in sorted(mine, key=sort_key)) or "none"
                    self.problem(
                        (*path, "address"),
                        f"{parsed} is not an address of {host.name}",
                        f"use one of its addresses ({listed}), 0.0.0.0 or ::",
                    )
            # no address means every address: the same as 0.0.0.0 and :: together
            binds = [address] if address else ["0.0.0.0", "::"]
            keys = [(service.proto, service.port, bind) for bind in binds]
            earlier = next((seen[key] for key in keys if key in seen), None)
            if earlier is not None:
                where = f" on {address}" if address else ""
                self.problem(
                    path,
                    f"{service.proto} port {service.port}{where} is already listed "
                    f"(services[{earlier}])",
                    "list each service once (no address means every address)",
                )
            else:
                seen.update((key, index) for key in keys)

    def check_process(self, host: str, path: Path, name: str) -> None:
        unknown = unknown_process(self.runs[host], host, name)
        if unknown is not None:
            self.problem(path, *unknown)

    # -- the resolved model --------------------------------------------------------------

    def build(self) -> Topology:
        networks = {
            name: Network(
                name,
                _v4_net(net.subnets.get(4)),
                _v6_net(net.subnets.get(6)),
                capture=self.raw.networks[name].capture,
            )
            for name, net in self.nets.items()
        }
        hosts = {name: self.build_host(host) for name, host in self.hosts.items()}
        return Topology(
            self.raw.name,
            MappingProxyType(networks),
            MappingProxyType(hosts),
            self.filename,
            expectations=self.expectations,
        )

    def build_host(self, host: _Host) -> Host:
        interfaces = []
        for attachment in host.attachments:
            net = self.nets[attachment.network]
            v4 = attachment.resolved.get(4)
            v6 = attachment.resolved.get(6)
            interfaces.append(
                Interface(
                    attachment.network,
                    attachment.ifname,
                    IPv4Interface(f"{v4}/{net.subnets[4].prefixlen}") if v4 else None,
                    IPv6Interface(f"{v6}/{net.subnets[6].prefixlen}") if v6 else None,
                    capture=attachment.capture,
                )
            )
        routes = []
        for route in host.raw.routes:
            via = ip_address(route.via)
            to = (
                ip_network("0.0.0.0/0" if via.version == 4 else "::/0")
                if route.to == "default"
                else ip_network(route.to)
            )
            routes.append(Route(to, via))
        services = tuple(
            Service(s.proto, s.port, str(ip_address(s.address)) if s.address else None, s.process)
            for s in host.raw.services
        )
        runs = self.runs[host.name]
        return Host(
            host.name,
            tuple(interfaces),
            tuple(routes),
            host.raw.forwarding,
            MappingProxyType(self.sysctls[host.name]),
            "ssh" if host.ssh else host.raw.backend,
            services,
            host.raw.nft,
            host.raw.image,
            self.firewalls[host.name],
            ssh_target(host.raw.ssh, self.filename) if host.raw.ssh else None,
            runs.programs,
            runs.command,
        )


def _unscoped_address(text: str) -> Address:
    """ip_address() refusing a scope (`fe80::1%eth0`): it names a link, not a lab address."""
    if "%" in text:
        raise ValueError(text)
    return ip_address(text)


def _unscoped_network(text: str) -> Subnet:
    """ip_network(strict=False) refusing a scope: `fd00:1::%eth0/64` is no subnet."""
    if "%" in text:
        raise ValueError(text)
    return ip_network(text, strict=False)


def _closest(word: str, choices: list[str] | tuple[str, ...], label: str) -> str:
    listed = f"{label}: {', '.join(choices)}"
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? {listed}" if close else listed


def _example_address(net: _Net) -> str:
    for subnet in net.subnets.values():
        return str(next(free_addresses(subnet, set())))
    return "10.0.1.11"


def _v4_net(subnet: Subnet | None) -> IPv4Network | None:
    return subnet if isinstance(subnet, IPv4Network) else None


def _v6_net(subnet: Subnet | None) -> IPv6Network | None:
    return subnet if isinstance(subnet, IPv6Network) else None
