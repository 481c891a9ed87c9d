"""Guarantee 3: clean removes only what carries a lab id of ours whose owner is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.core import _netns
from tests.reliability.support import LABS, LAN, lab_namespaces, netharness

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture
def foreign() -> Iterator[list[str]]:
    """Objects someone else made, some with names that look like ours."""
    names = ["nh-zzzzzz-h1", "nh-qqqqqq", "foreign-lab"]
    fds = [_netns.create(name) for name in names]
    inside = "foreign-lab"
    commands = [
        ["ip", "link", "add", "nh-zzzzzz-v", "type", "veth", "peer", "name", "p1"],
        ["ip", "link", "add", "lan", "type", "bridge"],
        ["nft", "add", "table", "inet", "netharness"],
    ]
    for command in commands:
        subprocess.run(["ip", "netns", "exec", inside, *command], check=True)
    try:
        yield names
    finally:
        for fd in fds:
            os.close(fd)
        for name in names:
            _netns.remove(_netns.netns_path(name))


def foreign_state() -> tuple[str, str]:
    links = subprocess.run(
        ["ip", "netns", "exec", "foreign-lab", "ip", "-o", "link"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tables = subprocess.run(
        ["ip", "netns", "exec", "foreign-lab", "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return links, tables


def test_clean_spares_live_labs_and_foreign_objects(foreign: list[str]) -> None:
    live = json.loads(netharness("up", str(LAN), "--json").stdout)
    crashed = json.loads(netharness("up", str(LAN), "--json").stdout)
    try:
        # A crash that takes the reaper with it: only `clean` can help now.
        record = json.loads((LABS / crashed["id"] / "lab.json").read_text())
        os.kill(record["reaper_pid"], signal.SIGKILL)
        os.kill(crashed["owner_pid"], signal.SIGKILL)
        # A ledger-less directory and a stray file are not labs either.
        (LABS / "notalab").mkdir()
        before = foreign_state()

        dry = netharness("clean", "--dry-run")
        assert dry.returncode == 0
        assert f"lab {crashed['id']}: would remove" in dry.stdout
        assert f"nh-{crashed['id']}-h1" in dry.stdout
        assert f"lab {live['id']}: owner pid {live['owner_pid']} is alive — left alone" in (
            dry.stdout
        )
        assert {f"nh-{crashed['id']}-h1"} <= lab_namespaces()

        cleaned = netharness("clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"lab {live['id']}: owner pid {live['owner_pid']} is alive — left alone" in (
            cleaned.stdout
        )
        assert not {n for n in lab_namespaces() if n.startswith(f"nh-{crashed['id']}")}
        assert len({n for n in lab_namespaces() if n.startswith(f"nh-{live['id']}")}) == 4
        for name in foreign:
            assert name in os.listdir("/run/netns"), f"clean removed foreign {name}"
        assert foreign_state() == before
        assert (LABS / "notalab").is_dir()
    finally:
        (LABS / "notalab").rmdir()
        netharness("down", live["id"])
        netharness("down", crashed["id"])


def test_read_only_commands_change_nothing() -> None:
    live = json.loads(netharness("up", str(LAN), "--json").stdout)
    try:
        lab_dir = LABS / live["id"]
        files = {p: p.read_bytes() for p in lab_dir.rglob("*") if p.is_file()}
        namespaces = lab_namespaces()
        for args in (
            ("ls",),
            ("ls", "--json"),
            ("validate", str(LAN)),
            ("schema",),
            ("clean", "--dry-run"),
        ):
            assert netharness(*args).returncode == 0
        assert {p: p.read_bytes() for p in lab_dir.rglob("*") if p.is_file()} == files
        assert lab_namespaces() == namespaces
        assert not Path(f"/run/netns/nh-{live['id']}-x").exists()
    finally:
        netharness("down", live["id"])
