"""`netharness ps LAB [HOST]`: who owns each port, every host of a running lab at once."""

from __future__ import annotations

import json
import sys

import click


@click.command()
@click.argument("lab")
@click.argument("host", required=False)
@click.option(
    "--all", "every", is_flag=True, help="Every socket (as `ss -tupan`), not only listeners."
)
@click.option("--json", "json_out", is_flag=True, help="Print JSON for scripts.")
def ps(lab: str, host: str | None, every: bool, json_out: bool) -> None:
    """The listeners of each host (as `ss -tulpn` in it) with the processes that own them:
    proto, local and peer address, state, pid, user, command; read through sock_diag and
    /proc, for all hosts of the lab at once (or HOST only)."""
    from harness.cli._console import out
    from harness.errors import UsageError
    from harness.lab import Lab
    from harness.observe import sockets

    with Lab.attach(lab) as running:
        if host is not None and host not in running.hosts:
            known = ", ".join(running.hosts)
            raise UsageError(f"lab {lab} has no host {host!r} (hosts: {known})")
        found = sockets.tables(running, [host] if host else None, listening=not every)
    if json_out:
        hosts = {name: table.to_json() for name, table in found.items()}
        data = {"lab": lab, "listening_only": not every, "hosts": hosts}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    what = "sockets" if every else "listeners"
    for index, (name, table) in enumerate(found.items()):
        if index:
            out.print()
        out.print(f"host {name}: {len(table.sockets)} {what}", markup=False)
        out.print(sockets.text(table, width=10_000), markup=False)
