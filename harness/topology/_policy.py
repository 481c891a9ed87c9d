"""Checks of `firewall:` (per host) and their resolution into the model's `Firewall`.

A rule's `from`/`to` name CIDRs, addresses, networks (their subnets) or hosts (their
addresses). A rule that an earlier rule of its chain already decides entirely can never
match: that is reported, naming the earlier rule's line, because it is either dead code
or, with another action, a contradiction the author did not see.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import TYPE_CHECKING, Literal

from harness.topology import _ports
from harness.topology._addresses import sort_key
from harness.topology._paths import Path
from harness.topology._raw import RawChain, RawRule
from harness.topology.model import Chain, Firewall, FirewallRule, Subnet

if TYPE_CHECKING:
    from harness.topology._checks import Checker

Action = Literal["allow", "reject", "drop"]
_ACTIONS: tuple[Action, ...] = ("allow", "reject", "drop")
_VERB = {"allow": "allows", "reject": "rejects", "drop": "drops"}
_PROTO_FAMILY = {"icmp": 4, "icmpv6": 6}


@dataclass(frozen=True)
class _Match:
    """What a rule matches, for telling whether an earlier rule decides it already."""

    proto: str
    families: frozenset[int]
    ports: _ports.PortRanges | None  # None: any port
    sources: tuple[Subnet, ...] | None  # None: anywhere
    destinations: tuple[Subnet, ...] | None

    def covers(self, other: _Match) -> bool:
        """Whether every packet `other` matches is matched by this rule too."""
        return (
            self.proto in ("any", other.proto)
            and other.families <= self.families
            and _ports_cover(self.ports, other.ports)
            and _nets_cover(self.sources, other.sources, other.families)
            and _nets_cover(self.destinations, other.destinations, other.families)
        )


def _ports_cover(outer: _ports.PortRanges | None, inner: _ports.PortRanges | None) -> bool:
    if outer is None:
        return True
    return inner is not None and _ports.covers(outer, inner)


def _nets_cover(
    outer: tuple[Subnet, ...] | None, inner: tuple[Subnet, ...] | None, families: frozenset[int]
) -> bool:
    if outer is None:
        return True
    if inner is None:
        return False
    return all(
        any(o.version == i.version and i.subnet_of(o) for o in outer)  # type: ignore[arg-type]
        for i in inner
        if i.version in families
    )


def read_ports(
    checker: Checker, path: Path, port: int | None, ports: str | list[int | str] | None
) -> _ports.PortRanges | None:
    """The ports of `port:` or `ports:`; () if neither is given, None if reported bad."""
    if port is not None and ports is not None:
        checker.problem(
            (*path, "ports"), "give either port or ports, not both", "remove one of them"
        )
        return None
    if port is not None:
        return ((port, port),)
    if ports is None:
        return ()
    try:
        return _ports.parse_ports(ports)
    except _ports.BadPorts as exc:
        where = (*path, "ports") if exc.index is None else (*path, "ports", exc.index)
        checker.problem(where, str(exc), exc.fix)
        return None


def check_firewall(checker: Checker, name: str) -> Firewall | None:
    """Check one host's `firewall:`; the resolved policy, or None if it has none or is bad."""
    host = checker.hosts[name]
    raw = host.raw.firewall
    if raw is None:
        return None
    base: Path = ("hosts", name, "firewall")
    ok = True
    if raw.forward is not None and not host.raw.forwarding:
        checker.problem(
            (*base, "forward"),
            f"host {name} has a forward chain but does not forward packets, so it never sees any",
            f"add `forwarding: true` to {name}, or remove `forward:`",
            at_key=True,
        )
        ok = False
    chains: dict[str, Chain] = {}
    for hook in ("input", "output", "forward"):
        chain = getattr(raw, hook)
        if chain is not None:
            resolved = _check_chain(checker, (*base, hook), chain)
            if resolved is None:
                ok = False
            else:
                chains[hook] = resolved
    return Firewall(**chains) if ok else None


