"""Port lists as written (`port: 443`, `ports: "5000-5100"`, `ports: [22, "80-89"]`)."""

from __future__ import annotations

import re

PortRanges = tuple[tuple[int, int], ...]  # inclusive, sorted, merged

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_FIX = 'write a port such as 443, a range such as "5000-5100", or a list of them'


class BadPorts(ValueError):
    """A port list is not acceptable; `index` is the list item at fault (None: the value)."""

    def __init__(self, message: str, fix: str, index: int | None = None) -> None:
        super().__init__(message)
        self.fix = fix
        self.index = index


def parse_ports(value: str | list[int | str]) -> PortRanges:
    """The ranges a `ports:` value names; BadPorts says what is wrong with it."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise BadPorts("the list of ports is empty", _FIX)
    ranges = []
    for index, item in enumerate(items):
        at = index if isinstance(value, list) else None
        if isinstance(item, int):
            ranges.append((item, item))  # 1-65535 is checked by the structure
            continue
        match = _RANGE.match(item)
        if match is None:
            raise BadPorts(f"{item!r} is not a port or a range", _FIX, at)
        low = int(match.group(1))
        high = int(match.group(2) or low)
        for number in (low, high):
            if not 1 <= number <= 65535:
                raise BadPorts(f"port {number} is out of range", "use ports from 1 to 65535", at)
        if low > high:
            raise BadPorts(f"{item!r} runs backwards", f'did you mean "{high}-{low}"?', at)
        ranges.append((low, high))
    return merge(ranges)


def merge(ranges: list[tuple[int, int]]) -> PortRanges:
    """Sorted ranges with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return tuple(out)


def covers(outer: PortRanges, inner: PortRanges) -> bool:
    """Whether every port of `inner` is in `outer`."""
    return all(any(lo <= low and high <= hi for lo, hi in outer) for low, high in inner)


def count(ranges: PortRanges) -> int:
    return sum(high - low + 1 for low, high in ranges)


def describe(ranges: PortRanges) -> str:
    """`22, 80-89` for messages and comments."""
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)
