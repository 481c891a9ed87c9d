"""`netharness diagnose <lab> [HOST...]`: what each host of a running lab has, as text."""

from __future__ import annotations

import click


@click.command()
@click.argument("lab")
@click.argument("hosts", nargs=-1)
def diagnose(lab: str, hosts: tuple[str, ...]) -> None:
    """Print each host's links, routes, sockets, nft ruleset, agent log and pcaps, as a
    failing pytest test reports them (all hosts, or the ones named)."""
    from harness.cli._console import out
    from harness.errors import UsageError
    from harness.lab import Lab

    with Lab.attach(lab) as running:
        unknown = [h for h in hosts if h not in running.hosts]
        if unknown:
            known = ", ".join(running.hosts)
            raise UsageError(f"lab {lab} has no host {', '.join(unknown)} (hosts: {known})")
        out.print(running.diagnostics(list(hosts) or None), markup=False)
