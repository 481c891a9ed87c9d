"""Key paths into a topology document, and how they are written in messages."""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


def format_path(path: Path) -> str:
    """`("hosts", "h2", "routes", 0, "via")` -> `hosts.h2.routes[0].via`.

    Keys that are not plain names (sysctl keys contain dots) are quoted:
    `hosts.h2.sysctls["net.core.somaxconn"]`.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN.fullmatch(part):
            out += f".{part}" if out else part
        else:
            quoted = part.replace("\\", "\\\\").replace('"', '\\"')
            out += f'["{quoted}"]'
    return out
