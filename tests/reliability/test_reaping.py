"""Guarantee 1: a lab whose controller dies by any signal is torn down by itself."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.rootns import snapshot
from tests.reliability.support import ROOT, cycles, netharness, star, start, wait_clean

pytestmark = pytest.mark.usefixtures("needs_root")
NETNS_BOUND = 1.0  # seconds: a namespace lab is gone this long after its owner died


def test_kill_at_random_points_of_bring_up_and_running(tmp_path: Path, load: str) -> None:
    """`netharness up` of 20 hosts, SIGKILLed at a random moment, cycle after cycle."""
    topology = star(tmp_path / "star20.yaml", 20)
    rng = random.Random(20261123)
    before = snapshot()
    # One untimed run tells how long bring-up takes here, to spread the kill points.
    started = time.monotonic()
    probe = start("up", str(topology), "--json")
    out, _ = probe.communicate(timeout=60)
    full = time.monotonic() - started
    info = json.loads(out)
    assert netharness("down", info["id"]).returncode == 0
    worst = 0.0
    killed_during = {"bring-up": 0, "running": 0}
    for cycle in range(cycles(10, 50)):
        proc = start("up", str(topology), "--json")
        # Alternate: a random point inside bring-up, then one after the lab is running.
        time.sleep(rng.uniform(0, 0.9) * full if cycle % 2 == 0 else rng.uniform(1.3, 2) * full)
        proc.send_signal(signal.SIGKILL)  # the controller, wherever it is
        out, _ = proc.communicate()
        if out:
            # It had announced the lab (and handed it over): now kill the lab's owner.
            os.kill(json.loads(out)["owner_pid"], signal.SIGKILL)
            killed_during["running"] += 1
        else:
            killed_during["bring-up"] += 1
        elapsed, left = wait_clean(before, within=NETNS_BOUND)
        assert left == [], f"{load}, cycle {cycle}: left after {elapsed:.2f} s: {left}"
        worst = max(worst, elapsed)
    assert worst <= NETNS_BOUND
    assert killed_during["bring-up"], killed_during  # both kinds of kill happened
    assert killed_during["running"], killed_during


def test_agents_exit_within_a_second_of_their_controllers_death(load: str) -> None:
    program = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from harness import Lab
lab = Lab.up({str(ROOT / "topologies" / "lan.yaml")!r})
agents = [lab.hosts[h].agent() for h in lab.hosts]
print(" ".join(str(a.process.pid) for a in agents), flush=True)
time.sleep(60)
"""
    before = snapshot()
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 3
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    killed = time.monotonic()
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() - killed < 1:
        time.sleep(0.01)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    elapsed, left = wait_clean(before, within=NETNS_BOUND)
    assert left == [], f"{load}: left after {elapsed:.2f} s: {left}"
