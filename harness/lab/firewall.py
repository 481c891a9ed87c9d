"""A host's `firewall:` policy compiled to nftables JSON, and applied inside its namespace.

    document = compile_policy(host.firewall) # pure: the {"nftables": [...]} commands
    await apply_all(forkserver, targets)     # `nft -j -f -` in each host's namespace

Everything goes into one table, `inet netharness`, so IPv4 and IPv6 share the rules. The
controller's `nft` runs inside the host's network namespace (started by the lab's fork
server straight into the namespace path), so images need no firewall tools; the same
path applies a host's raw `nft:` script right after its policy.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from harness.backends._forkserver import ForkServerClient
from harness.backends.base import Process
from harness.errors import SEE_DOCTOR, BackendError, EnvironmentProblem
from harness.lab._pipes import communicate
from harness.topology import Chain, Firewall, FirewallRule, Host
from harness.topology.model import Subnet

TABLE = "netharness"
FAMILY = "inet"
# Marks the table ours. Some nft versions (1.0.6) drop table comments given in JSON; every
# rule's comment starts with "netharness:" as well.
COMMENT = "netharness lab policy"
NFT_TIMEOUT = 30.0
_PRIORITY = 0  # `filter`
# Neighbour and router discovery: without them IPv6 stops working on the link.
ND_TYPES = (
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
)
_L4PROTO = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp"}
_NFPROTO = {4: "ipv4", 6: "ipv6"}
_ADDR_PROTOCOL = {4: "ip", 6: "ip6"}

Expr = dict[str, Any]


def compile_policy(firewall: Firewall) -> dict[str, Any]:
    """The nftables JSON document that makes `firewall` in a fresh namespace."""
    commands: list[dict[str, Any]] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE, "comment": COMMENT}}}
    ]
    for hook, chain in firewall.chains().items():
        commands.append(
            {
                "add": {
                    "chain": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": hook,
                        "type": "filter",
                        "hook": hook,
                        "prio": _PRIORITY,
                        "policy": chain.policy,
                    }
                }
            }
        )
        for expr, comment in _chain_rules(hook, chain):
            rule = {"family": FAMILY, "table": TABLE, "chain": hook, "expr": expr}
            commands.append({"add": {"rule": {**rule, "comment": comment}}})
    return {"nftables": commands}


def _chain_rules(hook: str, chain: Chain) -> list[tuple[list[Expr], str]]:
    rules: list[tuple[list[Expr], str]] = []
    loopback = {"input": "iifname", "output": "oifname"}.get(hook)
    if loopback:  # the host talking to itself; neighbour discovery is never forwarded
        rules.append(([_eq({"meta": {"key": loopback}}, "lo"), _ACCEPT], "netharness: loopback"))
        nd = _eq(_field("icmpv6", "type"), {"set": list(ND_TYPES)})
        rules.append(([nd, _ACCEPT], "netharness: IPv6 neighbour discovery"))
    if chain.stateful:
        state = {"ct": {"key": "state"}}
        established = {"match": {"op": "in", "left": state, "right": ["established", "related"]}}
        invalid = {"match": {"op": "in", "left": state, "right": "invalid"}}
        rules.append(([established, _ACCEPT], "netharness: stateful"))
        rules.append(([invalid, {"drop": None}], "netharness: stateful"))
    for index, rule in enumerate(chain.rules):
        comment = f"netharness: rules[{index}] line {rule.line}"
        rules += [(expr, comment) for expr in compile_rule(rule)]
    return rules


def compile_rule(rule: FirewallRule) -> list[list[Expr]]:
    """The nftables rules (expression lists) for one policy rule, in order.

    A rule whose addresses are of both families becomes one nft rule per family (an
    `ip saddr` match only ever sees IPv4 packets). `reject: any` without `with` answers
    TCP with a reset and the rest with port unreachable: two nft rules.
    """
    out: list[list[Expr]] = []
    for family in _families(rule):
        matches: list[Expr] = []
        for nets, direction in ((rule.sources, "saddr"), (rule.destinations, "daddr")):
            if nets and family is not None:  # peers always decide the family
                matches.append(_addresses(family, direction, nets))
        if family is not None and not matches and rule.proto not in ("icmp", "icmpv6"):
            matches.append(_eq({"meta": {"key": "nfproto"}}, _NFPROTO[family]))
        if rule.ports:
            matches.append(_eq(_field(rule.proto, "dport"), _ports(rule.ports)))
        elif rule.proto != "any":
            matches.append(_eq({"meta": {"key": "l4proto"}}, _L4PROTO[rule.proto]))
        if rule.action == "reject" and rule.proto == "any" and rule.reject_with is None:
            tcp = _eq({"meta": {"key": "l4proto"}}, "tcp")
            out.append([*matches, tcp, _COUNTER, {"reject": {"type": "tcp reset"}}])
        out.append([*matches, _COUNTER, _verdict(rule)])
    return out


def _families(rule: FirewallRule) -> Sequence[int | None]:
    if rule.family is not None:
        return [rule.family]
    peers = [*rule.sources, *rule.destinations]
    if not peers:
        return [None]
    present = {n.version for n in peers}
    for nets in (rule.sources, rule.destinations):
        if nets:
            present &= {n.version for n in nets}
    return sorted(present)


def _addresses(family: int, direction: str, nets: Sequence[Subnet]) -> Expr:
    values: list[Any] = [_net(n) for n in nets if n.version == family]
    right = values[0] if len(values) == 1 else {"set": values}
    return _eq(_field(_ADDR_PROTOCOL[family], direction), right)


def _net(net: Subnet) -> Any:
    full = 32 if isinstance(net, IPv4Network) else 128
    if net.prefixlen == full:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _ports(ranges: Sequence[tuple[int, int]]) -> Any:
    values: list[Any] = [low if low == high else {"range": [low, high]} for low, high in ranges]
    return values[0] if len(values) == 1 else {"set": values}


def _verdict(rule: FirewallRule) -> Expr:
    if rule.action == "allow":
        return _ACCEPT
    if rule.action == "drop":
        return {"drop": None}
    with_ = rule.reject_with or ("reset" if rule.proto == "tcp" else "port-unreachable")
    if with_ == "reset":
        return {"reject": {"type": "tcp reset"}}
    return {"reject": {"type": "icmpx", "expr": with_}}


def _eq(left: Expr, right: Any) -> Expr:
    return {"match": {"op": "==", "left": left, "right": right}}


def _field(protocol: str, name: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": name}}


_ACCEPT: Expr = {"accept": None}
_COUNTER: Expr = {"counter": None}  # `nft list` shows which rule decided


# -- applying -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A host to configure: its spec, its namespace, and whether that is ours to enter."""

    host: Host
    netns_path: str
    local: bool  # False: the backend has no namespace on this machine (ssh)


