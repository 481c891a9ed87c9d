"""Shared by the reliability tests: the CLI, a 20-host topology, waiting for a clean root."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from harness.core import ledger
from tests.integration.rootns import RootSnapshot, foreign_labs, lab_namespaces, snapshot
from tests.support import ROOT, netharness, start

LAN = ROOT / "topologies" / "lan.yaml"
LABS = ledger.labs_dir()  # the user's own in a rootless run (tests/conftest.py)
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


def lab_leftovers(before: RootSnapshot) -> list[str]:
    """What a reaper removes and this run's labs still hold: namespaces not there before
    and ledgers. Cheap (a directory listing each), so a wait can poll it every few ms."""
    left = [f"namespaces: new {name}" for name in sorted(lab_namespaces() - before.namespaces)]
    foreign = foreign_labs()
    ledgers = sorted(p.name for p in LABS.glob("*") if p.name not in foreign)
    return left + [f"ledger {name}" for name in ledgers]


def wait_clean(before: RootSnapshot, within: float) -> tuple[float, list[str]]:
    """Wait until this run's labs are gone, then compare the whole root namespace.

    Returns the time the labs took to go (or `within` if they never did) and what still
    differs. The timing polls only what a reaper removes: a full snapshot (nft, docker,
    every net sysctl) takes longer than the bound itself on a busy machine, and would
    measure the test rather than the product. Everything else is compared right after.
    """
    started = time.monotonic()
    while True:
        left = lab_leftovers(before)
        elapsed = time.monotonic() - started
        if not left or elapsed > within:
            break
        time.sleep(0.002)
    if not left:
        left = before.difference(snapshot())
    return elapsed, left


@contextlib.contextmanager
def cpu_hogs() -> Iterator[int]:
    """One busy-loop process per core for the length of the block (yields how many), so
    a bound is shown to hold on a loaded machine, not only on a quiet one."""
    count = os.cpu_count() or 2
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield count
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


__all__ = ["ROOT", "lab_namespaces", "netharness", "start"]  # re-exported for the reliability tests
