"""Every command that brings a lab up takes the same switches (harness/cli/_bringup.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from harness.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
BRINGUP = {
    "--backend",
    "--build",
    "--progress",
    "--capture",
    "--capture-dir",
    "--trust-new-host-keys",
    "--save-host-keys",
}


def flags(name: str) -> set[str]:
    command = app.get_command(click.Context(app), name)
    assert command is not None, name
    return {opt for param in command.params for opt in param.opts}


@pytest.mark.parametrize("name", ["up", "suite", "check"])
def test_every_bringing_up_verb_takes_the_same_switches(name: str) -> None:
    assert flags(name) >= BRINGUP, BRINGUP - flags(name)


@pytest.mark.parametrize(
    ("verb", "switch"),
    [
        ("suite", ["--backend", "docker"]),
        ("check", ["--capture"]),
        ("suite", ["--build"]),
    ],
)
def test_bringup_switches_on_a_running_lab_are_refused(
    verb: str, switch: list[str], tmp_path: Path
) -> None:
    # A lab id, not a file: the switches cannot shape a lab that is already up, and the
    # refusal comes before anything looks for the lab.
    args = [verb, *(["all"] if verb == "suite" else []), "nosuchlab", *switch]
    result = subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"NETHARNESS_RUN_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert switch[0] in result.stderr
    assert "running lab nosuchlab" in result.stderr
    assert "Traceback" not in result.stderr
