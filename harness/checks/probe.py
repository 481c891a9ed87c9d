"""Reachability probes and truth tables: what each host sees of each port of the others.

    result = probe(lab, "client1", "web", 443, "tcp")      # ProbeResult(state="open", ...)
    table = matrix(lab, [(22, "tcp"), (53, "udp")])         # every ordered pair of hosts
    report = check(lab, lab.topology.expectations, retries=2)

States are a port scanner's (docs/probes.md): open, closed, filtered, and for UDP
open|filtered. The probing itself is the agents' `probe` op: every cell one source host
sends is one request to that host's own agent, and all sources probe at once, so a table
full of filtered cells costs about one timeout, not one per cell.
"""

from __future__ import annotations

import concurrent.futures
import shlex
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

from harness.checks.owners import OwnerCheck, ServiceVerdict, Target, check_services, owner_checks
from harness.errors import AgentError, UsageError
from harness.topology import Expectation, ProbeState

if TYPE_CHECKING:
    from harness.lab import Lab

__all__ = [
    "DEFAULT_TIMEOUT",
    "STATES",
    "Cell",
    "CheckReport",
    "ProbeResult",
    "check",
    "matrix",
    "parse_port_spec",
    "parse_ports",
    "probe",
    "probe_cells",
    "reproduce_command",
    "target_address",
]

Proto = Literal["tcp", "udp"]
STATES: tuple[str, ...] = get_args(ProbeState)
DEFAULT_TIMEOUT = 1.0
DEFAULT_CONCURRENCY = 4096  # probes one agent has in flight (descriptors)
DEFAULT_PORTS: tuple[tuple[int, Proto], ...] = ((22, "tcp"), (80, "tcp"), (443, "tcp"), (53, "udp"))


@dataclass(frozen=True)
class Cell:
    """One thing to probe: from `source`, port/proto of `target` over IPv`family`.

    `target` is a host name of the lab (or an address outside its hosts); `address` the
    exact address to probe, None to let `target_address` choose.
    """

    source: str
    target: str
    port: int
    proto: Proto
    family: Literal[4, 6] = 4
    address: str | None = None


class ProbeResult(NamedTuple):
    """What one probe saw. `attempts` counts the probes the cell took (1 + retries).

    A named tuple, not a dataclass: a sweep makes 65535 of them, ten times faster."""

    state: str
    reason: str
    address: str
    elapsed: float
    attempts: int
    source: str = ""
    target: str = ""
    port: int = 0
    proto: str = "tcp"
    family: int = 4
    errno: str | None = None
    icmp_from: str | None = None

    @property
    def cell(self) -> str:
        return f"{self.source}->{self.target}:{self.port}/{self.proto}"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "address": self.address,
            "family": self.family,
            "port": self.port,
            "proto": self.proto,
            "state": self.state,
            "reason": self.reason,
            "elapsed": round(self.elapsed, 6),
            "attempts": self.attempts,
            "errno": self.errno,
            "icmp_from": self.icmp_from,
        }


# ---- addresses ------------------------------------------------------------------------


def target_address(lab: Lab, source: str, target: str, family: int = 4) -> str:
    """The address `source` should probe `target` at: on a network both are on if there
    is one (no router in the way), else the target's first address of that family.
    A `target` that is an address is used as it is."""
    try:
        literal = ip_address(target)
    except ValueError:
        pass
    else:
        return str(literal)
    if target not in lab.hosts:
        raise UsageError(f"lab {lab.id} has no host {target!r} (hosts: {', '.join(lab.hosts)})")
    if source not in lab.hosts:
        raise UsageError(f"lab {lab.id} has no host {source!r} (hosts: {', '.join(lab.hosts)})")
    target_spec = lab.hosts[target].spec
    shared = {i.network for i in lab.hosts[source].spec.interfaces}
    ordered = sorted(target_spec.interfaces, key=lambda i: i.network not in shared)
    for interface in ordered:
        address = interface.address if family == 4 else interface.address6
        if address is not None:
            return str(address.ip)
    raise UsageError(f"host {target} has no IPv{family} address")


def host_of(lab: Lab, address: str) -> str | None:
    """The lab host that has `address`, if any."""
    wanted = ip_address(address)
    for name, host in lab.hosts.items():
        for interface in host.spec.interfaces:
            for own in (interface.address, interface.address6):
                if own is not None and own.ip == wanted:
                    return name
    return None