def _check_chain(checker: Checker, path: Path, raw: RawChain) -> Chain | None:
    base = (*path, "rules")
    indices = checker.damage.indices(base, len(raw.rules))
    rules: list[FirewallRule] = []
    decided: list[tuple[int, _Match, FirewallRule]] = []
    ok = True
    for index, raw_rule in zip(indices, raw.rules, strict=True):
        rule_path = (*base, index)
        checked = _check_rule(checker, rule_path, raw_rule)
        if checked is None:
            ok = False
            continue
        rule, match = checked
        for earlier_index, earlier_match, earlier in decided:
            if earlier_match.covers(match):
                _report_shadowed(checker, rule_path, rule, earlier_index, earlier)
                ok = False
                break
        decided.append((index, match, rule))
        rules.append(rule)
    return Chain(raw.policy, tuple(rules), raw.stateful) if ok else None


def _report_shadowed(
    checker: Checker, path: Path, rule: FirewallRule, index: int, earlier: FirewallRule
) -> None:
    same = earlier.action == rule.action and earlier.reject_with == rule.reject_with
    where = f"rules[{index}] (line {earlier.line})"
    if same:
        checker.problem(
            path,
            f"this rule never matches: {where} already {_VERB[earlier.action]} "
            "everything it matches",
            "remove this rule",
        )
    else:
        checker.problem(
            path,
            f"this rule contradicts {where}, which already {_VERB[earlier.action]} "
            f"everything this rule {_VERB[rule.action]}, so it never applies",
            "remove one of them, or put the narrower rule first",
        )


def _rule_action(checker: Checker, path: Path, raw: RawRule) -> Action | None:
    """The rule's one action (allow, reject, drop), or None after saying what is wrong."""
    given = [a for a in _ACTIONS if getattr(raw, a) is not None]
    if not given:
        checker.problem(
            path,
            "the rule has no action",
            "start it with allow, reject or drop and a protocol, e.g. `{allow: tcp, port: 443}`",
        )
        return None
    if len(given) > 1:
        checker.problem(
            (*path, given[1]),
            f"the rule says both {given[0]} and {given[1]}",
            "a rule does one thing: keep one of them",
            at_key=True,
        )
        return None
    return given[0]


def _reject_with_ok(checker: Checker, path: Path, raw: RawRule, action: str, proto: str) -> bool:
    """`with` belongs to a reject, and a TCP reset answers only TCP."""
    if raw.with_ is None:
        return True
    if action != "reject":
        checker.problem(
            (*path, "with"),
            f"`with` says how a reject answers, but this rule is {action}",
            "remove `with`, or make the rule a reject",
            at_key=True,
        )
        return False
    if raw.with_ == "reset" and proto != "tcp":
        checker.problem(
            (*path, "with"),
            f"a TCP reset cannot answer {proto}",
            "use port-unreachable, admin-prohibited or host-unreachable, or reject tcp",
        )
        return False
    return True


def _rule_families(checker: Checker, path: Path, raw: RawRule, proto: str) -> set[int] | None:
    """The IP families the rule can match: its `family`, narrowed by an ICMP protocol."""
    families: set[int] = {4, 6} if raw.family is None else {raw.family}
    if proto not in _PROTO_FAMILY:
        return families
    if raw.family is not None and raw.family != _PROTO_FAMILY[proto]:
        other = "icmpv6" if proto == "icmp" else "icmp"
        checker.problem(
            (*path, "family"),
            f"{proto} is IPv{_PROTO_FAMILY[proto]} only, but the rule says family {raw.family}",
            f"match {other} for IPv{raw.family}, or remove `family`",
        )
        return None
    return {_PROTO_FAMILY[proto]}


