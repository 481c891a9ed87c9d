"""hostagent.reaper on real ledgers in a temporary directory (no namespaces needed).

What it removes from /run/netns is covered end to end by tests/reliability; here: the
lock decides, foreign names are refused, and what needs more than the standard library
is handed to the full clean-up command.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostagent import reaper

LAB = "abcdef"


def ledger(tmp_path: Path, entries: list[dict[str, str]]) -> Path:
    lab_dir = tmp_path / "labs" / LAB
    (lab_dir / "logs").mkdir(parents=True)
    (lab_dir / "lock").touch()
    lines = "".join(json.dumps(e) + "\n" for e in entries)
    (lab_dir / "ledger.jsonl").write_text(lines + '{"kind": "netns", "na')  # torn last line
    return lab_dir


def test_a_dead_owners_ledger_goes_and_foreign_names_stay(tmp_path: Path) -> None:
    decoy = tmp_path / "nh-abcdef-h1"
    decoy.touch()
    lab_dir = ledger(
        tmp_path,
        [
            {"kind": "netns", "name": str(decoy)},  # not under /run/netns: refused
            {"kind": "netns", "name": "/run/netns/nh-other1-h1"},  # another lab's name
            {"kind": "netns", "name": f"/run/netns/nh-{LAB}-h2", "state": reaper.ABSENT},
        ],
    )
    assert reaper.lab_namespaces(LAB, reaper.read_entries(str(lab_dir))) == []
    reaper.reap(LAB, str(lab_dir), ["false"])
    assert not lab_dir.exists()
    assert decoy.exists()


def test_a_live_owners_lab_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab_dir = ledger(tmp_path, [])
    monkeypatch.setattr(reaper, "LOCK_WAIT", 0.05)
    fd = os.open(lab_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the owner, alive
        reaper.reap(LAB, str(lab_dir), ["false"])
        assert (lab_dir / "ledger.jsonl").exists()
    finally:
        os.close(fd)


def test_containers_are_handed_to_the_full_clean(tmp_path: Path) -> None:
    lab_dir = ledger(tmp_path, [{"kind": "container", "name": f"nh-{LAB}-web"}])
    marker = tmp_path / "full-clean-ran"
    code = "import sys; from hostagent.reaper import reap; reap(*sys.argv[1:3], sys.argv[3:])"
    subprocess.run(
        [sys.executable, "-c", code, LAB, str(lab_dir), "touch", str(marker)],
        check=True,
        timeout=30,
    )
    assert marker.exists()  # reap exec'd it: the ledger is the full clean's to remove
    assert lab_dir.exists()


def test_a_half_built_ledger_is_removed(tmp_path: Path) -> None:
    building = tmp_path / "labs" / f".{LAB}.new"
    building.mkdir(parents=True)
    (building / "lock").touch()
    reaper.reap(LAB, str(tmp_path / "labs" / LAB), ["false"])
    assert not building.exists()
