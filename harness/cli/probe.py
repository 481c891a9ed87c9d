"""`netharness probe`, `matrix` and `check`: reachability from the command line.

Registered on the main command group by `harness.cli.main`; errors go up to its `main`, which
prints them and picks the exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.cli._bringup import bring_up, lab_options, progress_shown, refuse_bringup_options
from harness.cli._console import out
from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.lab import Lab


json_option = click.option("--json", "json_out", is_flag=True, help="Print JSON for scripts.")
timeout_option = click.option(
    "--timeout",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds a probe waits for an answer, counted from when its packet left.",
)
family_option = click.option("-6", "ipv6", is_flag=True, help="Probe over IPv6.")
svg_option = click.option(
    "--svg",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also draw the truth table as an SVG picture into this file.",
)


def _write_svg(path: Path | None, table: Any, title: str) -> None:
    if path is not None:
        from harness.checks.graph import render_matrix_svg

        path.write_text(render_matrix_svg(table, title=title), encoding="utf-8")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _open_lab(target: str) -> tuple[Lab, bool]:
    """(lab, is_file): a topology file is brought up, anything else is a running lab id."""
    from harness.lab import Lab
    from harness.topology import load_topology

    is_file = Path(target).suffix in (".yaml", ".yml") or Path(target).is_file()
    if is_file:
        spec = load_topology(Path(target))
        with progress_shown(len(spec.hosts)) as callback:
            return bring_up(spec, callback), True
    refuse_bringup_options(target)
    return Lab.attach(target), False


@click.command()
@click.argument("lab")
@click.argument("source")
@click.argument("destination", metavar="DST:PORT/PROTO")
@timeout_option
@family_option
@json_option
def probe(
    lab: str, source: str, destination: str, timeout: float, ipv6: bool, json_out: bool
) -> None:
    """Probe one port of a host (or address) from inside SOURCE: open, closed, filtered
    or open|filtered, with the reason (e.g. `netharness probe LAB client1 web:443/tcp`)."""
    from harness.checks.probe import host_of, parse_port_spec
    from harness.checks.probe import probe as run_probe
    from harness.lab import Lab

    target, port, proto = parse_port_spec(destination)
    with Lab.attach(lab) as running:
        name = host_of(running, target) if ":" in target or target[:1].isdigit() else None
        result = run_probe(
            running,
            source,
            name or target,
            port,
            proto,
            family=6 if ipv6 or ":" in target else 4,
            timeout=timeout,
            address=target if name else None,
        )
    if json_out:
        _print_json(result.to_json())
        return
    out.print(
        f"{result.source} -> {result.target} {result.address} {port}/{proto}: "
        f"[bold]{result.state}[/bold] ({result.reason}, {result.elapsed * 1000:.1f} ms)"
    )


@click.command()
@click.argument("lab")
@click.option(
    "--ports",
    default="22,80,443/tcp,53/udp",
    show_default=True,
    help="Ports to probe: a protocol applies to the ports before it (ranges: 8000-8010/tcp).",
)
@timeout_option
@family_option
@json_option
@svg_option
def matrix(
    lab: str, ports: str, timeout: float, ipv6: bool, json_out: bool, svg: Path | None
) -> None:
    """The observed truth table of a running lab: PORTS of every host from every other."""
    from harness.checks.probe import matrix as run_matrix
    from harness.checks.probe import parse_ports
    from harness.checks.probe_report import matrix_json, print_table
    from harness.lab import Lab

    wanted = parse_ports(ports)
    with Lab.attach(lab) as running:
        results = run_matrix(running, wanted, family=6 if ipv6 else 4, timeout=timeout)
    _write_svg(svg, results, f"lab {lab}: observed")
    if json_out:
        _print_json(matrix_json(lab, results))
        return
    print_table(out.console, results, title=f"lab {lab}: observed")


@click.command()
@click.argument("target", metavar="FILE|LAB")
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=2,
    show_default=True,
    help="Probe a mismatching cell again up to this many times before it counts.",
)
@timeout_option
@json_option
@svg_option
@lab_options
def check(target: str, retries: int, timeout: float, json_out: bool, svg: Path | None) -> None:
    """Probe every `expect:` entry of a topology and print expected against observed.

    FILE: bring it up, check, tear it down. LAB: check a running lab. Exit 1 on a miss."""
    from harness.checks.probe import check as run_check
    from harness.checks.probe_report import print_check

    lab, is_file = _open_lab(target)
    with lab:
        expectations = getattr(lab.topology, "expectations", ())
        owned = any(s.process for h in lab.topology.hosts.values() for s in h.services)
        if not expectations and not owned:
            raise UsageError(
                f"{lab.topology.source} has no `expect:` entries to check; add some "
                "(docs/topology.md) or use `netharness matrix` to see what is reachable"
            )
        report = run_check(lab, expectations, retries=retries, timeout=timeout)
    _write_svg(svg, report.verdicts, f"lab {lab.id}: expected against observed")
    if json_out:
        _print_json(report.to_json())
    else:
        print_check(out.console, report, lab_gone=is_file)
    if not report.passed:
        raise SystemExit(1)
