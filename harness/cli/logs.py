"""`netharness logs LAB HOST [NAME]`: the logs of the user's processes in a running lab.

Each process's stdout and stderr are one file, `logs/<host>/<name>.log` under the lab's
ledger (gone with the lab); lab.json names the processes the lab's owner started.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.cli._console import out
from harness.core import ledger as _ledger
from harness.errors import UsageError


@click.command()
@click.argument("lab")
@click.argument("host")
@click.argument("name", required=False)
@click.option(
    "--tail", "lines", type=click.IntRange(min=0), default=None, help="Only the last N lines."
)
def logs(lab: str, host: str, name: str | None, lines: int | None) -> None:
    """Print the log of a process of yours in a host (all of the host's, each under a
    header, when NAME is omitted)."""
    record = _ledger.find_lab(lab)
    hosts = record.info.get("hosts", {})
    if host not in hosts:
        raise UsageError(f"lab {lab} has no host {host!r} (hosts: {', '.join(sorted(hosts))})")
    known = _logs_of(record.dir / "logs" / host)
    recorded: dict[str, Any] = dict(hosts[host].get("processes") or {})
    if name is not None:
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise UsageError(
                f"host {host} of lab {lab} has no process {name!r} (processes: {names})"
            )
        _write(known[name], lines)
        return
    if not known:
        out.print(f"host {host} of lab {lab} runs no processes of yours")
        return
    for index, (each, path) in enumerate(sorted(known.items())):
        pid = (recorded.get(each) or {}).get("pid")
        header = f"==> {host}/{each}" + (f" (pid {pid})" if pid else "") + f" {path} <=="
        sys.stdout.write(("\n" if index else "") + header + "\n")
        _write(path, lines)


def _logs_of(directory: Path) -> dict[str, Path]:
    try:
        return {p.stem: p for p in directory.glob("*.log") if p.is_file()}
    except OSError:
        return {}


def _write(path: Path, lines: int | None) -> None:
    data = path.read_bytes()
    if lines is not None:
        kept = data.splitlines(keepends=True)[-lines:] if lines else []
        data = b"".join(kept)
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    if data and not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()
