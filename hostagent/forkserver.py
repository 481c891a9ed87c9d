"""Fork server: starts agents and commands inside network namespaces in about a millisecond.

Standard library only. The netns and docker backends' controller starts one per lab and
talks to it over a SOCK_SEQPACKET socket (one JSON message per packet, file
descriptors passed with SCM_RIGHTS). Forking this small, already-imported process and
entering the namespace is ~20x cheaper than starting a Python interpreter per host. The
ssh backend runs the same server on each machine, behind hostagent.remote (which turns
its file descriptors into frames over the SSH session); there "netns" is empty.

It is also the lab's reaper. Every child gets PR_SET_PDEATHSIG, so nothing it started
outlives it. At start it forks a sentinel, a process in its own session that waits on a
pipe only the fork server can write: an orderly end writes "o" and the sentinel just
exits; any other end of the fork server (SIGKILL included) closes the pipe unwritten and
the sentinel reaps the lab itself (hostagent.reaper: its namespaces and ledger, in
milliseconds, no interpreter start), handing only containers to the full clean command.
The fork server ends without "o" when the controller's end of the socket closes without
an orderly "exit" (the controller died), or, after "detach", on SIGTERM/SIGINT/SIGHUP:
after "detach" it owns the lab instead of the controller, holds the lab's liveness lock
and keeps the agents' controller-side pipes open (draining their output) until told to go.

Messages, controller -> server:
  {"op": "spawn", "seq": n, "netns": path, "argv": [...] | null, "env": {...} | null,
   "user": name | uid | null, "env_add": {...} | null, "cwd": path | null,
   "report": bool, "grace": seconds | null}
      + fds [stdin, stdout, stderr]; argv null means run the host agent in the child;
      an empty netns, the server's own namespace.
      `env` replaces our environment, `env_add` adds to it (with HOME, USER and LOGNAME
      of `user` when one is given); `cwd` is entered after dropping to `user`.
      `report`: the reply waits for the exec, and a failed exec (or chdir, or an unknown
      user) is an error reply {"seq", "error", "errno", "stage"} instead of exit 127.
      `grace`: when we end without an orderly "exit" (`netharness down` of a detached
      lab, a dead controller), its group gets SIGTERM and up to that long before SIGKILL.
  {"op": "kill", "pid": p, "signal": s, "group": bool}
      group: to the child's process group (each child leads its own session), which
      still reaches what it started after the child itself has exited
  {"op": "keep", "drain": bool} + up to MAX_FDS fds: the agents' controller-side pipes,
      before a detach, in as many messages as they need: to read and drop (their stdout)
      or only to hold open (their stdin)
  {"op": "detach", "drain": n} + fds [lock, n pipes to drain, pipes to hold...]:
      the lab's liveness lock (the controller's own open file, so the lock is never
      free in between), and pipes as with "keep"
  {"op": "commit"}                      the detach is final: the controller's end may close
  {"op": "log", "path": p}              send our own stderr to p (once the lab has a ledger)
  {"op": "exit"}                        orderly: kill children, exit, no clean-up run
server -> controller:
  {"seq": n, "pid": p} | {"seq": n, "error": msg, "errno": name}
  {"sentinel": p}                       first message: the sentinel's pid
  {"exited": p, "status": s}            s < 0: killed by signal -s

Command line: FD [REAP_JSON], REAP_JSON = {"lab": id, "ledger": dir, "full_clean": argv}
(what the sentinel reaps; without it, as for a lab joined by `attach`, nothing).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import json
import os
import pwd
import selectors
import signal
import socket
import sys
import time
from typing import Any

from hostagent import reaper

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
# An agent's name in /proc/<pid>/comm (what `ss -p` and `ps` print): it is a fork of this
# server, so its command line is still ours; hostagent.owners names it by both.
AGENT_COMM = b"nh-agent"
MS_REC = 16384
MS_SLAVE = 1 << 19
MAX_FDS = 64
MAX_MESSAGE = 65536
SETSID_WAIT = 1.0  # seconds a child may take from fork to setsid (a loaded machine)

_libc = ctypes.CDLL(None, use_errno=True)


def _status(raw: int) -> int:
    if os.WIFSIGNALED(raw):
        return -os.WTERMSIG(raw)
    return os.WEXITSTATUS(raw)


def _enter_netns(path: str, own_mounts: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)
    # As `ip netns exec` does: a private mount namespace whose /sys shows this
    # namespace's interfaces. Failure here is not fatal: netlink still works.
    if own_mounts and _libc.unshare(CLONE_NEWNS) == 0:
        _libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None)
        _libc.umount2(b"/sys", 2)
        _libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors a recvmsg's ancillary data passed (SCM_RIGHTS), now ours."""
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(memoryview(payload)[:usable].cast("i"))
    return fds


