"""Guarantee 2: Ctrl-C tears down within a bound, exits 130 and leaves nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.rootns import snapshot
from tests.reliability.support import ROOT, cycles, star, wait_clean, wait_for_lab_of

pytestmark = pytest.mark.usefixtures("needs_root")
BOUND = 2.0  # seconds from SIGINT to exit, teardown included


def test_ctrl_c_during_up(tmp_path: Path, spawned: list[subprocess.Popen[str]], load: str) -> None:
    topology = star(tmp_path / "star50.yaml", 50)
    before = snapshot()
    for delay in [0.0, 0.02, 0.05, 0.1, 0.2][: cycles(3, 5)]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "up", str(topology)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        spawned.append(proc)
        # Interrupt bring-up itself: once the lab's ledger exists, plus `delay`.
        wait_for_lab_of(proc.pid, within=10)
        time.sleep(delay)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        if proc.returncode == 0:  # it finished before the signal landed: take it down
            lab_id = out.split()[1]
            subprocess.run(
                [sys.executable, "-m", "harness", "down", lab_id], check=True, capture_output=True
            )
            continue
        assert proc.returncode == 130, err
        assert "interrupted" in err
        assert "Traceback" not in err
        assert took < BOUND
        elapsed, left = wait_clean(before, within=0.5)
        assert left == [], f"left {elapsed:.2f} s after Ctrl-C at {delay} s: {left}"


def test_ctrl_c_during_a_pytest_run(
    pytester: pytest.Pytester, spawned: list[subprocess.Popen[str]], load: str
) -> None:
    lan = ROOT / "topologies" / "lan.yaml"
    marker = pytester.path / "in-test"
    pytester.makepyfile(f"""
        import pathlib, time
        import pytest

        @pytest.mark.topology({str(lan)!r})
        def test_long(lab):
            pathlib.Path({str(marker)!r}).write_text(lab.id)
            time.sleep(60)
    """)
    before = snapshot()
    proc = subprocess.Popen(
        # Without hypothesis's plugin (installed for our own fuzz tests): at the end of
        # every run it imports all of hypothesis, ~0.5 s quiet and 1.5 s on a busy machine,
        # which is not netharness's teardown and not in a user's run.
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesispytest",
            str(pytester.path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=pytester.path,
    )
    spawned.append(proc)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the inner test never started"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < BOUND
    assert proc.returncode == 130, out
    assert "KeyboardInterrupt" in out
    elapsed, left = wait_clean(before, within=0.5)
    assert left == [], f"left after {elapsed:.2f} s: {left}"


def test_ctrl_c_during_a_suite(spawned: list[subprocess.Popen[str]], load: str) -> None:
    before = snapshot()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "suite", "all", str(ROOT / "topologies" / "lan.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    spawned.append(proc)
    wait_for_lab_of(proc.pid, within=10)
    time.sleep(0.5)  # bring-up is done by now: the suites are running
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < BOUND
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    elapsed, left = wait_clean(before, within=0.5)
    assert left == [], f"left {elapsed:.2f} s after Ctrl-C: {left}"
