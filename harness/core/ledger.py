"""Each lab's ledger under /run/netharness/labs/<id>/ (rootless: the user's runtime
directory, see harness.core.userns): what it made, and who owns it.

    lab.json      id, topology, owner pid, creation time, hosts and their addresses
    ledger.jsonl  one line per object, appended (and flushed) BEFORE the object is made
    lock          flock(2)ed by the owner for as long as it lives; the fd is close-on-exec
    logs/         the agents' and the fork server's stderr

The lock, not the pid, decides whether a lab is alive: a dead owner's lock is released by
the kernel, even after SIGKILL, and a recycled pid cannot fake it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from harness.core import userns
from harness.errors import HarnessError, LabNotFound
from hostagent import reaper

ROOT_RUN_DIR = Path("/run/netharness")
LAB_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
LAB_ID_LENGTH = 6
ABSENT = reaper.ABSENT  # ledger state of an object whose creation failed before it existed


def run_dir() -> Path:
    """$NETHARNESS_RUN_DIR, else /run/netharness as root, else the user's own (rootless)."""
    explicit = os.environ.get(userns.RUN_DIR_ENV)
    if explicit:
        return Path(explicit)
    return userns.user_run_dir() if userns.wanted() else ROOT_RUN_DIR


def labs_dir() -> Path:
    return run_dir() / "labs"


def new_lab_id() -> str:
    import secrets  # ~8 ms (OpenSSL's hashes) that `ls` and `down` need not pay

    first = secrets.choice(LAB_ID_ALPHABET[:26])  # ids start with a letter
    return first + "".join(secrets.choice(LAB_ID_ALPHABET) for _ in range(LAB_ID_LENGTH - 1))


def is_lab_id(text: str) -> bool:
    return (
        len(text) == LAB_ID_LENGTH and text[0].isalpha() and all(c in LAB_ID_ALPHABET for c in text)
    )


class Ledger:
    """The ledger of a lab this process owns. Constructing it touches nothing."""

    def __init__(self, lab_id: str) -> None:
        self.lab_id = lab_id
        self.dir = labs_dir() / lab_id
        self._lock_fd: int | None = None
        self._log: Any = None

    @property
    def lock_path(self) -> Path:
        return self.dir / "lock"

    @property
    def lock_fd(self) -> int:
        assert self._lock_fd is not None, "open() first"
        return self._lock_fd

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def open(self, info: dict[str, Any]) -> None:
        """Create the directory (fails if the id is taken), take the lock, write lab.json.

        Built under a hidden name and renamed into place, so nobody (a concurrent
        `clean`) ever sees a ledger whose lock is not yet held.
        """
        labs_dir().mkdir(parents=True, exist_ok=True)
        building = labs_dir() / f".{self.lab_id}.new"
        building.mkdir()
        # Locked at once; until then the build looks abandoned, which is why
        # `remove_stale_builds` leaves young builds alone.
        fd = os.open(building / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        (building / "logs").mkdir()
        (building / "lab.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        try:
            building.rename(self.dir)  # fails if the id is taken: never share a ledger
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
            self.release()
            raise FileExistsError(f"lab id {self.lab_id} is taken") from None
        self._log = open(self.dir / "ledger.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write_info(self, info: dict[str, Any]) -> None:
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        tmp.replace(self.dir / "lab.json")

    def record(self, kind: str, name: str, attrs: dict[str, str]) -> None:
        """Write down an object before it is created, so a crash can never orphan it."""
        assert self._log is not None, "open() first"
        self._log.write(json.dumps({"kind": kind, "name": name, **attrs}) + "\n")
        self._log.flush()

    def release(self) -> None:
        """Close our files; the lock goes with them."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class LabRecord(NamedTuple):
    """A lab found on this machine, as its ledger describes it."""

    id: str
    dir: Path
    info: dict[str, Any]

    @property
    def owner_pid(self) -> int | None:
        pid = self.info.get("owner_pid")
        return int(pid) if pid is not None else None

    @property
    def alive(self) -> bool:
        return owner_alive(self.dir)

    def age(self) -> float:
        return time.time() - float(self.info.get("created", time.time()))

    def entries(self) -> list[dict[str, str]]:
        return reaper.read_entries(str(self.dir))

    def namespaces(self) -> list[str]:
        """The namespace paths its ledger may remove (hostagent.reaper's rule)."""
        return reaper.lab_namespaces(self.id, self.entries())


def owner_alive(lab_dir: Path) -> bool:
    try:
        fd = os.open(lab_dir / "lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def locked(lab_dir: Path) -> Iterator[bool]:
    """Hold the lab's lock for the body; yields False if its owner still holds it."""
    try:
        fd = os.open(lab_dir / "lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True  # a ledger without a lock was never owned by anyone alive
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def read_lab(lab_dir: Path) -> LabRecord | None:
    try:
        info = json.loads((lab_dir / "lab.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        info = {}
    if not is_lab_id(lab_dir.name):
        return None
    return LabRecord(id=lab_dir.name, dir=lab_dir, info=info)


def list_labs() -> list[LabRecord]:
    try:
        dirs = sorted(labs_dir().iterdir())
    except FileNotFoundError:
        return []
    return [record for d in dirs if d.is_dir() and (record := read_lab(d)) is not None]


STALE_BUILD_AGE = 10.0  # seconds: a ledger is renamed into place milliseconds after its start


def remove_stale_builds() -> list[str]:
    """Remove ledgers a crash left half-built (before their rename into place).

    Only builds older than `STALE_BUILD_AGE`: between its directory and its lock, a build
    in progress looks exactly like an abandoned one. Removing one there took the lock
    file from under a concurrent `up`, whose lab then ran without one, and the next
    `clean` took it for dead and removed it while it ran.
    """
    removed = []
    for path in labs_dir().glob(".*.new") if labs_dir().exists() else []:
        try:
            young = time.time() - path.stat().st_mtime < STALE_BUILD_AGE
        except FileNotFoundError:
            continue  # renamed into place meanwhile
        if is_lab_id(path.name[1:-4]) and not young:
            with locked(path) as free:
                if free:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
    return removed


def find_lab(lab_id: str) -> LabRecord:
    record = read_lab(labs_dir() / lab_id) if is_lab_id(lab_id) else None
    if record is None or not record.dir.exists():
        known = ", ".join(r.id for r in list_labs()) or "none"
        raise LabNotFound(f"no lab {lab_id!r} on this machine (running labs: {known})")
    return record


def wait_gone(lab_dir: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while lab_dir.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # a reaped lab goes within milliseconds
    return True


class LabBusy(HarnessError):
    """The lab's owner is alive; it cannot be cleaned from here."""