def _check_rule(checker: Checker, path: Path, raw: RawRule) -> tuple[FirewallRule, _Match] | None:
    action = _rule_action(checker, path, raw)
    if action is None:
        return None
    proto = getattr(raw, action)
    ok = True
    ports = read_ports(checker, path, raw.port, raw.ports)
    if ports and proto not in ("tcp", "udp"):
        key = "port" if raw.port is not None else "ports"
        checker.problem(
            (*path, key),
            f"{proto} has no ports",
            "remove the port, or match tcp or udp",
            at_key=True,
        )
        ok = False
    ok = _reject_with_ok(checker, path, raw, action, proto) and ok
    checked = _rule_families(checker, path, raw, proto)
    ok = checked is not None and ok
    # with a contradiction in `family`, the peers are still read (and checked) as the
    # protocol's own family, so every problem of the rule is reported at once
    families = checked if checked is not None else {_PROTO_FAMILY[proto]}
    sources = _read_peers(checker, path, "from", raw.from_, families)
    destinations = _read_peers(checker, path, "to", raw.to, families)
    if sources is None or destinations is None or ports is None or not ok:
        return None
    for peers in (sources, destinations):
        if peers:
            families &= {n.version for n in peers}
    if not families:
        checker.problem(
            path,
            "from is only IPv4 and to only IPv6 (or the other way round): the rule never matches",
            "name addresses of one family on both sides",
        )
        return None
    line, column = checker.doc.value_pos(path)
    family: Literal[4, 6] | None = 4 if families == {4} else 6 if families == {6} else None
    rule = FirewallRule(
        action=action,
        proto=proto,
        ports=ports,
        sources=sources,
        destinations=destinations,
        reject_with=raw.with_,
        family=family,
        line=line,
        column=column,
    )
    match = _Match(
        proto,
        frozenset([rule.family] if rule.family else (4, 6)),
        ports or None,
        sources or None,
        destinations or None,
    )
    return rule, match


def _read_peers(
    checker: Checker, path: Path, key: str, value: str | list[str] | None, families: set[int]
) -> tuple[Subnet, ...] | None:
    """The subnets `from:` or `to:` names, in the rule's families; None if reported bad."""
    if value is None:
        return ()
    names = value if isinstance(value, list) else [value]
    where = (*path, key)
    if not names:
        checker.problem(where, f"{key} lists nothing", f"name at least one peer, or remove `{key}`")
        return None
    out: list[Subnet] = []
    ok = True
    for index, name in enumerate(names):
        at = (*where, index) if isinstance(value, list) else where
        found = _resolve(checker, at, name)
        if found is None:
            ok = False
            continue
        usable = [n for n in found if n.version in families]
        if not usable:
            had = "/".join(sorted({f"IPv{n.version}" for n in found})) or "no"
            want = " or ".join(f"IPv{f}" for f in sorted(families))
            checker.problem(
                at,
                f"{name} has {had} addresses only, but the rule is for {want}",
                "name a peer of the rule's family, or change `family`",
            )
            ok = False
        out.extend(usable)
    if not ok:
        return None
    return tuple(dict.fromkeys(out))


def _resolve(checker: Checker, path: Path, name: str) -> list[Subnet] | None:
    if "/" in name:
        try:
            return [ip_network(name)]
        except ValueError:
            try:
                fixed = ip_network(name, strict=False)
            except ValueError:
                checker.problem(path, f"{name!r} is not a CIDR", "write it like 10.0.1.0/24")
                return None
            checker.problem(path, f"{name} has host bits set", f"did you mean {fixed}?")
            return None
    try:
        address = ip_address(name)
    except ValueError:
        pass
    else:
        return [ip_network(address)]
    net = checker.nets.get(name)
    host = checker.hosts.get(name)
    if net is not None and host is not None:
        checker.problem(
            path,
            f"{name} is both a network and a host",
            "write the CIDR of the one you mean",
        )
        return None
    if net is not None:
        return list(net.subnets.values())
    if host is not None:
        return [
            ip_network(address)
            for attachment in host.attachments
            for address in sorted(attachment.resolved.values(), key=sort_key)
        ]
    known = [*checker.nets, *checker.hosts]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    checker.problem(
        path,
        f"{name!r} is not a network, a host or a CIDR",
        f"{hint}networks: {', '.join(checker.nets) or 'none'}; hosts: {', '.join(checker.hosts)}",
    )
    return None
