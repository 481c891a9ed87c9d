"""Network namespaces through the kernel's own calls (setns, unshare, bind mounts).

Named namespaces live under /run/netns like `ip netns add` makes them, so `ip netns exec`
works on them. Python 3.11 has no os.setns/os.unshare, hence the few libc calls here.
setns and unshare act on the calling thread only: every function that enters a namespace
returns to the thread's previous one before it returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

from hostagent.reaper import NETNS_RUN_DIR, inode, pids_in, remove

__all__ = ["attach", "create", "entered", "inode", "netns_path", "pids_in", "remove", "setns"]

CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str = "") -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path or None)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind `fd`."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def _prepare_run_dir() -> None:
    # As iproute2 does: /run/netns must be a shared mount so namespaces bound under it
    # are visible in every mount namespace (ip netns exec makes its own).
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    run_dir = NETNS_RUN_DIR.encode()
    if _libc.mount(b"none", run_dir, None, _MS_SHARED | _MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, "mount --make-shared", NETNS_RUN_DIR)
    _check(_libc.mount(run_dir, run_dir, b"none", _MS_BIND | _MS_REC, None), "bind", NETNS_RUN_DIR)
    _check(_libc.mount(b"none", run_dir, None, _MS_SHARED | _MS_REC, None), "make-shared")


_run_dir_state: list[bool] = []  # non-empty once /run/netns is a shared mount


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def create(name: str) -> int:
    """Create the named namespace `name` and return an open fd to it.

    Fails with FileExistsError rather than reuse a namespace someone else made.
    The calling thread stays in its own namespace.
    """
    _ensure_run_dir()
    path = netns_path(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare", path)
        try:
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND, None),
                "bind mount",
                path,
            )
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            setns(home)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(home)


def attach(name: str, fd: int) -> str:
    """Name the existing namespace behind `fd` (another process's) `name` under /run/netns,
    as `ip netns attach` does; returns the path. The name holds the namespace alive until
    `remove`, whatever becomes of the process. FileExistsError if the name is taken."""
    _ensure_run_dir()
    path = netns_path(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        # Through our own fd: the namespace bound is the one the caller opened and checked.
        source = f"/proc/self/fd/{fd}".encode()
        _check(_libc.mount(source, path.encode(), b"none", _MS_BIND, None), "bind mount", path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def _ensure_run_dir() -> None:
    if not _run_dir_state:
        _prepare_run_dir()
        _run_dir_state.append(True)


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the body with the calling thread inside namespace `fd`, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def read_sysctl(key: str) -> str:
    """Read a net.* sysctl of the namespace the calling thread is in, whitespace-normalised."""
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return " ".join(f.read().split())


def write_sysctl(key: str, value: str) -> None:
    """Write a net.* sysctl of the namespace the calling thread is in."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)