# ---- probing --------------------------------------------------------------------------


def probe(
    lab: Lab,
    source: str,
    target: str,
    port: int,
    proto: Proto = "tcp",
    family: Literal[4, 6] = 4,
    timeout: float = DEFAULT_TIMEOUT,
    address: str | None = None,
) -> ProbeResult:
    """Probe one port of `target` from inside `source`; see the module doc for states."""
    return probe_cells(lab, [Cell(source, target, port, proto, family, address)], timeout)[0]


def probe_cells(
    lab: Lab,
    cells: Sequence[Cell],
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = DEFAULT_CONCURRENCY,
    ratelimited: Iterable[str] = (),
    udp_interval: float = 1.0,
) -> list[ProbeResult]:
    """Probe every cell; one agent request per source host, all sources at once.

    `ratelimited` names targets whose ICMP rate limits are not the lab's (ssh hosts are
    always among them): UDP probes to them leave one per `udp_interval` seconds per
    address, and a silent one says that an answer may have been suppressed.
    """
    if timeout <= 0:
        raise UsageError(f"a probe timeout must be positive, not {timeout}")
    paced = set(ratelimited) | {n for n, h in lab.hosts.items() if not h.handle.netns_path}
    resolved = _with_addresses(lab, cells)
    # One request per source, and a separate one for its paced cells (only those wait).
    requests: dict[tuple[str, bool], list[int]] = {}
    for index, cell in enumerate(resolved):
        slow = cell.proto == "udp" and cell.target in paced
        requests.setdefault((cell.source, slow), []).append(index)
    agents = {source: lab.host_agent(source) for source, _slow in requests}  # one by one
    results: list[ProbeResult | None] = [None] * len(resolved)

    def run(source: str, slow: bool) -> None:
        indexes = requests[(source, slow)]
        targets, order = _request_targets([resolved[i] for i in indexes])
        # Long sweeps run in rounds of `concurrency`; each round may wait one timeout.
        budget = timeout * (len(indexes) // concurrency + 2)
        if slow:
            budget += len(indexes) * udp_interval
        try:
            reply = agents[source].request_within(
                "probe",
                budget,
                targets=targets,
                timeout=timeout,
                concurrency=concurrency,
                ratelimited=slow,
                udp_interval=udp_interval,
            )
        except AgentError as exc:
            if exc.errno != "ETIMEDOUT":
                raise
            # A probe that never answers is a bug in the agent: say what its log says.
            from harness.observe.diagnostics import agent_log_tail

            tail = agent_log_tail(lab, source, 20)
            raise AgentError(f"{exc}\n{tail}", errno=exc.errno, op=exc.op) from None
        for index, result in _read_reply(reply, [resolved[i] for i in indexes], order):
            results[indexes[index]] = result

    pool = concurrent.futures.ThreadPoolExecutor(max(1, len(requests)))
    try:
        for future in [pool.submit(run, *key) for key in requests]:
            future.result()
    finally:
        # On Ctrl-C or an error, do not wait for the other sources' replies: the lab's
        # teardown ends their agents, which fails the requests their threads wait on.
        pool.shutdown(wait=False, cancel_futures=True)
    return [r for r in results if r is not None]


def _with_addresses(lab: Lab, cells: Sequence[Cell]) -> list[Cell]:
    """Each cell with the address it probes: its own, or the target's toward the source."""
    chosen: dict[tuple[str, str, int], str] = {}  # a sweep has one target, many ports

    def address_of(cell: Cell) -> str:
        key = (cell.source, cell.target, cell.family)
        if key not in chosen:
            chosen[key] = target_address(lab, cell.source, cell.target, cell.family)
        return chosen[key]

    return [
        c if c.address else Cell(c.source, c.target, c.port, c.proto, c.family, address_of(c))
        for c in cells
    ]


def _read_reply(
    reply: dict[str, Any], cells: Sequence[Cell], order: Sequence[int]
) -> Iterator[tuple[int, ProbeResult]]:
    """(index into `cells`, its result) from a probe reply. A sweep answers 65535 cells:
    each distinct verdict is read once and the results are built positionally."""
    kinds = [
        (str(k["state"]), str(k["reason"]), k.get("errno"), k.get("from")) for k in reply["kinds"]
    ]
    for (kind, micros), index in zip(reply["results"], order, strict=True):
        state, reason, errno, sender = kinds[kind]
        cell = cells[index]
        yield (
            index,
            ProbeResult(
                state,
                reason,
                cell.address or "",
                micros / 1e6,
                1,
                cell.source,
                cell.target,
                cell.port,
                cell.proto,
                cell.family,
                errno,
                sender,
            ),
        )


def _request_targets(cells: Sequence[Cell]) -> tuple[list[dict[str, Any]], list[int]]:
    """The probe op's `targets` for `cells`, and the cell index behind each result."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, cell in enumerate(cells):
        assert cell.address is not None
        groups.setdefault((cell.address, cell.proto), []).append(index)
    targets = []
    order: list[int] = []
    for (address, proto), indexes in groups.items():
        ports: list[Any] = []  # runs of consecutive ports as [low, high]: a sweep is one
        for index in indexes:
            port = cells[index].port
            last = ports[-1] if ports else None
            if isinstance(last, list) and last[1] + 1 == port:
                last[1] = port
            elif isinstance(last, int) and last + 1 == port:
                ports[-1] = [last, port]
            else:
                ports.append(port)
        targets.append({"address": address, "proto": proto, "ports": ports})
        order.extend(indexes)
    return targets, order


def matrix(
    lab: Lab,
    ports: Sequence[tuple[int, Proto]] = DEFAULT_PORTS,
    family: Literal[4, 6] = 4,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[ProbeResult]:
    """Probe `ports` of every host from every other host (pairs without an address of
    `family` are left out)."""
    cells = []
    for source in lab.hosts:
        for target, host in lab.hosts.items():
            if target == source or not any(
                (i.address if family == 4 else i.address6) for i in host.spec.interfaces
            ):
                continue
            cells += [Cell(source, target, port, proto, family) for port, proto in ports]
    return probe_cells(lab, cells, timeout)


# ---- checking expectations ------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One expectation against what was observed; `retries` re-probes were needed."""

    expected: str
    result: ProbeResult
    retries: int
    line: int = 0
    column: int = 0
    address_given: bool = False  # the expectation named the address to probe
    # `owner:`'s check (harness/checks/owners.py), made once the state matched
    owner: OwnerCheck | None = None

    @property
    def passed(self) -> bool:
        return self.result.state == self.expected and (self.owner is None or self.owner.passed)

    def to_json(self, lab_id: str) -> dict[str, Any]:
        return {
            **self.result.to_json(),
            "expected": self.expected,
            "observed": self.result.state,
            "passed": self.passed,
            "retries": self.retries,
            "line": self.line,
            "column": self.column,
            "reproduce": reproduce_command(lab_id, self.result, self.address_given),
            "owner": self.owner.to_json() if self.owner else None,
        }


@dataclass(frozen=True)
class CheckReport:
    lab: str
    verdicts: tuple[Verdict, ...]
    seconds: float
    services: tuple[ServiceVerdict, ...] = ()  # `process:` services and their listeners

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts) and all(s.passed for s in self.services)

    @property
    def failed(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if not v.passed)

    def summary(self) -> str:
        flaky = sum(1 for v in self.verdicts if v.passed and v.retries)
        text = (
            f"{len(self.verdicts)} expectations: {len(self.verdicts) - len(self.failed)} "
            f"passed, {len(self.failed)} failed"
        )
        if flaky:
            text += f", {flaky} passed only after a retry"
        if self.services:
            wrong = sum(1 for s in self.services if not s.passed)
            text += f"; {len(self.services)} process services: {wrong} failed"
        return f"{text} ({self.seconds:.2f} s)"

    def to_json(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "passed": self.passed,
            "summary": self.summary(),
            "cells": [v.to_json(self.lab) for v in self.verdicts],
            "services": [s.to_json() for s in self.services],
        }