def receive(sock: socket.socket, max_fds: int = MAX_FDS) -> tuple[bytes, list[int]]:
    """One message and the descriptors passed with it (at most `max_fds`); b"" at EOF or
    on an error."""
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(max_fds * 4))
    except OSError:
        data, ancillary = b"", []
    return data, received_fds(ancillary)


def _before_setsid(pid: int) -> bool:
    """Whether `pid` lives and does not lead its own process group yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != b"Z" and int(fields[2]) != pid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone is in it
    return True


def _drop_privileges(user: str) -> dict[str, str]:
    """Become `user`; returns the environment a login as that user would have."""
    entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)  # all capabilities go with root: a plain user's process
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}


def _child(
    netns: str,
    argv: list[str] | None,
    env: dict[str, str] | None,
    fds: list[int],
    user: str | None = None,
    report: int = -1,
    env_add: dict[str, str] | None = None,
    cwd: str | None = None,
) -> None:
    """Runs in the forked child; never returns. `report`: a close-on-exec pipe on which
    a failure before the exec is told to the server (its EOF alone means: exec'd)."""
    stage = "setup"
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.setsid()
        if netns:  # empty: where the server is (a machine of its own, over ssh)
            _enter_netns(netns, own_mounts=argv is not None)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        if report >= 0:
            report = os.dup2(report, 3, inheritable=False)
        os.closerange(4 if report >= 0 else 3, 65536)
        environ = dict(env if env is not None else os.environ)
        if user is not None:
            stage = "user"
            login = _drop_privileges(user)
            if env_add is not None:  # the user's own process: as a login would have it
                environ.update(login)
        environ.update(env_add or {})
        if cwd is not None:
            stage = "cwd"
            os.chdir(cwd)
        if argv is None:
            from hostagent.agent import serve

            _libc.prctl(PR_SET_NAME, AGENT_COMM)
            os._exit(serve(0, 1))
        stage = "exec"
        os.execvpe(argv[0], argv, environ)
    except (OSError, KeyError) as exc:
        if report >= 0:
            code = exc.errno if isinstance(exc, OSError) else 0
            detail = exc.strerror if isinstance(exc, OSError) else f"no such user {user}"
            os.write(report, json.dumps([stage, code or 0, detail or str(exc)]).encode())
        else:
            os.write(2, f"netharness: cannot start {argv or 'agent'}: {exc}\n".encode())
        os._exit(127)
    except BaseException:
        os._exit(126)


class ForkServer:
    def __init__(self, control: socket.socket, reap_plan: dict[str, Any] | None) -> None:
        self.control = control
        self.reap_plan = reap_plan
        self.children: set[int] = set()
        self.groups: set[int] = set()  # process groups we made that may still have members
        self.graceful: dict[int, float] = {}  # pid -> grace before SIGKILL when we end
        self.reports: dict[int, int] = {}  # pid -> seq of a spawn waiting for its exec
        self.held: dict[int, int] = {}  # exit statuses of those, told after the spawn
        self.kept: list[int] = []
        self.detached = False
        self.lock_fd: int | None = None
        self.running = True
        self.orderly = False
        self.committed = False  # a detach counts once the controller confirms it
        self.selector = selectors.DefaultSelector()
        self.sentinel_pid = 0
        self.sentinel_pipe = -1
        self.outbox: collections.deque[bytes] = collections.deque()
        self.control_events = 0  # what the selector watches the control socket for

    def send(self, message: dict[str, Any]) -> None:
        if self.detached:
            return
        self.outbox.append(json.dumps(message).encode())
        self.flush()

    def flush(self) -> None:
        """Send what the controller's queue has room for; the rest when it is writable.

        Never blocking: the socket queues only net.unix.max_dgram_qlen packets (10 by
        default), and a controller blocked sending us its next spawn while we block
        replying to the last would wait forever (a thousand agents started at once did).
        """
        while self.outbox:
            try:
                self.control.send(self.outbox[0], socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:  # the controller is gone: nobody to tell
                self.outbox.clear()
                break
            self.outbox.popleft()
        self.watch_control()

    def watch_control(self) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        if self.control_events and events != self.control_events:
            self.selector.modify(self.control, events, "control")
            self.control_events = events

    def start_sentinel(self) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            _sentinel(read_end, write_end, self.reap_plan)
        os.close(read_end)
        self.sentinel_pid, self.sentinel_pipe = pid, write_end

    def serve(self) -> None:
        self.start_sentinel()
        self.send({"sentinel": self.sentinel_pid})
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        self.control_events = selectors.EVENT_READ
        self.watch_control()  # the sentinel's pid may wait in the outbox
        self.selector.register(wake_r, selectors.EVENT_READ, "signal")
        while self.running:
            for key, mask in self.selector.select():
                if key.data == "control":
                    if mask & selectors.EVENT_WRITE:
                        self.flush()
                    if mask & selectors.EVENT_READ:
                        self.on_control()
                elif key.data == "signal":
                    self.on_signal(wake_r)
                elif isinstance(key.data, tuple):
                    self.on_report(key.fd, key.data[1])
                else:
                    self.drain(key.fd)
        self.finish()

    def on_control(self) -> None:
        data, fds = receive(self.control)
        if not data:
            self.on_eof()
            return
        keep = False
        try:
            message = json.loads(data)
            keep = message.get("op") in ("detach", "keep")
            self.handle(message, fds)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.send({"error": f"bad message: {exc}"})
        except OSError as exc:
            self.send(
                {
                    "seq": message.get("seq"),
                    "error": str(exc),
                    "errno": errno.errorcode.get(exc.errno or 0),
                }
            )
        finally:
            if not keep:
                for fd in fds:
                    os.close(fd)

    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message["op"]
        if op == "spawn":
            self.spawn(message, fds)
        elif op == "kill":
            self.kill(int(message["pid"]), int(message["signal"]), bool(message.get("group")))
        elif op == "keep":
            self.keep(fds, drain=bool(message.get("drain")))
        elif op == "detach":
            self.detach(fds, int(message.get("drain", 0)))
        elif op == "log":
            fd = os.open(message["path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        elif op == "commit":
            self.committed = self.detached
        elif op == "exit":
            self.orderly = True
            self.running = False

    def spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        seq = message["seq"]
        if len(fds) != 3:
            self.send({"seq": seq, "error": "spawn needs three fds", "errno": "EINVAL"})
            return
        argv = message.get("argv")
        report_r, report_w = os.pipe() if message.get("report") and argv else (-1, -1)
        pid = os.fork()
        if pid == 0:
            _child(
                message["netns"],
                argv,
                message.get("env"),
                fds,
                message.get("user"),
                report_w,
                message.get("env_add"),
                message.get("cwd"),
            )
        self.children.add(pid)
        self.groups.add(pid)
        if message.get("grace") is not None:
            self.graceful[pid] = float(message["grace"])
        if report_r < 0:
            self.send({"seq": seq, "pid": pid})
            return
        os.close(report_w)
        self.reports[pid] = seq
        self.selector.register(report_r, selectors.EVENT_READ, ("report", pid))

    def on_report(self, fd: int, pid: int) -> None:
        """The child exec'd (EOF) or says why it could not; then its spawn is answered."""
        try:
            said = os.read(fd, MAX_MESSAGE)
        except OSError:
            said = b""
        self.selector.unregister(fd)
        os.close(fd)
        seq = self.reports.pop(pid)
        held = self.held.pop(pid, None)
        if not said:
            self.send({"seq": seq, "pid": pid})
            if held is not None:
                self.send({"exited": pid, "status": held})
            return
        stage, code, detail = json.loads(said)
        if held is None:  # it exits at once after telling us: no "exited" for it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.children.discard(pid)
        self.groups.discard(pid)
        self.graceful.pop(pid, None)
        self.send(
            {
                "seq": seq,
                "error": detail,
                "errno": errno.errorcode.get(code),
                "stage": stage,
            }
        )

    def kill(self, pid: int, sig: int, group: bool) -> None:
        if not group:
            if pid in self.children:
                os.kill(pid, sig)
            return
        if pid not in self.groups:
            return
        deadline = time.monotonic() + SETSID_WAIT
        while True:
            try:
                os.killpg(pid, sig)
                return
            except ProcessLookupError:
                # A spawn without "report" is answered right after the fork: a signal
                # may come before the child's setsid has made the group. Wait for it.
                if not _before_setsid(pid) or time.monotonic() > deadline:
                    self.groups.discard(pid)  # nobody left in it: its id may be reused
                    return
                time.sleep(0.0005)

    def detach(self, fds: list[int], drain: int) -> None:
        # The controller hands the lab over: it exits soon, we keep everything alive.
        if not fds:
            raise ValueError("detach needs the lock fd")
        self.lock_fd = fds[0]
        self.keep(fds[1 : 1 + drain], drain=True)
        self.keep(fds[1 + drain :], drain=False)
        self.send({"detached": os.getpid()})
        self.detached = True

    def keep(self, fds: list[int], drain: bool) -> None:
        self.kept += fds
        for fd in fds if drain else ():  # the agents' stdout: read and drop, none blocks
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, "kept")

    def drain(self, fd: int) -> None:
        try:
            if os.read(fd, 65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self.selector.unregister(fd)

    def on_eof(self) -> None:
        self.selector.unregister(self.control)
        self.control_events = 0
        if not self.committed:
            self.running = False

    def on_signal(self, wake_r: int) -> None:
        try:
            signals = os.read(wake_r, 512)
        except BlockingIOError:
            signals = b""
        if any(s in signals for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
            self.running = False
        self.reap()

    def reap(self) -> None:
        while self.children:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if pid == self.sentinel_pid:
                continue
            self.children.discard(pid)
            self.graceful.pop(pid, None)
            if not _group_alive(pid):
                self.groups.discard(pid)
            if pid in self.reports:  # its spawn is not answered yet: tell both then
                self.held[pid] = _status(raw)
                continue
            self.send({"exited": pid, "status": _status(raw)})

    def finish(self) -> None:
        if not self.orderly:
            self.stop_gracefully()
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # the lab's owner is gone: the clean-up may take it
        if self.orderly:
            with contextlib.suppress(OSError):
                os.write(self.sentinel_pipe, b"o")
        # Without "o" the sentinel reaps the lab now: it kills whatever runs inside the
        # lab's namespaces itself, so it need not wait for us to kill our children.
        os.close(self.sentinel_pipe)
        for pid in self.children | self.groups:
            # Each child leads its own session: its group holds what it started too.
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
        for fd in self.kept:
            os.close(fd)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def stop_gracefully(self) -> None:
        """SIGTERM to the groups of the user's processes (spawned with a grace), then wait
        up to the longest grace for them to exit; SIGKILL follows in `finish`."""
        waiting = {pid for pid in self.graceful if pid in self.children}
        if not waiting:
            return
        for pid in waiting:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + max(self.graceful[pid] for pid in waiting)
        while waiting and time.monotonic() < deadline:
            for pid in list(waiting):
                with contextlib.suppress(ChildProcessError):
                    done, _raw = os.waitpid(pid, os.WNOHANG)
                    if not done:
                        continue
                waiting.discard(pid)
                self.children.discard(pid)
            time.sleep(0.01)


def _sentinel(read_end: int, write_end: int, plan: dict[str, Any] | None) -> None:
    """Runs in the forked sentinel; never returns."""
    try:
        os.setsid()  # signals meant for the fork server's session do not reach us
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_IGN if sig != signal.SIGCHLD else signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.close(write_end)
        os.dup2(read_end, 0)
        os.closerange(3, 65536)
        while True:
            try:
                word = os.read(0, 1)
                break
            except InterruptedError:
                continue
        if word == b"o" or not plan:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        full_clean = [str(arg) for arg in plan.get("full_clean", [])]
        try:
            reaper.reap(str(plan["lab"]), str(plan["ledger"]), full_clean)
        except Exception:  # whatever went wrong half-way, the full clean still runs
            if full_clean:
                os.execvp(full_clean[0], full_clean)
        os._exit(0)
    except BaseException:
        os._exit(1)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m hostagent.forkserver FD [REAP_JSON]\n")
        return 2
    control = socket.socket(fileno=int(argv[1]))
    reap_plan = json.loads(argv[2]) if len(argv) > 2 else None
    preload()
    ForkServer(control, reap_plan).serve()
    return 0


def preload() -> None:
    """Import what children use once, here, not in every child, and before a child drops
    to a user who may not be able to read the interpreter's files: resource (agent
    limits) and the idna codec (socket calls with str addresses) are imported lazily by
    the stdlib otherwise."""
    import encodings.idna  # noqa: F401
    import resource  # noqa: F401

    import hostagent.agent  # noqa: F401


if __name__ == "__main__":
    sys.exit(main(sys.argv))
