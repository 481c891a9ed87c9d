"""Checks of `expect:` and its expansion into one `Expectation` per source, target, port."""

from __future__ import annotations

import difflib
from ipaddress import ip_address
from typing import TYPE_CHECKING, Literal

from harness.topology._addresses import sort_key
from harness.topology._paths import Path
from harness.topology._policy import read_ports
from harness.topology._programs import unknown_process
from harness.topology._raw import RawExpectation
from harness.topology.model import Expectation

if TYPE_CHECKING:
    from harness.topology._checks import Checker, _Host

#: More cells than this is a typo in a range, not a test plan.
MAX_EXPECTATIONS = 200_000


def check_expectations(checker: Checker) -> tuple[Expectation, ...]:
    """Check every `expect:` entry; the expanded cells (complete only if nothing was wrong)."""
    raw = checker.raw.expect
    indices = checker.damage.indices(("expect",), len(raw))
    cells: list[Expectation] = []
    seen: dict[tuple[str, str, str, int, int, str | None], Expectation] = {}
    for index, entry in zip(indices, raw, strict=True):
        path: Path = ("expect", index)
        expanded = _check_entry(checker, path, entry)
        if expanded is None:
            continue
        if len(cells) + len(expanded) > MAX_EXPECTATIONS:
            checker.problem(
                path,
                f"expect expands to more than {MAX_EXPECTATIONS} checks",
                "name fewer ports or hosts per entry",
            )
            break
        for cell in expanded:
            key = (cell.source, cell.target, cell.proto, cell.port, cell.family, cell.address)
            earlier = seen.get(key)
            if earlier is None:
                seen[key] = cell
                cells.append(cell)
                continue
            what = f"{cell.source} -> {cell.target} {cell.port}/{cell.proto} IPv{cell.family}"
            if earlier.state == cell.state:
                message = f"{what} is already expected {cell.state} (line {earlier.line})"
                fix = "list each check once"
            else:
                message = (
                    f"{what} is expected {cell.state} here but {earlier.state} on line "
                    f"{earlier.line}"
                )
                fix = "decide which one it is and keep that entry"
            checker.problem(path, message, fix)
            break
    return tuple(cells)


def _check_entry(checker: Checker, path: Path, raw: RawExpectation) -> list[Expectation] | None:
    ok = True
    sources = _hosts(checker, path, "from", raw.from_)
    targets = _hosts(checker, path, "to", raw.to)
    ports = read_ports(checker, path, raw.port, raw.ports)
    if ports == ():
        checker.problem(path, "the entry names no port", "add `port: 443` or `ports: [...]`")
        ok = False
    if raw.proto == "tcp" and raw.state == "open|filtered":
        checker.problem(
            (*path, "state"),
            "a TCP port is never open|filtered: the handshake completes, is refused or gets "
            "no answer",
            "use open, closed or filtered",
        )
        ok = False
    family: Literal[4, 6] = raw.family
    address: str | None = None
    if raw.address is not None and targets is not None:
        address, family = _address(checker, path, raw, targets) or (None, family)
        ok = ok and address is not None
    if raw.owner is not None and targets is not None:
        ok = _owner(checker, path, raw, targets) and ok
    if sources is None or targets is None or not ports or not ok:
        return None
    for host in sources + targets:
        if not host.uncertain and not any(family in a.resolved for a in host.attachments):
            checker.problem(
                (*path, "family"),
                f"{host.name} has no IPv{family} address",
                f"give it an IPv{family} address, or expect over IPv{6 if family == 4 else 4}",
            )
            return None
    for host in sources:
        if host in targets:
            checker.problem(
                path,
                f"{host.name} would probe itself: that goes over loopback, which the "
                "firewall always accepts",
                "probe it from another host",
            )
            return None
    line, column = checker.doc.value_pos(path)
    return [
        Expectation(
            s.name, t.name, raw.proto, port, raw.state, family, address, line, column, raw.owner
        )
        for s in sources
        for t in targets
        for low, high in ports
        for port in range(low, high + 1)
    ]


def _hosts(checker: Checker, path: Path, key: str, value: str | list[str]) -> list[_Host] | None:
    names = value if isinstance(value, list) else [value]
    where = (*path, key)
    if not names:
        checker.problem(where, f"{key} lists no hosts", "name at least one host")
        return None
    out: list[_Host] = []
    for index, name in enumerate(names):
        host = checker.hosts.get(name)
        if host is None:
            close = difflib.get_close_matches(name, list(checker.hosts), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            checker.problem(
                (*where, index) if isinstance(value, list) else where,
                f"host {name!r} is not defined",
                f"{hint}hosts: {', '.join(checker.hosts)}",
            )
            return None
        if host not in out:
            out.append(host)
    return out


def _owner(checker: Checker, path: Path, raw: RawExpectation, targets: list[_Host]) -> bool:
    """Whether the entry's `owner:` is a process of every target, and can accept anything."""
    assert raw.owner is not None
    where = (*path, "owner")
    if raw.state != "open":
        checker.problem(
            where,
            f"owner names the process that accepts the connection, but state {raw.state} "
            "expects none to",
            "expect state open, or remove owner",
        )
        return False
    for target in targets:
        unknown = unknown_process(checker.runs[target.name], target.name, raw.owner)
        if unknown is not None:
            message, fix = unknown
            if len(targets) > 1:
                fix += " (owner must run on every host in `to`)"
            checker.problem(where, message, fix)
            return False
    return True


def _address(
    checker: Checker, path: Path, raw: RawExpectation, targets: list[_Host]
) -> tuple[str, Literal[4, 6]] | None:
    """The entry's `address:`, checked to be the target's, and its family."""
    where = (*path, "address")
    assert raw.address is not None
    try:
        address = ip_address(raw.address)
    except ValueError:
        message = f"{raw.address!r} is not an IP address"
        checker.problem(where, message, "write the target's address")
        return None
    if len(targets) > 1:
        checker.problem(
            where,
            f"address {address} can belong to one host, but to lists {len(targets)}",
            "split the entry per target, or remove `address`",
        )
        return None
    target = targets[0]
    mine = {a for att in target.attachments for a in att.resolved.values()}
    if address not in mine and not target.uncertain:
        listed = ", ".join(str(a) for a in sorted(mine, key=sort_key)) or "none"
        checker.problem(
            where, f"{address} is not an address of {target.name}", f"use one of: {listed}"
        )
        return None
    family: Literal[4, 6] = 6 if address.version == 6 else 4
    if "family" in raw.model_fields_set and raw.family != family:
        checker.problem(
            (*path, "family"),
            f"family is {raw.family} but the address {address} is IPv{family}",
            "remove `family`: the address decides it",
        )
        return None
    return str(address), family
