"""`make demo`: bring up a topology on the netns backend, open real sockets between its
hosts, show who answered whom, tear everything down; then check the firewalled
three-tier topology and print its truth table (expected against observed).

    python examples/demo.py topologies/lan.yaml
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import Lab, load_topology
from harness.checks.probe import check
from harness.checks.probe_report import print_check
from harness.checks.report import print_checks
from harness.checks.suites import SUITES, run_suite

THREE_TIER = Path(__file__).resolve().parents[1] / "topologies" / "three-tier.yaml"
# Wide enough for IPv6 endpoints even when make pipes the output (no terminal: 80 cols).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)


def main(path: str) -> int:
    topology = load_topology(path)
    console.print(f"[bold]netharness demo[/bold]: topology {topology.name!r} from {path}")
    started = time.perf_counter()
    with Lab.up(topology) as lab:
        console.print(f"lab {lab.id} up in {(time.perf_counter() - started) * 1000:.0f} ms")
        hosts = Table("host", "namespace", "addresses", title="hosts")
        for name, host in lab.hosts.items():
            hosts.add_row(
                name, host.netns, ", ".join(a for v in host.addresses.values() for a in v)
            )
        console.print(hosts)

        names = list(lab.hosts)
        server_host, client_hosts = lab.hosts[names[-1]], [lab.hosts[n] for n in names[:-1]]
        # Three applications on one host: three processes, one address, distinct ports.
        apps = [server_host.agent() for _ in range(3)]
        flows = Table(
            "proto",
            "client",
            "client endpoint",
            "server endpoint",
            "answered by pid",
            "server saw",
            "verdict",
            title=f"sockets between hosts (servers: 3 processes on {server_host.name})",
        )
        failures = 0
        for family in (4, 6):
            wildcard = "0.0.0.0" if family == 4 else "::"
            for proto in ("tcp", "udp"):
                for app in apps:
                    listener = app.listen(proto, address=wildcard, port=0)
                    for client_host in client_hosts:
                        client = client_host.agent()
                        target = server_host.address(family=family)
                        conn = client.connect(proto, target, listener.port)
                        echo = conn.request(f"hello from {client_host.name}")
                        ok = echo.pid == app.pid and tuple(echo.peer) == tuple(conn.local)
                        failures += not ok
                        flows.add_row(
                            f"{proto}/v{family}",
                            f"{client_host.name} (pid {client.pid})",
                            _ep(conn.local),
                            _ep(conn.peer),
                            str(echo.pid),
                            _ep(echo.peer),
                            "[green]exact process, no NAT[/green]" if ok else "[red]WRONG[/red]",
                        )
                        client.close()
        console.print(flows)
        console.print(
            f"{flows.row_count} flows, {failures} wrong; every answer came from the "
            "process that owns the destination port"
        )

        # The transport suites, on the same lab: each check with what it observed.
        checks = []
        for name in SUITES:
            suite_started = time.perf_counter()
            checks += run_suite(name, lab)
            console.print(f"suite {name}: {time.perf_counter() - suite_started:.1f} s")
        print_checks(console, checks, title=f"transport suites on lab {lab.id}")
        failures += sum(c.failed for c in checks)  # a skip (not applicable) is no failure
    console.print(f"lab {lab.id} torn down; total {time.perf_counter() - started:.2f} s")
    failures += truth_table(THREE_TIER)
    return 1 if failures else 0


def truth_table(path: Path) -> int:
    """`netharness check` of a firewalled topology: its expect block, probed as a scanner
    would, expected against observed. Returns the number of mismatches."""
    started = time.perf_counter()
    with Lab.up(load_topology(path)) as lab:
        report = check(lab, lab.topology.expectations)
    print_check(console, report, lab_gone=True)
    console.print(f"{path.name}: up, probed and down in {time.perf_counter() - started:.1f} s")
    return len(report.failed)


def _ep(endpoint: tuple[str, int] | None) -> str:
    if endpoint is None:
        return "-"
    host, port = endpoint
    return escape(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "topologies/lan.yaml"))
