"""Key paths into a topology document, and how they are written in messages."""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


def format_path(path: Path) -> str:
    """`("hosts", "h2", "routes", 0, "via")` -> `hosts.h2.routes[0].via`.

    Keys that are not plain names (sysctl keys contain dots) are quoted:
    `hosts.h2.sysctls["net.core.somaxconn"]`; characters that do not print (line breaks,
    controls) are escaped as in Python, so a path stays on its line: `["a\\nb"]`.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN.fullmatch(part):
            out += f".{part}" if out else part
        else:
            quoted = "".join(_escape(c) for c in part)
            out += f'["{quoted}"]'
    return out


def printable(text: str) -> str:
    """`text` with every character that does not print escaped (`\\n`, `\\x1b`, `\\u2028`).

    Messages quote what the file says; escaped, a problem stays on one line and cannot
    move the cursor of the terminal it is printed on.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    return char if char.isprintable() else repr(char)[1:-1]
