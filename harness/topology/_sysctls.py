"""The sysctls a topology may set: per-network-namespace keys only, each value checked.

A key that is not per network namespace would change the machine running the lab, so it
is not on this list. Forwarding has its own key in a topology (`forwarding: true`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

INT_MAX = 2**31 - 1

#: What a fresh network namespace starts with (the kernel's per-namespace defaults).
DEFAULT_PORT_RANGE = (32768, 60999)
DEFAULT_UNPRIVILEGED_PORT_START = 1024

PORT_RANGE = "net.ipv4.ip_local_port_range"
UNPRIVILEGED_PORT_START = "net.ipv4.ip_unprivileged_port_start"

#: What every lab host gets unless its `sysctls:` say otherwise: no rate limit on the
#: ICMP errors that make a port "closed" (port unreachable, admin prohibited). With the
#: kernel's defaults (1000 a second, bursts of 50, one per destination per second for
#: IPv4) a probe of many closed UDP ports sees most of them silent: open|filtered.
LAB_DEFAULTS: Mapping[str, str] = {
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000",
    "net.ipv4.icmp_msgs_burst": "1000000",
    "net.ipv6.icmp.ratelimit": "0",
}

#: Keys people reach for that `forwarding: true` replaces.
FORWARDING_KEYS = frozenset(
    {
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.forwarding",
        "net.ipv4.conf.default.forwarding",
        "net.ipv6.conf.all.forwarding",
        "net.ipv6.conf.default.forwarding",
    }
)


class BadValue(ValueError):
    """A sysctl value is not acceptable; the message says why, `fix` how to repair it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class Sysctl:
    """One allowed key: what it does, an example value, and how its value is checked."""

    key: str
    summary: str
    example: str
    normalize: Callable[[str | int], str]


def _integer(low: int, high: int, unit: str = "") -> Callable[[str | int], str]:
    def normalize(value: str | int) -> str:
        number = _to_int(value)
        fix = f"use a number from {low} to {high}{unit}"
        if number is None:
            raise BadValue(f"{value!r} is not a whole number", fix)
        if not low <= number <= high:
            raise BadValue(f"{number} is out of range", fix)
        return str(number)

    return normalize


def _choice(*allowed: int) -> Callable[[str | int], str]:
    def normalize(value: str | int) -> str:
        number = _to_int(value)
        if number not in allowed:
            names = ", ".join(str(a) for a in allowed[:-1]) + f" or {allowed[-1]}"
            raise BadValue(f"{value!r} is not allowed", f"use {names}")
        return str(number)

    return normalize


def _port_range(value: str | int) -> str:
    example = '"40000 40009"'
    if not isinstance(value, str):
        raise BadValue(
            f"the number {value} is not a port range",
            f'write both ends as text in quotes: "LOW HIGH", e.g. {example}',
        )
    parts = value.split()
    numbers = [_to_int(p) for p in parts]
    if len(parts) != 2 or numbers[0] is None or numbers[1] is None:
        raise BadValue(
            f"{value!r} is not a port range", f'write "LOW HIGH" with a space, e.g. {example}'
        )
    low, high = numbers[0], numbers[1]
    if not 1 <= low <= high <= 65535:
        raise BadValue(
            f"{value!r} is not a port range from 1 to 65535 with LOW <= HIGH",
            f"use 1 <= LOW <= HIGH <= 65535, e.g. {example}",
        )
    return f"{low} {high}"


