"""One ssh machine as the relay holds it: its connection, the private directory, the helper.

Nothing is created on the machine but one private temporary directory (mkdtemp, 0700)
holding the agent zipapp, uploaded by SFTP. Two sessions run there for the lab's life:

- the keeper (_KEEPER) makes the directory, prints its name, and removes it when its
  stdin ends, whether we end it (teardown) or the connection drops (the relay or the
  controller died): the directory lives exactly as long as this session;
- the helper, `python3 -c _LAUNCH <dir>/agent.pyz <sha256>`: it checks the zipapp is the
  one we built, then runs hostagent.remote from it (a fork server that starts every agent
  and command of this machine, its stdio in frames over the session)."""

from __future__ import annotations

import shlex
import threading
from pathlib import Path

import paramiko

from harness.errors import BackendError
from hostagent import frames

AGENT_FILE = "agent.pyz"
MIN_PYTHON = (3, 9)
READY_TIMEOUT = 30.0  # the helper imports the whole agent from the zipapp: ~0.5 s
END_TIMEOUT = 10.0  # the helper gives the user's processes their grace before it exits
_MKDTEMP = (
    "import sys, tempfile\n"
    "if sys.version_info < {v}: sys.exit('python ' + sys.version.split()[0] + ' < {t}')\n"
    "print(tempfile.mkdtemp(prefix='netharness-'))"
).format(v=MIN_PYTHON, t=".".join(map(str, MIN_PYTHON)))
# The keeper makes the directory (python3's mkdtemp: it checks there is a python3, 127 if
# not, and its version) and removes it when its stdin ends, or the connection does: the
# directory lives exactly as long as this session.
_KEEPER = (
    f'd=$(python3 -c {shlex.quote(_MKDTEMP)}) || exit $?; echo "$d"; cat >/dev/null; rm -rf -- "$d"'
)
# The trailing "hostagent.forkserver" on its command line is for hostagent.owners: agents
# are forks of the helper's fork server and show its command line, which that word names.
_LAUNCH = (
    "import hashlib, sys\n"
    "p = sys.argv[1]\n"
    "with open(p, 'rb') as f:\n"
    "    d = hashlib.sha256(f.read()).hexdigest()\n"
    "if d != sys.argv[2]:\n"
    "    sys.exit('netharness: ' + p + ' does not match what was sent (sha256 ' + d + ', "
    "expected ' + sys.argv[2] + '); is the disk full?')\n"
    "sys.path.insert(0, p)\n"
    "from hostagent.remote import main\n"
    "sys.exit(main())"
)


class Machine:
    """A prepared machine: frames go to its helper with `send`, come back with `receive`."""

    def __init__(
        self,
        name: str,
        client: paramiko.SSHClient,
        directory: str,
        keeper: paramiko.Channel,
        helper: paramiko.Channel,
        decoder: frames.Decoder,
    ) -> None:
        self.name = name
        self.client = client
        self.directory = directory
        self.keeper = keeper
        self.helper = helper
        self.decoder = decoder  # what the helper sent after its "ready" is in here
        self._sending = threading.Lock()

    @classmethod
    def prepare(cls, name: str, client: paramiko.SSHClient, zipapp: tuple[Path, str]) -> Machine:
        """Make the directory, upload the agent, start the helper (blocking). The client
        is the Machine's from here, or closed if this fails."""
        try:
            keeper, directory = _keeper(client, name)
            try:
                target = f"{directory}/{AGENT_FILE}"
                _upload(client, zipapp[0], target)
                helper, decoder = _start_helper(client, name, target, zipapp[1])
            except BaseException:
                keeper.close()
                raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()  # the keeper goes with the connection, and the directory with it
            raise BackendError(f"delivering the agent failed: {exc}", host=name) from None
        except BaseException:
            client.close()
            raise
        return cls(name, client, directory, keeper, helper, decoder)

    def send(self, data: bytes) -> None:
        """One whole frame (or several) to the helper; OSError if the session is gone."""
        try:
            with self._sending:
                self.helper.sendall(data)
        except (paramiko.SSHException, EOFError) as exc:
            raise OSError(f"the ssh session to {self.name} is gone: {exc}") from None

    def receive(self) -> list[tuple[int, int, bytes]]:
        """The next frames from the helper (blocking); [] once its session has ended."""
        while True:
            try:
                data = self.helper.recv(frames.CHUNK)
            except (OSError, paramiko.SSHException, EOFError):
                data = b""
            if not data:
                return []
            found = self.decoder.feed(data)
            if found:
                return found

    def complaints(self) -> bytes:
        """The helper's stderr, as it comes (blocking); b"" once its session has ended.
        Its fork server complains there; sshd may log there too (LogLevel DEBUG)."""
        try:
            return bytes(self.helper.recv_stderr(frames.CHUNK))
        except (OSError, paramiko.SSHException, EOFError):
            return b""

    def close(self) -> None:
        """End the helper (EOF on its stdin: it ends its processes, with their grace),
        then the keeper (the directory goes), then the connection (blocking)."""
        try:
            for channel in (self.helper, self.keeper):
                if not channel.closed:
                    channel.shutdown_write()
                    channel.status_event.wait(END_TIMEOUT)
        except (OSError, paramiko.SSHException, EOFError):
            pass  # the connection is gone: the machine cleans up on its own
        finally:
            self.helper.close()
            self.keeper.close()
            self.client.close()


