"""`netharness graph`: draw a topology file or a running lab with Graphviz."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from harness.checks.graph import FORMATS, Format, render, topology_dot
from harness.core import ledger as _ledger
from harness.errors import LabNotFound, UsageError

if TYPE_CHECKING:
    from harness.topology import Topology


@click.command()
@click.argument("target")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="File to write (default: standard output). Its suffix picks the format.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="dot, svg or png (default: from the output's suffix, else svg).",
)
def graph(target: str, output: Path | None, fmt: Format | None) -> None:
    """Draw a topology file or a running lab (by id): hosts, routers, networks,
    addresses, routes, services and firewall policies."""
    topology = _load(target)
    fmt = fmt or _format_of(output)
    data = render(topology_dot(topology), fmt)
    if output is None:
        if fmt == "png" and sys.stdout.isatty():
            raise UsageError("a PNG on a terminal is unreadable; add -o FILE.png")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    output.write_bytes(data)
    click.echo(f"wrote {output} ({fmt}, {len(data)} bytes)")


def _format_of(output: Path | None) -> Format:
    suffix = output.suffix.lstrip(".").lower() if output is not None else ""
    for fmt in FORMATS:
        if fmt == suffix:
            return fmt
    return "svg"


def _load(target: str) -> Topology:
    """A topology file, or the topology a running lab was built from."""
    from harness.topology import load_topology, parse_topology

    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_topology(path)
    if not _ledger.is_lab_id(target):
        raise UsageError(f"{target} is neither a topology file nor a lab id")
    record = _ledger.find_lab(target)
    try:
        text = (record.dir / "topology.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabNotFound(f"lab {target} is still coming up or going down") from None
    return parse_topology(text, str(record.info.get("source", target)))