def _to_int(value: str | int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (4300)
        return None


SYSCTLS: Mapping[str, Sysctl] = {
    s.key: s
    for s in (
        Sysctl(
            PORT_RANGE,
            'ephemeral ports for outgoing connections, "LOW HIGH"',
            "40000 40009",
            _port_range,
        ),
        Sysctl(
            UNPRIVILEGED_PORT_START,
            "lowest port an unprivileged process may bind (0-65535)",
            "1024",
            _integer(0, 65535),
        ),
        Sysctl(
            "net.ipv4.tcp_fin_timeout",
            "seconds an orphaned connection stays in FIN-WAIT-2 (1-3600)",
            "30",
            _integer(1, 3600, " seconds"),
        ),
        Sysctl(
            "net.ipv4.tcp_tw_reuse",
            "reuse TIME-WAIT sockets for new outgoing connections (0 off, 1 on, 2 loopback)",
            "1",
            _choice(0, 1, 2),
        ),
        Sysctl(
            "net.ipv4.tcp_rfc1337",
            "TIME-WAIT sockets ignore RSTs, RFC 1337 (0 off, 1 on)",
            "1",
            _choice(0, 1),
        ),
        Sysctl(
            "net.ipv4.tcp_syn_retries",
            "SYN retransmissions before connect() gives up (1-127)",
            "2",
            _integer(1, 127),
        ),
        Sysctl(
            "net.core.somaxconn",
            "upper limit of a listen() backlog",
            "4096",
            _integer(0, INT_MAX),
        ),
        Sysctl(
            "net.ipv4.icmp_ratelimit",
            "minimum milliseconds between rate-limited ICMP errors (0 disables)",
            "0",
            _integer(0, INT_MAX, " milliseconds"),
        ),
        Sysctl(
            "net.ipv4.icmp_msgs_per_sec",
            "ICMP messages per second the host may send in total",
            "10000",
            _integer(0, INT_MAX),
        ),
        Sysctl(
            "net.ipv4.icmp_msgs_burst",
            "burst size of the ICMP messages per second limit",
            "10000",
            _integer(0, INT_MAX),
        ),
        Sysctl(
            "net.ipv6.icmp.ratelimit",
            "minimum milliseconds between rate-limited ICMPv6 errors (0 disables)",
            "0",
            _integer(0, INT_MAX, " milliseconds"),
        ),
    )
}


Finding = tuple[str, bool, str, str]  # key, at the key (not the value), message, fix


def check(written: Mapping[str, str | int]) -> tuple[dict[str, str], list[Finding]]:
    """Check a host's sysctls; the values to write, in write order, and what is wrong."""
    values: dict[str, str] = {}
    findings: list[Finding] = []
    for key, value in written.items():
        if key in FORWARDING_KEYS:
            message = f"{key} cannot be set as a sysctl"
            findings.append((key, True, message, "write `forwarding: true` in this host instead"))
            continue
        rule = SYSCTLS.get(key)
        if rule is None:
            allowed = f"allowed keys: {', '.join(SYSCTLS)}"
            close = difflib.get_close_matches(key, list(SYSCTLS), n=1)
            fix = f"did you mean {close[0]!r}? {allowed}" if close else allowed
            findings.append((key, True, f"sysctl {key!r} is not in the safe set", fix))
            continue
        try:
            values[key] = rule.normalize(value)
        except BadValue as exc:
            findings.append((key, False, str(exc), exc.fix))
    findings += _check_port_start(values)
    return _write_order(values), findings


def _check_port_start(values: dict[str, str]) -> list[Finding]:
    """The kernel refuses an ephemeral range starting below the unprivileged port start."""
    start = int(values.get(UNPRIVILEGED_PORT_START, DEFAULT_UNPRIVILEGED_PORT_START))
    low = int(values[PORT_RANGE].split()[0]) if PORT_RANGE in values else None
    default = DEFAULT_PORT_RANGE[0]
    if start <= (default if low is None else low):
        return []
    if low is not None:
        message = (
            f"the port range starts at {low}, below {UNPRIVILEGED_PORT_START} ({start}); "
            "the kernel refuses that"
        )
        fix = (
            f"start the range at {start} or above, or set {UNPRIVILEGED_PORT_START} to "
            f"{low} or less"
        )
        return [(PORT_RANGE, False, message, fix)]
    message = (
        f"{start} is above the start of the ephemeral port range ({default} by default); "
        "the kernel refuses that"
    )
    fix = f"use {default} or less, or set {PORT_RANGE} to start at {start} or above"
    return [(UNPRIVILEGED_PORT_START, False, message, fix)]


def _write_order(values: dict[str, str]) -> dict[str, str]:
    """Order sysctls so that writing them one by one never trips the kernel's checks.

    The kernel refuses an ip_unprivileged_port_start above the current start of
    ip_local_port_range, and a range starting below the current unprivileged start.
    Lowering the start goes first; raising it goes after the range.
    """
    if UNPRIVILEGED_PORT_START not in values or PORT_RANGE not in values:
        return values
    keys = list(values)
    i, j = keys.index(UNPRIVILEGED_PORT_START), keys.index(PORT_RANGE)
    start_first = int(values[UNPRIVILEGED_PORT_START]) <= DEFAULT_PORT_RANGE[0]
    if (i < j) != start_first:
        keys[i], keys[j] = keys[j], keys[i]
    return {key: values[key] for key in keys}