def check(
    lab: Lab,
    expectations: Sequence[Expectation],
    retries: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
    services: bool = True,
) -> CheckReport:
    """Probe every expectation; a cell that does not match is probed again, up to
    `retries` more times, before it counts as a mismatch (the retries are reported).
    A cell with an `owner:` whose state matched is checked for who accepts it, and with
    `services` each `process:` service for who listens (harness/checks/owners.py)."""
    if retries < 0:
        raise UsageError(f"retries must be 0 or more, not {retries}")
    started = time.monotonic()
    cells = [Cell(e.source, e.target, e.port, e.proto, e.family, e.address) for e in expectations]
    results = probe_cells(lab, cells, timeout)
    used = [0] * len(cells)
    for _round in range(retries):
        again = [i for i, e in enumerate(expectations) if results[i].state != e.state]
        if not again:
            break
        retried = probe_cells(lab, [cells[i] for i in again], timeout)
        for index, result in zip(again, retried, strict=True):
            used[index] += 1
            results[index] = result._replace(attempts=used[index] + 1)
    owned = [i for i, e in enumerate(expectations) if e.owner and results[i].state == e.state]
    judged = owner_checks(lab, [_owner_target(expectations[i], results[i]) for i in owned])
    owners = dict(zip(owned, judged, strict=True))
    verdicts = tuple(
        Verdict(
            e.state, results[i], used[i], e.line, e.column, e.address is not None, owners.get(i)
        )
        for i, e in enumerate(expectations)
    )
    checked = check_services(lab) if services else ()
    return CheckReport(lab.id, verdicts, time.monotonic() - started, checked)


