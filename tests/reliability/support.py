"""Shared by the reliability tests: the CLI, a 20-host topology, waiting for a clean root."""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import ledger
from tests.integration.rootns import RootSnapshot, foreign_labs, lab_namespaces, snapshot
from tests.support import ROOT, netharness, start

LAN = ROOT / "topologies" / "lan.yaml"
LABS = Path("/run/netharness/labs")
SOAK = os.environ.get("NETHARNESS_SOAK") == "1"


def cycles(normal: int, soak: int) -> int:
    """How many times to repeat: fewer in `make test`, the full count in `make soak`."""
    return soak if SOAK else normal


def star(path: Path, hosts: int) -> Path:
    """A topology of `hosts` hosts on one network, written to `path`."""
    lines = ["name: star", "networks:", "  lan: {subnet: 10.0.0.0/16}", "hosts:"]
    lines += [f"  h{i:03d}: {{networks: {{lan: auto}}}}" for i in range(1, hosts + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_lab_of(pid: int, within: float) -> None:
    """Wait until process `pid` has a lab's ledger (another run's labs do not count)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(record.owner_pid == pid for record in ledger.list_labs()):
            return
        time.sleep(0.001)


def wait_clean(before: RootSnapshot, within: float) -> tuple[float, list[str]]:
    """Wait until the root namespace looks as before and no ledger is left.

    Returns the time it took (or `within` if it never did) and what still differs.
    """
    started = time.monotonic()
    while True:
        left = before.difference(snapshot())
        foreign = foreign_labs()
        ledgers = sorted(p.name for p in LABS.glob("*") if p.name not in foreign)
        left += [f"ledger {name}" for name in ledgers]
        elapsed = time.monotonic() - started
        if not left or elapsed > within:
            return elapsed, left
        time.sleep(0.01)


__all__ = ["ROOT", "lab_namespaces", "netharness", "start"]  # re-exported for the reliability tests
