"""How fast probes classify ports, against nmap and against waiting out every timeout.

    python bench/probe.py [--runs 5] [--timeout 0.5]

In one lab, each run measures, in a rotating order:

- sweep: `probe_cells` over 1-65535/tcp of one target that listens on a few ports and
  drops a few (so the sweep has to wait out one timeout), timed in the controller from
  the call to the last result, JSON transfer included;
- nmap: `nmap -sT -p- -T4 -Pn -n` of the same target from the same namespace (Debian's
  nmap, a connect scan as ours is), timed around the command;
- table: a 20x20-host truth table (every ordered pair, 5 ports each, 1900 cells), each
  host dropping one of the five ports, so 20 % of the cells are filtered; its time is
  compared with the sum of those cells' timeouts (what probing one cell after another
  would cost) and with one timeout.

Printed: the median of the runs (min-max), ratios, whether nmap and we agreed on every
port, `target:` lines, and a one-line JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

from harness import Lab
from harness.checks.probe import Cell, probe_cells
from harness.topology import parse_topology

OPEN = (22, 80, 443, 8080, 40000)
DROPPED = (23, 8443, 50000)
TABLE_PORTS = (22, 80, 443, 5432, 8080)
TABLE_HOSTS = 20

SWEEP = f"""\
name: bench-sweep
networks:
  lan: {{subnet: 10.77.0.0/24}}
hosts:
  scanner: {{networks: {{lan: 10.77.0.10}}}}
  target:
    networks: {{lan: 10.77.0.20}}
    services: [{", ".join(f"{{proto: tcp, port: {p}}}" for p in OPEN)}]
    nft: |
      table inet bench {{
        chain input {{
          type filter hook input priority 0; policy accept;
          tcp dport {{ {", ".join(map(str, DROPPED))} }} drop
        }}
      }}
"""


def table_topology() -> str:
    lines = ["name: bench-table", "networks:", "  lan: {subnet: 10.78.0.0/24}", "hosts:"]
    services = ", ".join(f"{{proto: tcp, port: {p}}}" for p in TABLE_PORTS)
    for i in range(TABLE_HOSTS):
        dropped = TABLE_PORTS[i % len(TABLE_PORTS)]
        lines += [
            f"  h{i:02d}:",
            f"    networks: {{lan: 10.78.0.{i + 10}}}",
            f"    services: [{services}]",
            "    nft: |",
            "      table inet bench {",
            "        chain input {",
            "          type filter hook input priority 0; policy accept;",
            f"          tcp dport {dropped} drop",
            "        }",
            "      }",
        ]
    return "\n".join(lines) + "\n"


def median_text(values: list[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.3f} {unit} (min {min(values):.3f} - max {max(values):.3f})"


def nmap_sweep(lab: Lab, address: str) -> tuple[float, dict[int, str]]:
    argv = ["nmap", "-sT", "-p-", "-T4", "-Pn", "-n", "-oX", "-", address]
    started = time.monotonic()
    result = lab.hosts["scanner"].run(argv, timeout=600)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"nmap failed: {result.stderr.strip()}")
    states = {
        int(port.get("portid", "0")): state.get("state", "")
        for port in ET.fromstring(result.stdout).iter("port")
        if (state := port.find("state")) is not None
    }
    return seconds, states


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.25,
        help="our probe timeout (nmap -T4 adapts its own to the RTT: 100 ms here)",
    )
    args = parser.parse_args()
    timeout = args.timeout
    times: dict[str, list[float]] = {"sweep": [], "nmap": [], "table": []}
    disagreements: list[str] = []
    filtered_cells = 0

    with Lab.up(parse_topology(SWEEP, "bench-sweep.yaml")) as sweep_lab:
        address = sweep_lab.hosts["target"].address()
        cells = [Cell("scanner", "target", port, "tcp") for port in range(1, 65536)]

        def ours() -> None:
            started = time.monotonic()
            results = probe_cells(sweep_lab, cells, timeout=timeout)
            times["sweep"].append(time.monotonic() - started)
            interesting = {r.port: r.state for r in results if r.state != "closed"}
            expected = {**dict.fromkeys(OPEN, "open"), **dict.fromkeys(DROPPED, "filtered")}
            if interesting != expected:
                disagreements.append(f"netharness saw {interesting}, expected {expected}")

        def theirs() -> None:
            seconds, states = nmap_sweep(sweep_lab, address)
            times["nmap"].append(seconds)
            listed = {p: s for p, s in states.items() if s != "closed"}
            expected = {**dict.fromkeys(OPEN, "open"), **dict.fromkeys(DROPPED, "filtered")}
            if listed != expected:
                disagreements.append(f"nmap saw {listed}, expected {expected}")

        methods: list[Callable[[], None]] = [ours, theirs]
        for run in range(args.runs):
            for method in methods[run % 2 :] + methods[: run % 2]:
                method()

    with Lab.up(parse_topology(table_topology(), "bench-table.yaml")) as table_lab:
        hosts = list(table_lab.hosts)
        cells = [
            Cell(src, dst, port, "tcp")
            for src in hosts
            for dst in hosts
            if src != dst
            for port in TABLE_PORTS
        ]
        for _run in range(args.runs):
            started = time.monotonic()
            results = probe_cells(table_lab, cells, timeout=timeout)
            times["table"].append(time.monotonic() - started)
            filtered_cells = sum(r.state == "filtered" for r in results)
            wrong = [
                r.cell
                for r in results
                if (r.state == "filtered")
                != (r.port == TABLE_PORTS[hosts.index(r.target) % len(TABLE_PORTS)])
            ]
            if wrong:
                disagreements.append(f"table cells misclassified: {wrong[:5]}")

    sweep, nmap, table = (statistics.median(times[k]) for k in ("sweep", "nmap", "table"))
    serial = filtered_cells * timeout
    print(f"probe bench: {args.runs} runs, probe timeout {timeout:g} s")
    print(f"  sweep 1-65535/tcp, netharness  {median_text(times['sweep'])}")
    print(f"  sweep 1-65535/tcp, nmap -T4    {median_text(times['nmap'])}")
    print(f"  nmap / netharness              {nmap / sweep:.2f}x")
    print(
        f"  table {TABLE_HOSTS}x{TABLE_HOSTS} hosts x {len(TABLE_PORTS)} ports "
        f"({len(cells)} cells, {filtered_cells} filtered)  {median_text(times['table'])}"
    )
    print(f"  sum of the filtered cells' timeouts {serial:.1f} s: {serial / table:.0f}x longer")
    print(f"  table / one timeout            {table / timeout:.2f}")
    print(f"  disagreements: {'; '.join(disagreements) or 'none'}")
    print(
        f"target: 1-65535/tcp classified faster than nmap -sT -p- -T4: "
        f"{nmap / sweep:.2f}x — {'met' if sweep < nmap else 'missed'}"
    )
    print(
        f"target: a table with {filtered_cells} filtered cells costs about one timeout: "
        f"{table / timeout:.1f} timeouts — {'met' if table < 3 * timeout else 'missed'}"
    )
    summary = {
        "bench": "probe",
        "runs": args.runs,
        "timeout_s": timeout,
        "sweep_s": round(sweep, 4),
        "nmap_s": round(nmap, 4),
        "nmap_over_sweep": round(nmap / sweep, 3),
        "table_cells": len(cells),
        "table_filtered": filtered_cells,
        "table_s": round(table, 4),
        "serial_timeouts_s": round(serial, 2),
        "agreed": not disagreements,
    }
    print(json.dumps(summary, separators=(",", ":")))
    if disagreements:
        sys.exit(1)


if __name__ == "__main__":
    main()
