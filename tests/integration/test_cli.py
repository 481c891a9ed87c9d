"""The `netharness` command against real labs, as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.core import ledger
from tests.integration.rootns import snapshot
from tests.support import netharness

ROOT = Path(__file__).resolve().parents[2]
LAN = str(ROOT / "topologies" / "lan.yaml")
LABS = ledger.labs_dir()  # the user's own in a rootless run (tests/conftest.py)


def lab_namespaces(lab_id: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(f"nh-{lab_id}"))
    except FileNotFoundError:
        return []


@pytest.fixture
def running_lab() -> Iterator[dict[str, object]]:
    result = netharness("up", LAN, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    try:
        yield info
    finally:
        netharness("down", str(info["id"]))


def test_up_prints_the_lab_and_its_hosts_and_ls_lists_it(running_lab: dict[str, object]) -> None:
    lab_id = str(running_lab["id"])
    hosts = running_lab["hosts"]
    assert isinstance(hosts, dict)
    assert hosts["h1"]["lan"][0] == "10.0.1.11"
    assert lab_namespaces(lab_id) == sorted([f"nh-{lab_id}"] + [f"nh-{lab_id}-{h}" for h in hosts])
    listed = json.loads(netharness("ls", "--json").stdout)
    (row,) = [r for r in listed if r["id"] == lab_id]
    assert row["alive"] is True
    assert row["hosts"] == ["h1", "h2", "h3"]
    assert row["owner_pid"] == running_lab["owner_pid"]
    human = netharness("ls").stdout
    assert lab_id in human
    assert "h1" in human


def test_exec_runs_inside_the_host_and_passes_the_exit_code(running_lab: dict[str, object]) -> None:
    lab_id = str(running_lab["id"])
    shown = netharness("exec", lab_id, "h1", "--", "ip", "-brief", "addr")
    assert shown.returncode == 0, shown.stderr
    assert "10.0.1.11/24" in shown.stdout
    assert "10.0.1.12" not in shown.stdout
    assert netharness("exec", lab_id, "h2", "--", "sh", "-c", "exit 7").returncode == 7
    missing = netharness("exec", lab_id, "nosuch", "--", "true")
    assert missing.returncode == 2
    assert "no host 'nosuch'" in missing.stderr


def test_namespaces_work_with_ip_netns_exec(running_lab: dict[str, object]) -> None:
    lab_id = str(running_lab["id"])
    ss = subprocess.run(
        ["ip", "netns", "exec", f"nh-{lab_id}-h1", "ss", "-H", "-tln"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ss.stdout.strip() == ""  # the agent opens no port of its own
    addr = subprocess.run(
        ["ip", "netns", "exec", f"nh-{lab_id}-h2", "ip", "-brief", "addr", "show", "lan"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "10.0.1.12/24" in addr.stdout


def test_shell_runs_an_interactive_shell_inside_the_host(running_lab: dict[str, object]) -> None:
    lab_id = str(running_lab["id"])
    result = netharness(
        "shell",
        lab_id,
        "h3",
        input="echo host=$NETHARNESS_HOST; cat /proc/net/dev | grep -c lan; exit 4\n",
    )
    assert result.returncode == 4
    assert "host=h3" in result.stdout
    assert result.stdout.strip().endswith("1")


def test_down_is_idempotent_and_leaves_nothing() -> None:
    before = snapshot()
    info = json.loads(netharness("up", LAN, "--json").stdout)
    lab_id = str(info["id"])
    first = netharness("down", lab_id)
    assert first.returncode == 0, first.stderr
    assert "is down" in first.stdout
    second = netharness("down", lab_id)
    assert second.returncode == 0
    assert "already gone" in second.stdout
    assert lab_namespaces(lab_id) == []
    assert before.difference(snapshot()) == []


def test_clean_removes_a_lab_whose_owner_was_killed_and_spares_live_ones(
    running_lab: dict[str, object],
) -> None:
    live = str(running_lab["id"])
    crashed = json.loads(netharness("up", LAN, "--json").stdout)
    crashed_id = str(crashed["id"])
    # The owner and its reaper die without a word (a machine-wide kill -9, an OOM kill).
    reaper = json.loads((LABS / crashed_id / "lab.json").read_text())["reaper_pid"]
    os.kill(reaper, signal.SIGKILL)
    os.kill(int(crashed["owner_pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while json.loads(netharness("ls", "--json").stdout) and time.monotonic() < deadline:
        rows = {r["id"]: r for r in json.loads(netharness("ls", "--json").stdout)}
        if not rows[crashed_id]["alive"]:
            break
        time.sleep(0.05)
    assert lab_namespaces(crashed_id), "a SIGKILLed owner leaves its namespaces for clean"
    dry = netharness("clean", "--dry-run")
    assert f"lab {crashed_id}: would remove" in dry.stdout
    assert lab_namespaces(crashed_id)
    cleaned = netharness("clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"lab {crashed_id}: removed" in cleaned.stdout
    assert f"lab {live}: owner pid" in cleaned.stdout
    assert "left alone" in cleaned.stdout
    assert lab_namespaces(crashed_id) == []
    assert len(lab_namespaces(live)) == 4


def test_a_controller_killed_during_bring_up_is_reaped_without_a_command(
    tmp_path: Path,
) -> None:
    before = snapshot()
    star = str(ROOT / "topologies" / "star100.yaml")
    # A ledger of its own, so other labs on the machine cannot be mistaken for this one.
    env = {**os.environ, "NETHARNESS_RUN_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "up", star],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    labs = tmp_path / "labs"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until the lab has a namespace, then kill
        ids = (
            [d.name for d in labs.iterdir() if not d.name.startswith(".")] if labs.is_dir() else []
        )
        if ids and lab_namespaces(ids[0]):
            break
        time.sleep(0.002)
    else:
        pytest.fail("the lab did not appear within 10 s")
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and before.difference(snapshot()):
        time.sleep(0.05)
    assert before.difference(snapshot()) == []
    assert not any(labs.glob("*/lab.json"))


def test_validate_and_schema() -> None:
    ok = netharness("validate", LAN)
    assert ok.returncode == 0
    assert "ok" in ok.stdout
    schema = json.loads(netharness("schema").stdout)
    assert "hosts" in schema["properties"]
    assert "networks" in schema["properties"]


def test_a_lab_whose_owner_is_killed_is_reaped_within_a_second() -> None:
    before = snapshot()
    info = json.loads(netharness("up", LAN, "--json").stdout)
    lab_id = str(info["id"])
    assert lab_namespaces(lab_id)
    os.kill(int(info["owner_pid"]), signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < 1.0 and (lab_namespaces(lab_id) or (LABS / lab_id).exists()):
        time.sleep(0.01)
    assert lab_namespaces(lab_id) == []
    assert not (LABS / lab_id).exists()
    assert before.difference(snapshot()) == []


def test_a_detached_lab_of_many_hosts_keeps_every_host_agent_and_service(
    tmp_path: Path,
) -> None:
    # A detach hands the server two pipes per agent, more than one message may carry:
    # every host's agent (holding its services) must still be there once `up` returned.
    hosts = "".join(
        f"  h{i:02d}: {{networks: {{lan: 10.0.3.{i}}}, services: [{{proto: tcp, port: 7}}]}}\n"
        for i in range(1, 61)
    )
    topology = tmp_path / "many.yaml"
    topology.write_text(f"name: many\nnetworks:\n  lan: {{subnet: 10.0.3.0/24}}\nhosts:\n{hosts}")
    up = netharness("up", str(topology), "--json", "--no-progress", timeout=120)
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["id"]
    try:
        for target in ("h01", "h30", "h60"):
            probed = netharness("probe", lab, "h02" if target == "h01" else "h01", f"{target}:7")
            assert ": open (" in probed.stdout, probed.stdout + probed.stderr
    finally:
        assert netharness("down", lab).returncode == 0
