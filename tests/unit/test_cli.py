"""The command line on bad input: one clear message, exit 2, no traceback, nothing made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "bad"


def netharness(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, NETHARNESS_RUN_DIR=str(tmp_path))


def test_validate_reports_every_problem_with_its_place(run_dir: dict[str, str]) -> None:
    bad = BAD / "many_problems.yaml"
    result = netharness("validate", str(bad), env=run_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(bad))]
    expected = (BAD / "many_problems.expected").read_text().splitlines()
    assert len(lines) == len(expected) > 1
    assert "nothing was created" in result.stderr


def test_validate_accepts_the_shipped_topologies(run_dir: dict[str, str]) -> None:
    files = sorted(str(p) for p in (ROOT / "topologies").glob("*.yaml"))
    result = netharness("validate", *files, env=run_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(files)


def test_up_with_a_bad_topology_creates_nothing(run_dir: dict[str, str], tmp_path: Path) -> None:
    netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    result = netharness("up", str(BAD / "many_problems.yaml"), env=run_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "labs").exists()
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert after == netns_before


def test_a_missing_file_is_bad_input(run_dir: dict[str, str]) -> None:
    result = netharness("validate", "no/such/file.yaml", env=run_dir)
    assert result.returncode == 2
    assert "no/such/file.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_labs_are_named_clearly(run_dir: dict[str, str]) -> None:
    gone = netharness("down", "abcdef", env=run_dir)
    assert gone.returncode == 0
    assert "already gone" in gone.stdout
    missing = netharness("exec", "abcdef", "h1", "--", "true", env=run_dir)
    assert missing.returncode == 2
    assert "no lab 'abcdef'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_usage_errors_exit_2(run_dir: dict[str, str]) -> None:
    result = netharness("frobnicate", env=run_dir)
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_ls_and_clean_on_an_empty_machine(run_dir: dict[str, str]) -> None:
    assert json.loads(netharness("ls", "--json", env=run_dir).stdout) == []
    assert netharness("ls", env=run_dir).stdout.strip() == "no labs"
    assert netharness("clean", env=run_dir).stdout.strip() == "nothing to clean"


def test_schema_is_json_with_the_top_level_keys(run_dir: dict[str, str]) -> None:
    schema = json.loads(netharness("schema", env=run_dir).stdout)
    assert set(schema["properties"]) >= {"name", "networks", "hosts"}
    assert schema["additionalProperties"] is False
