"""Remove a lab's namespaces from its ledger, with the standard library alone.

The fork server's sentinel runs `reap` the moment a lab's owner dies: it is already a
forked, imported process, so a dead lab's namespaces are gone in milliseconds instead of
after a fresh interpreter has imported the controller. `harness.core.ledger.destroy_recorded`
(teardown, `down`, `clean`) removes namespaces with the same functions, so there is one
rule for what a ledger may remove:

- only names the lab could have made (`nh-<lab>` and `nh-<lab>-<host>`), directly under
  /run/netns: a ledger is data, and data that points elsewhere is refused;
- never an entry marked absent (its creation found the name taken: not ours);
- never while the lab's owner lives: the lab's lock decides, as everywhere.

Anything else the ledger names (containers) needs the controller's libraries: `reap`
removes the namespaces, then hands the rest to the full clean-up command.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

NETNS_RUN_DIR = "/run/netns"
NETNS_PREFIX = "nh-"
HOST_NAME_RE = r"[a-z][a-z0-9_-]*"
NETNS_KIND = "netns"  # the ledger kind this module removes itself
ABSENT = "absent"  # ledger state of an object whose creation failed before it existed
LOCK_WAIT = 2.0  # seconds: a dead owner's lock is free a moment after its last fd closes
_MNT_DETACH = 2

Entry = dict[str, str]
Progress = Callable[[int, int], None]


def is_lab_netns(lab_id: str, name: str) -> bool:
    """Whether `name` is a namespace name lab `lab_id` could have made."""
    pattern = rf"{NETNS_PREFIX}{re.escape(lab_id)}(-{HOST_NAME_RE})?"
    return re.fullmatch(pattern, name) is not None


def read_entries(ledger_dir: str) -> list[Entry]:
    """The ledger's lines; a torn last line (a crash mid-write) is skipped."""
    try:
        with open(os.path.join(ledger_dir, "ledger.jsonl"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _ours(lab_id: str, entry: Entry) -> bool:
    name = entry.get("name", "")
    base = os.path.basename(name)
    return name == os.path.join(NETNS_RUN_DIR, base) and is_lab_netns(lab_id, base)


def lab_namespaces(lab_id: str, entries: Sequence[Entry]) -> list[str]:
    """The namespace paths the ledger may remove, hosts first and the fabric last
    (a host's namespace takes its veth pairs with it)."""
    latest = {e.get("name", ""): e for e in entries if e.get("kind") == NETNS_KIND}
    mine = [n for n, e in latest.items() if e.get("state") != ABSENT and _ours(lab_id, e)]
    return sorted(mine, key=lambda p: p.count("-"), reverse=True)


def needs_full_clean(entries: Sequence[Entry]) -> bool:
    """Whether the ledger names objects other than namespaces (containers)."""
    return any(e.get("kind") != NETNS_KIND for e in entries)


def inode(path: str) -> int | None:
    """The namespace's identity (nsfs inode), or None if the path is gone."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def pids_in(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of `inodes` (like `ip netns pids`)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino in inodes:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes  # ~4 ms that commands importing this module only to read need not pay

    return ctypes.CDLL(None, use_errno=True)


def remove(path: str) -> bool:
    """Unmount and unlink a named namespace; False if it was already gone."""
    _libc().umount2(path.encode(), _MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_namespaces(
    lab_id: str, entries: Sequence[Entry], progress: Progress | None = None
) -> tuple[list[str], list[str]]:
    """Kill what runs inside the lab's namespaces, then remove them.

    Returns (removed, leftovers): what went, and what could not, with the reason. A
    namespace with a process in it lives on after its name is gone, hence the kill first.
    """
    namespaces = lab_namespaces(lab_id, entries)
    inodes = {ino for path in namespaces if (ino := inode(path)) is not None}
    if inodes:
        for pid in pids_in(inodes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    removed, leftovers = [], []
    if progress is not None:
        progress(0, len(namespaces))
    for done, path in enumerate(namespaces, 1):
        try:
            if remove(path):
                removed.append(f"netns {os.path.basename(path)}")
        except OSError as exc:
            leftovers.append(f"{path} ({exc.strerror})")
        if progress is not None:
            progress(done, len(namespaces))
    return removed, leftovers


def take_lock(ledger_dir: str, within: float) -> int | None:
    """The lab's lock, once its owner is gone: an open fd holding it, or None if the
    owner still holds it after `within` seconds (or there is no ledger)."""
    try:
        fd = os.open(os.path.join(ledger_dir, "lock"), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    deadline = time.monotonic() + within
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.001)


def _remove_half_built(ledger_dir: str) -> None:
    # Killed inside Ledger.open: the ledger never got its name, only `.<id>.new`.
    parent, lab_id = os.path.split(ledger_dir.rstrip("/"))
    building = os.path.join(parent, f".{lab_id}.new")
    fd = take_lock(building, 0)
    if fd is not None:
        try:
            shutil.rmtree(building, ignore_errors=True)
        finally:
            os.close(fd)


def reap(lab_id: str, ledger_dir: str, full_clean: Sequence[str]) -> None:
    """A dead owner's lab: remove its namespaces and its ledger; hand anything else the
    ledger names (containers) to `full_clean` by exec. Returns only if nothing is left
    to hand over; leaves a lab whose owner still holds its lock alone."""
    if not os.path.isdir(ledger_dir):
        _remove_half_built(ledger_dir)
        return
    lock = take_lock(ledger_dir, LOCK_WAIT)
    if lock is None:
        if os.path.exists(os.path.join(ledger_dir, "lock")) or not full_clean:
            return  # its owner is alive: not ours to touch
        os.execvp(full_clean[0], list(full_clean))  # a ledger without a lock: clean decides
    try:
        entries = read_entries(ledger_dir)
        _removed, leftovers = remove_namespaces(lab_id, entries)
        if not leftovers and not needs_full_clean(entries):
            shutil.rmtree(ledger_dir, ignore_errors=True)
            return
    finally:
        os.close(lock)  # the full clean takes the lock itself
    if full_clean:
        os.execvp(full_clean[0], list(full_clean))