def _owner_target(expectation: Expectation, result: ProbeResult) -> Target:
    assert expectation.owner is not None
    return Target(
        expectation.source,
        expectation.target,
        result.address,
        expectation.port,
        expectation.proto,
        expectation.owner,
    )


# ---- command line helpers -------------------------------------------------------------


def reproduce_command(lab_id: str, result: ProbeResult, address_given: bool = False) -> str:
    """The `netharness probe` command line that probes this one cell again (by host name
    when the address was chosen automatically: the choice is the same every time)."""
    by_name = not address_given and result.target and not _is_address(result.target)
    where = result.target if by_name else result.address
    if ":" in where:
        where = f"[{where}]"
    line = f"netharness probe {shlex.quote(lab_id)} {shlex.quote(result.source)} "
    line += f"{where}:{result.port}/{result.proto}"
    if by_name and result.family == 6:
        line += " -6"
    return line


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def parse_port_spec(text: str) -> tuple[str, int, Proto]:
    """`web:443/tcp`, `10.0.1.12:53/udp`, `[fd00:1::12]:80` (tcp) → (target, port, proto)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError(f"{text!r}: the protocol must be tcp or udp, e.g. web:443/tcp")
    if spec.startswith("["):
        target, bracket, port_text = spec[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise UsageError(f"{text!r}: write an IPv6 target as [fd00:1::12]:443/tcp")
        port_text = port_text[1:]
    else:
        target, colon, port_text = spec.rpartition(":")
        if ":" in target:
            raise UsageError(f"{text!r}: write an IPv6 target in brackets: [fd00:1::12]:443/tcp")
        if not colon or not target:
            raise UsageError(f"{text!r}: write the target as HOST:PORT/PROTO, e.g. web:443/tcp")
    port = _port(port_text, text)
    return target, port, "udp" if proto == "udp" else "tcp"


def parse_ports(text: str) -> list[tuple[int, Proto]]:
    """`22,80,443/tcp,53/udp`: a protocol applies to the ports before it since the last
    one; ports with none after them are tcp. Ranges work: `8000-8010/tcp`."""
    out: list[tuple[int, Proto]] = []
    waiting: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        number, slash, proto = item.partition("/")
        if slash and proto not in ("tcp", "udp"):
            raise UsageError(f"--ports {text!r}: {item!r} must end in /tcp or /udp")
        low, dash, high = number.partition("-")
        first = _port(low, text)
        last = _port(high, text) if dash else first
        if last < first:
            raise UsageError(f"--ports {text!r}: the range {number} runs backwards")
        waiting.extend(range(first, last + 1))
        if slash:
            out += [(p, "udp" if proto == "udp" else "tcp") for p in waiting]
            waiting = []
    out += [(p, "tcp") for p in waiting]
    if not out:
        raise UsageError("--ports names no port; e.g. --ports 22,80,443/tcp,53/udp")
    return list(dict.fromkeys(out))


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"{whole!r}: {text!r} is not a port from 1 to 65535")
    return int(text)
