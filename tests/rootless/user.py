"""A throwaway unprivileged user that runs this checkout, and its removal.

The user gets nothing of root's but the checkout: a Python of Debian's (/usr/bin/python3,
which `make install` ensures) whose site path holds the checkout and the packages of its
.venv, read in place when others may read them and copied otherwise (a checkout under
/root). It runs with a clean environment: no root's HOME, PATH or variables.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path  # a temporary directory of the user's, also where its Python lives
    python: Path
    checkout: Path  # ROOT, or a copy of its tracked files the user can read

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            **extra,
        }

    def argv(self, *command: str) -> list[str]:
        """`command` as this user: its uid and gid, no supplementary group, no capability."""
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            *command,
        ]

    def run(
        self, *command: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`command` as this user in the checkout, what it said captured."""
        return subprocess.run(
            self.argv(*command),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.checkout,
            env=self.env(**(env or {})),
            check=False,
        )

    def netharness(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.python), "-m", "harness", *args, timeout=timeout)

    def processes(self) -> dict[int, str]:
        """The user's processes now: pid -> command line."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _owner(Path("/proc", entry)) == self.uid:
                with contextlib.suppress(OSError):
                    raw = Path("/proc", entry, "cmdline").read_bytes()
                    found[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace")
        return found

    def processes_after(self, bound: float) -> dict[int, str]:
        """The user's processes still there `bound` seconds from now (or none sooner)."""
        deadline = time.monotonic() + bound
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return left


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except FileNotFoundError:
        return None


def _readable_by_others(path: Path) -> bool:
    """Whether every directory above `path` lets others through and `path` lets them read."""
    for parent in [*reversed(path.parents), path]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH or (parent == path and not mode & stat.S_IROTH):
            return False
    return True


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])  # this run's .venv


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


@contextlib.contextmanager
def throwaway_user() -> Iterator[User]:
    """Create the user and its Python; afterwards kill what it left, remove it and its
    files. A leftover is the test's to report (see `leftovers`), not this helper's."""
    name = f"nh-rl-{secrets.token_hex(3)}"
    home = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
        check=True,
        capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        python, checkout = _python_for(home)
        subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(home)], check=True)
        yield User(name, entry.pw_uid, entry.pw_gid, home, python, checkout)
    finally:
        _remove(name, home)


def _python_for(home: Path) -> tuple[Path, Path]:
    """A venv of Debian's Python under `home` that sees the checkout and its packages."""
    venv = home / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    checkout, packages = ROOT, _site_packages()
    if not _readable_by_others(ROOT):
        checkout = home / "checkout"
        for name in _tracked_files():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    if not _readable_by_others(packages):
        packages = Path(shutil.copytree(packages, home / "site-packages", symlinks=True))
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # addsitedir, so the packages' own .pth files are read too; the checkout first.
    (Path(purelib) / "netharness-checkout.pth").write_text(
        f"{checkout}\nimport site; site.addsitedir({str(packages)!r})\n"
    )
    return venv / "bin" / "python", checkout


def _remove(name: str, home: Path) -> None:
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(name).pw_uid
        for _ in range(50):  # whatever a failed test left running
            alive = subprocess.run(["pkill", "-KILL", "-u", str(uid)], check=False).returncode
            if alive != 0:
                break
            time.sleep(0.1)
        shutil.rmtree(f"/tmp/netharness-{uid}", ignore_errors=True)
    subprocess.run(["userdel", name], check=False, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)