def _keeper(client: paramiko.SSHClient, name: str) -> tuple[paramiko.Channel, str]:
    """The keeper session and the directory it made."""
    channel = _open_session(client, name)
    try:
        channel.exec_command(_KEEPER)
        channel.settimeout(READY_TIMEOUT)
        directory = channel.makefile("rb").readline().decode(errors="replace").strip()
        channel.settimeout(None)
        if directory.startswith("/"):
            return channel, directory
        status, why = _why_ended(channel)
        if status == 127:
            raise BackendError(
                "python3 is not installed there; the agent needs python3 "
                f"{'.'.join(map(str, MIN_PYTHON))} or newer (e.g. `apt-get install "
                "python3-minimal`)",
                host=name,
            )
        raise BackendError(f"cannot make a temporary directory: {why}", host=name)
    except TimeoutError:
        channel.close()
        message = f"no temporary directory made within {READY_TIMEOUT:g} s"
        raise BackendError(message, host=name) from None
    except BaseException:
        channel.close()
        raise


def _upload(client: paramiko.SSHClient, path: Path, target: str) -> None:
    with client.open_sftp() as sftp:
        sftp.put(str(path), target)
        sftp.chmod(target, 0o600)


def _start_helper(
    client: paramiko.SSHClient, name: str, zipapp: str, digest: str
) -> tuple[paramiko.Channel, frames.Decoder]:
    """Start the helper and wait for its "ready" (it checks the zipapp's SHA-256 first)."""
    channel = _open_session(client, name)
    try:
        args = " ".join(shlex.quote(a) for a in (zipapp, digest, "hostagent.forkserver"))
        channel.exec_command(f"exec python3 -c {shlex.quote(_LAUNCH)} {args}")
        channel.settimeout(READY_TIMEOUT)
        decoder = frames.Decoder()
        while True:
            data = channel.recv(frames.CHUNK)
            if not data:
                _, why = _why_ended(channel)
                raise BackendError(f"the helper did not start: {why}", host=name)
            found = decoder.feed(data)
            if found and found[0][0] == frames.CONTROL and "ready" in frames.message(found[0][2]):
                break
        channel.settimeout(None)
        return channel, decoder
    except TimeoutError:
        channel.close()
        message = f"the helper did not start within {READY_TIMEOUT:g} s"
        raise BackendError(message, host=name) from None
    except (frames.FrameError, ValueError) as exc:
        channel.close()
        raise BackendError(f"the helper did not start: {exc}", host=name) from None
    except BaseException:
        channel.close()
        raise


def _why_ended(channel: paramiko.Channel) -> tuple[int | None, str]:
    """A session that ended early: its exit status, and it with the end of its stderr."""
    channel.status_event.wait(5)
    error = b""
    while channel.recv_stderr_ready():
        error += channel.recv_stderr(frames.CHUNK)
    lines = error.decode(errors="replace").strip().splitlines()
    status = channel.exit_status if channel.exit_status_ready() else None
    said = " / ".join(lines[-3:]) or "no message"
    return status, f"exit status {'unknown' if status is None else status}: {said}"


def _open_session(client: paramiko.SSHClient, host: str) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise BackendError("the ssh connection is closed", host=host)
    try:
        return transport.open_session(timeout=30)
    except paramiko.SSHException as exc:
        raise BackendError(f"cannot open an ssh channel: {exc}", host=host) from None
