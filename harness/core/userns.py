"""Rootless mode: labs in a user namespace of the controller's own.

Without root, the controller moves into a new user namespace (where it is root, mapped to
the user's own uid), a new mount namespace with a tmpfs of its own on /run, and a new
network namespace: there it can create network namespaces, bind them under /run/netns,
write their sysctls and load their nft rules, all of which the kernel allows to the root
of the user namespace that owns them. Its own network namespace plays the root
namespace's part: entering a lab's namespace and coming back to it (setns) needs
privilege over the one we come back to, which the user's real one does not give.

Ledgers go under the user's runtime directory, outside the mount namespace, so later
commands find the lab and `join` its owner's namespaces. When the last process in the user
namespace ends, the kernel removes everything the lab made; nothing is ever in the root
namespaces. Python 3.11 has no os.unshare/os.setns, hence the libc calls.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
import struct
from pathlib import Path

from harness.errors import EnvironmentProblem, RootlessLimit, UsageError

__all__ = ["check_user", "enter", "inside", "join", "user_run_dir", "wanted"]

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 1
FORCE_ENV = "NETHARNESS_ROOTLESS"  # "1": rootless even as root (tests, benchmarks)
RUN_DIR_ENV = "NETHARNESS_RUN_DIR"
# /run entries the lab's mount namespace has of its own: everything else stays visible.
PRIVATE_RUN_ENTRIES = frozenset({"netns", "netharness"})
_IDENTITY_MAP = "0 0 4294967295"

_libc = ctypes.CDLL(None, use_errno=True)


def wanted() -> bool:
    """Labs of this process go in a user namespace: not root, or asked to."""
    return os.geteuid() != 0 or os.environ.get(FORCE_ENV) == "1" or inside()


def inside() -> bool:
    """This process is root of a user namespace other than the initial one (ours, once
    `enter` or `join` ran; or one it was started in, such as a rootless container's)."""
    if os.geteuid() != 0:
        return False  # e.g. an ordinary user inside a container: it needs its own
    try:
        with open("/proc/self/uid_map") as f:
            return " ".join(f.read().split()) != _IDENTITY_MAP
    except OSError:
        return False


def check_user(user: str | None) -> None:
    """Refuse a process as another user than root where no other user exists."""
    if user not in (None, "root", "0") and wanted():
        raise RootlessLimit(
            f"a rootless lab runs nothing as user {user}: its user namespace maps only "
            "your own uid (as root), and mapping more takes the setuid newuidmap"
        )


def user_run_dir() -> Path:
    """Where a user's ledgers go: $XDG_RUNTIME_DIR/netharness, else /tmp/netharness-<uid>.

    Outside the lab's mount namespace on purpose: later commands find labs there.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return Path(runtime) / "netharness"
    return Path(f"/tmp/netharness-{os.getuid()}")


def _check_threads() -> None:
    # The kernel refuses unshare(CLONE_NEWUSER) and setns into a user namespace to a
    # process with more than one thread.
    with open("/proc/self/status") as f:
        threads = next((line.split()[1] for line in f if line.startswith("Threads:")), "1")
    if threads != "1":
        raise UsageError(
            "a rootless lab must be started or joined before this process starts threads "
            f"(it has {threads}); bring the lab up first"
        )


def enter() -> None:
    """Move this process into a user, mount and network namespace of its own (once)."""
    if inside():
        return
    _check_threads()
    run_dir = Path(os.environ.get(RUN_DIR_ENV) or user_run_dir())  # named by our real uid
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0:
        raise _unavailable(ctypes.get_errno())
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _prepare_run_dir(run_dir)  # before /run is ours: it may be under $XDG_RUNTIME_DIR
    _private_run()
    _loopback_up()


def join(owner_pid: int) -> None:
    """Enter the user, mount and network namespaces of a rootless lab's owner (a later
    command): there its namespaces have their names, and the calls that enter one of them
    and come back may come back."""
    here = os.stat("/proc/self/ns/user").st_ino
    try:
        theirs = os.stat(f"/proc/{owner_pid}/ns/user").st_ino
    except FileNotFoundError:
        raise EnvironmentProblem(f"the lab's owner (pid {owner_pid}) has ended") from None
    if here == theirs:
        return
    if inside():
        raise UsageError(
            "this process already runs labs of its own in another user namespace, and a "
            "process can be in one only; attach to the running lab from another process"
        )
    _check_threads()
    os.environ.setdefault(RUN_DIR_ENV, str(user_run_dir()))  # named by our real uid
    cwd = os.getcwd()
    for kind, flag in (("user", CLONE_NEWUSER), ("mnt", CLONE_NEWNS), ("net", CLONE_NEWNET)):
        fd = os.open(f"/proc/{owner_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, flag) != 0:
                code = ctypes.get_errno()
                raise EnvironmentProblem(
                    f"cannot enter the {kind} namespace of the lab's owner (pid "
                    f"{owner_pid}): {os.strerror(code)}; only its own user can"
                )
        finally:
            os.close(fd)
    os.chdir(cwd)  # setns(CLONE_NEWNS) moved us to the namespace's root


def _prepare_run_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():  # 0: our own uid
        raise EnvironmentProblem(
            f"{path} is not a directory of yours; remove it or set {RUN_DIR_ENV}"
        )
    os.environ[RUN_DIR_ENV] = str(path)  # the fork server and the sentinel inherit it


def _private_run() -> None:
    """A tmpfs on /run holding /run/netns and /run/netharness of our own, with every other
    entry of the real /run bound back in place (the docker socket, $XDG_RUNTIME_DIR)."""
    real = os.open("/run", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        entries = os.listdir(f"/proc/self/fd/{real}")
        _mount("tmpfs", "/run", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755")
        for entry in entries:
            if entry not in PRIVATE_RUN_ENTRIES:
                _bind_back(f"/proc/self/fd/{real}/{entry}", f"/run/{entry}")
    finally:
        os.close(real)


def _loopback_up() -> None:
    # As in the root namespace: loopback up, so an address no interface has here is
    # refused (EADDRNOTAVAIL); with every interface down the kernel lets any bind.
    request = struct.pack("16sH", b"lo", 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _bind_back(source: str, target: str) -> None:
    mode = os.lstat(source).st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), target)
        return
    if stat.S_ISDIR(mode):
        os.mkdir(target)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    try:
        _mount(source, target, None, _MS_BIND | _MS_REC)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise
        # Not ours to see (e.g. another user's directory): left out of the lab's /run.


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    if (
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        code = ctypes.get_errno()
        raise OSError(code, f"mount {target}: {os.strerror(code)}", target)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _unavailable(code: int) -> EnvironmentProblem:
    """Why the kernel refused us a user namespace, with the setting that decides it."""
    reason = f"this kernel refused a user namespace ({os.strerror(code)})"
    if code == errno.ENOSPC:
        return EnvironmentProblem(
            f"{reason}: the limit user.max_user_namespaces is reached (it may be 0). Raise "
            "it: `sysctl -w user.max_user_namespaces=15000` (as root), or run as root"
        )
    for setting, fix in (
        ("kernel/apparmor_restrict_unprivileged_userns", "0"),
        ("kernel/unprivileged_userns_clone", "1"),
    ):
        try:
            value = Path("/proc/sys", setting).read_text().strip()
        except OSError:
            continue
        if value != fix:
            name = setting.replace("/", ".")
            return EnvironmentProblem(
                f"{reason}: {name} is {value}. Allow unprivileged user namespaces: "
                f"`sysctl -w {name}={fix}` (as root), or run as root"
            )
    return EnvironmentProblem(
        f"{reason}. Unprivileged user namespaces may be disabled (a seccomp profile of a "
        "container, or a kernel built without CONFIG_USER_NS); run as root"
    )
