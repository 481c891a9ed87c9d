"""Helpers every kind of test uses: the command line as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def netharness(
    *args: str, input: str | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `netharness ARGS` from the repository root and capture what it says."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        check=False,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def start(*args: str) -> subprocess.Popen[str]:
    """Start `netharness ARGS` without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