async def apply_all(forkserver: ForkServerClient, targets: Sequence[Target]) -> None:
    """Apply every host's policy, then its raw `nft:` script, inside its namespace."""
    wanted = [t for t in targets if t.host.firewall is not None or t.host.nft]
    if not wanted:
        return
    remote = [t.host.name for t in wanted if not t.local]
    if remote:
        raise BackendError(
            f"hosts {', '.join(remote)} have a firewall or nft rules, but their backend has "
            "no network namespace on this machine for netharness to set them in; remove "
            "`firewall:`/`nft:` from them",
            host=remote[0],
        )
    nft = shutil.which("nft")
    if nft is None:
        names = ", ".join(t.host.name for t in wanted)
        raise EnvironmentProblem(
            f"hosts {names} have a firewall or nft rules but nft is not installed here; "
            f"install it with `apt-get install nftables`; {SEE_DOCTOR}"
        )
    await asyncio.gather(*(_apply_host(forkserver, nft, t) for t in wanted))


async def _apply_host(forkserver: ForkServerClient, nft: str, target: Target) -> None:
    host, path = target.host, target.netns_path
    if host.firewall is not None:
        document = json.dumps(compile_policy(host.firewall)).encode()
        code, err = await run_nft(forkserver, path, [nft, "-j", "-f", "-"], document)
        if code != 0:
            raise BackendError(f"nft refused the compiled firewall policy: {err}", host=host.name)
    if host.nft:
        code, err = await run_nft(forkserver, path, [nft, "-f", "-"], host.nft.encode())
        if code != 0:
            raise BackendError(f"nft refused the host's `nft` script: {err}", host=host.name)


async def run_nft(
    forkserver: ForkServerClient, netns_path: str, argv: list[str], stdin: bytes
) -> tuple[int, str]:
    """Run nft in the namespace with `stdin`; its exit status and what it said on stderr."""

    def start(fds: tuple[int, int, int]) -> Awaitable[Process]:
        return forkserver.spawn(netns_path, argv, fds)

    try:
        code, _, err = await communicate(start, stdin, NFT_TIMEOUT)
    except TimeoutError:
        raise BackendError(f"nft did not finish within {NFT_TIMEOUT} s") from None
    return code, err.decode(errors="replace").strip()
