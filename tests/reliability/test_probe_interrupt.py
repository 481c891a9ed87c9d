"""Ctrl-C while `netharness check` probes: exit 130 at once and nothing left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.rootns import snapshot
from tests.reliability.support import LABS, ROOT, wait_clean

pytestmark = pytest.mark.usefixtures("needs_root")
STATES = ROOT / "tests" / "data" / "good" / "probe_states.yaml"


def test_ctrl_c_while_check_waits_for_filtered_cells(
    spawned: list[subprocess.Popen[str]], load: str
) -> None:
    before = snapshot()
    known = set(LABS.glob("*"))
    # A 30 s timeout: the dropped cells keep the agents busy long after bring-up.
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "check", str(STATES), "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    spawned.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mine = [p for p in LABS.glob("*/lab.json") if p.parent not in known and _owned(p, proc.pid)]
        if mine and '"state": "up"' in mine[0].read_text():
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the lab was not up within 60 s (labs of {proc.pid}: {mine})")
    time.sleep(1.0)  # up, and probing
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert took < 5.0, f"{took:.1f} s from Ctrl-C to exit"
    # Only this lab counts: the machine is shared, other runs' labs come and go.
    lab = mine[0].parent.name
    elapsed, left = wait_clean(before, within=2.0)
    ours = [line for line in left if f"nh-{lab}" in line or f"ledger {lab}" in line]
    assert ours == [], f"left {elapsed:.2f} s after Ctrl-C: {ours}"


def _owned(info: Path, pid: int) -> bool:
    """Is this lab.json the lab of process `pid` (other runs make labs meanwhile)?"""
    try:
        return bool(json.loads(info.read_text()).get("owner_pid") == pid)
    except (OSError, ValueError):
        return False
