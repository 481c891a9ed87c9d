"""The ledger: lab ids, ownership by lock, and what teardown may touch (no root needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core import ledger
from hostagent import reaper


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETHARNESS_RUN_DIR", str(tmp_path))
    return tmp_path


def test_lab_ids_are_short_lowercase_and_start_with_a_letter() -> None:
    ids = {ledger.new_lab_id() for _ in range(2000)}
    assert len(ids) == 2000
    for lab_id in ids:
        assert ledger.is_lab_id(lab_id)
        assert lab_id[0].isalpha()
        # nh-<id>-<host> with the longest host name fits a namespace and container name
        assert len(f"nh-{lab_id}-") + 40 <= 64


@pytest.mark.parametrize("text", ["", "abc", "ABCDEF", "1abcde", "abcdefg", "ab-def", "../etc"])
def test_is_lab_id_refuses_what_we_never_make(text: str) -> None:
    assert not ledger.is_lab_id(text)


def test_the_owner_holds_the_lock_and_its_death_releases_it(run_dir: Path) -> None:
    book = ledger.Ledger("abcdef")
    book.open({"id": "abcdef", "owner_pid": os.getpid()})
    record = ledger.find_lab("abcdef")
    assert record.alive
    with ledger.locked(record.dir) as free:
        assert not free
    book.release()
    assert not record.alive


def test_the_lock_does_not_leak_into_children(run_dir: Path) -> None:
    book = ledger.Ledger("abcdeg")
    book.open({"id": "abcdeg"})
    try:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            book.release()
            assert not ledger.owner_alive(run_dir / "labs" / "abcdeg")
        finally:
            child.kill()
            child.wait()
    finally:
        book.release()


def test_an_id_in_use_is_never_shared(run_dir: Path) -> None:
    first = ledger.Ledger("abcdeh")
    first.open({})
    try:
        with pytest.raises(FileExistsError):
            ledger.Ledger("abcdeh").open({})
    finally:
        first.release()


def test_entries_are_written_before_objects_and_survive_a_torn_line(run_dir: Path) -> None:
    book = ledger.Ledger("abcdei")
    book.open({"id": "abcdei"})
    book.record("netns", "/run/netns/nh-abcdei-h1", {"host": "h1"})
    with open(book.dir / "ledger.jsonl", "a") as f:
        f.write('{"kind": "netns", "na')  # a crash mid-write
    book.release()
    (entry,) = ledger.find_lab("abcdei").entries()
    assert entry == {"kind": "netns", "name": "/run/netns/nh-abcdei-h1", "host": "h1"}


def test_teardown_refuses_ledger_entries_that_are_not_this_labs(run_dir: Path) -> None:
    book = ledger.Ledger("abcdej")
    book.open({})
    for name in (
        "/etc/passwd",
        "/run/netns/nh-other1-h1",
        "/run/netns/nh-abcdejx",
        "/run/netns/../netns/nh-abcdej-h1",
        "/run/netns/nh-abcdej-h1/../../x",
        "/run/netns/nh-abcdej-H1",
        "/run/netns/nh-abcdej-h1",
        "/run/netns/nh-abcdej",
    ):
        book.record("netns", name, {})
    book.release()
    record = ledger.find_lab("abcdej")
    ours = reaper.lab_namespaces(record.id, record.entries())
    assert ours == ["/run/netns/nh-abcdej-h1", "/run/netns/nh-abcdej"]


def test_find_lab_names_the_running_labs(run_dir: Path) -> None:
    book = ledger.Ledger("abcdek")
    book.open({"topology": "lan"})
    try:
        with pytest.raises(Exception, match="running labs: abcdek"):
            ledger.find_lab("zzzzzz")
        assert json.loads((book.dir / "lab.json").read_text())["topology"] == "lan"
    finally:
        book.release()


def test_only_old_abandoned_builds_are_removed(run_dir: Path) -> None:
    young = ledger.labs_dir() / ".abcdem.new"
    old = ledger.labs_dir() / ".abcden.new"
    for build in (young, old):
        build.mkdir(parents=True)
        (build / "lock").touch()  # a build between its lock file and its lock looks so
    long_ago = time.time() - ledger.STALE_BUILD_AGE - 5
    os.utime(old, (long_ago, long_ago))
    assert ledger.remove_stale_builds() == [".abcden.new"]
    assert young.exists()
    assert not old.exists()
