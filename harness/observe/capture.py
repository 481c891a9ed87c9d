"""Packet captures from the fabric side: one pcap per link, nothing needed inside hosts.

    with Lab.up("lan.yaml", capture=True, capture_dir="pcaps") as lab:   # every network
        ...
    lab.captures                       # {"lan": Path("pcaps/lan.pcap"), ...}
    with lab.capture("h1:lan", "h1.pcap") as cap:                      # one interface, by hand
        ...
    cap.packets()                      # frames written so far

A network's pcap is its bridge in the lab's fabric namespace (a bridge in promiscuous
mode sees every frame switched between its ports); a host interface's pcap is the fabric
end of its veth, the peer the host's end names (IFLA_LINK). tcpdump (Debian's, the
well-kept tool) runs in the fabric namespace, started by the lab's fork server;
`-U --immediate-mode` writes each frame as it arrives, so a pcap is readable while the
lab runs. A stop waits until the file holds every frame the kernel counted on the
interface, then SIGINT ends tcpdump cleanly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from harness.core import _netns, naming, userns
from harness.errors import SEE_DOCTOR, BackendError, EnvironmentProblem, UsageError
from harness.observe.diag import _on_own_thread
from harness.observe.diagnostics import iproute_in
from harness.topology import Topology

if TYPE_CHECKING:
    from harness.backends._forkserver import ForkedProcess, ForkServerClient
    from harness.core._loop import LoopThread

READY_TIMEOUT = 10.0  # tcpdump says "listening on" once its socket is bound
STOP_TIMEOUT = 5.0
SETTLE_QUIET = 0.1  # a pcap that grew nothing for this long has caught up with the wire
SETTLE_MAX = 2.0  # ... and gives up waiting for frames the kernel counted after this
_PCAP_HEADER = 24
_RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len
_BIG_ENDIAN_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")


@dataclass(frozen=True)
class Target:
    """Something to capture: a network (`lan`) or a host's interface (`h1:eth0`)."""

    network: str | None
    host: str | None = None
    ifname: str | None = None

    @property
    def label(self) -> str:
        return self.network if self.network is not None else f"{self.host}:{self.ifname}"

    @property
    def filename(self) -> str:
        # Host names have no dots, so `h1.eth0.pcap` never clashes with a network's file.
        return f"{self.label.replace(':', '.')}.pcap"


def parse_target(topology: Topology, text: str) -> Target:
    """`lan` or `h1:eth0` (or `h1:lan`: the host's interface on network lan)."""
    host, colon, iface = text.partition(":")
    if not colon:
        if text not in topology.networks:
            known = ", ".join(topology.networks) or "none"
            raise UsageError(
                f"no network {text!r} in topology {topology.name} (networks: {known}); "
                "name a network or host:interface"
            )
        return Target(text)
    spec = topology.hosts.get(host)
    if spec is None:
        raise UsageError(f"no host {host!r} in topology {topology.name}")
    for interface in spec.interfaces:
        if iface in (interface.ifname, interface.network):
            return Target(None, host, interface.ifname)
    known = ", ".join(i.ifname for i in spec.interfaces) or "none"
    raise UsageError(f"host {host} has no interface {iface!r} (interfaces: {known})")


def targets_of(topology: Topology, every_network: bool = False) -> list[Target]:
    """What the topology asks to capture (`capture: true`), or every network."""
    targets = [Target(n.name) for n in topology.networks.values() if every_network or n.capture]
    for host in topology.hosts.values():
        for interface in host.interfaces:
            if interface.capture:
                targets.append(Target(None, host.name, interface.ifname))
    return targets


class Capture:
    """One running tcpdump writing one pcap; `stop()` ends it with SIGINT."""

    def __init__(
        self, target: Target, path: Path, process: ForkedProcess, fabric: str, ifname: str
    ) -> None:
        self.target = target
        self.path = path
        self._process = process
        self._fabric = fabric  # the fabric namespace's path, and the interface recorded
        self._ifname = ifname
        self._written = PcapCounter(path)
        # (frames the interface had seen, frames in the file) once tcpdump listened
        self._base: tuple[int, int] | None = None

    @property
    def running(self) -> bool:
        return self._process.returncode is None

    async def mark(self) -> None:
        """Note the interface's frame counter and the file's count once tcpdump listens."""
        self._base = (await self._seen(), self._written.count())

    async def stop(self) -> None:
        """SIGINT, so tcpdump finishes the file; SIGKILL if it does not end in time.

        tcpdump drops whatever it has not read yet when interrupted (such as the RST that
        just ended the caller's connect), so first the file must hold as many frames as
        the kernel counted on the interface since the start, and stop growing.
        """
        if self._base is not None:
            await self._drain(*self._base)
        self._process.kill(signal.SIGINT)
        try:
            await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self._process.kill(signal.SIGKILL)
            await self._process.wait()

    def packets(self) -> int:
        return count_packets(self.path)

    async def _drain(self, seen_before: int, written_before: int) -> None:
        deadline = time.monotonic() + SETTLE_MAX
        size = -1
        while time.monotonic() < deadline:
            try:
                seen = await self._seen() - seen_before
                behind = seen - (self._written.count() - written_before)
            except (BackendError, OSError):
                behind = 0  # no counter (the fabric is going): quiet file alone
            now = self.path.stat().st_size if self.path.exists() else 0
            if behind <= 0 and now == size:
                return
            size = now
            await asyncio.sleep(SETTLE_QUIET)

    async def _seen(self) -> int:
        # A bridge counts every frame it passes up to tcpdump as received (promiscuous);
        # a veth port's frames are the ones it received plus the ones it sent.
        both = self.target.network is None
        return await asyncio.to_thread(frames_seen, self._fabric, self._ifname, both)


def frames_seen(netns_path: str, ifname: str, both_directions: bool) -> int:
    """The kernel's frame counter of an interface: received, plus sent if asked."""

    def read() -> int:
        with iproute_in(netns_path) as ipr:
            links = ipr.get_links(ifname=ifname)
        if not links:
            raise BackendError(f"no interface {ifname} in {netns_path}")
        stats = links[0].get("IFLA_STATS64")
        return int(stats["rx_packets"]) + (int(stats["tx_packets"]) if both_directions else 0)

    return _on_own_thread(read)


class PcapCounter:
    """Counts the frames of a pcap that is still being written, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = _PCAP_HEADER
        self._count = 0
        self._record = _RECORD_HEADER

    def count(self) -> int:
        try:
            with open(self._path, "rb") as f:
                if self._offset == _PCAP_HEADER and f.read(4) in _BIG_ENDIAN_MAGICS:
                    self._record = struct.Struct(">IIII")
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        position = 0
        while position + self._record.size <= len(data):
            length = self._record.unpack_from(data, position)[2]
            if position + self._record.size + length > len(data):
                break  # a frame still being written
            position += self._record.size + length
            self._count += 1
        self._offset += position
        return self._count


def count_packets(path: str | os.PathLike[str]) -> int:
    """Frames in a pcap file (classic format, as tcpdump writes it)."""
    return PcapCounter(Path(path)).count()


def fabric_port(lab_id: str, host_netns: str, ifname: str, label: str) -> str:
    """The fabric-side name of a host interface: the veth peer the host's end points to."""

    def links(netns: str, **match: Any) -> list[Any]:
        with iproute_in(netns) as ipr:
            found: list[Any] = ipr.get_links(**match)
            return found

    def lookup() -> str:
        inside = links(host_netns, ifname=ifname)
        peer = inside[0].get("IFLA_LINK") if inside else None
        fabric = links(_netns.netns_path(naming.fabric_netns(lab_id)), index=peer) if peer else []
        if not fabric:
            raise BackendError(f"{label} is not a veth of lab {lab_id}'s fabric")
        return str(fabric[0].get("IFLA_IFNAME"))

    try:
        return _on_own_thread(lookup)
    except OSError as exc:
        raise BackendError.from_os(exc, f"cannot look up {label}") from exc


class Capturer(NamedTuple):
    """The program that captures: its argv for an interface and a file, and what it says
    on stderr once its socket is bound."""

    name: str
    argv: Callable[[str, Path], list[str]]
    ready: str


def capturer() -> Capturer:
    """tcpdump; in a rootless lab dumpcap (Wireshark's), since tcpdump, even with `-Z
    root`, calls setgroups(2), which a user namespace of one's own refuses."""
    if userns.inside():
        dumpcap = _installed("dumpcap", "tshark")
        return Capturer(
            "dumpcap", lambda ifname, path: [dumpcap, *_dumpcap_args(ifname, path)], "Capturing on"
        )
    tcpdump = _installed("tcpdump", "tcpdump")
    return Capturer("tcpdump", lambda ifname, path: [tcpdump, *_args(ifname, path)], "listening on")


def _installed(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise EnvironmentProblem(
            f"packet capture needs {program}, which is not installed here; install it with "
            f"`apt-get install {package}`; {SEE_DOCTOR}"
        )
    return found


async def start(
    forkserver: ForkServerClient,
    lab_id: str,
    targets: Iterable[Target],
    directory: Path,
    logs: Path,
    host_netns: Mapping[str, str],
    filename: str | None = None,
) -> list[Capture]:
    """Start one tcpdump per target in the fabric namespace; returns once all listen.

    Files are `directory/<target's filename>`, or `filename` (for a single target);
    `host_netns` maps host names to their namespace paths (to find interfaces' peers).
    """
    targets = list(targets)
    if not targets:
        return []
    tool = capturer()
    directory.mkdir(parents=True, exist_ok=True)
    fabric = _netns.netns_path(naming.fabric_netns(lab_id))
    captures: list[Capture] = []
    logs_of: dict[Capture, Path] = {}
    try:
        for target in targets:
            ifname = target.network
            if ifname is None:
                assert target.host is not None
                assert target.ifname is not None
                ifname = await asyncio.to_thread(
                    fabric_port, lab_id, host_netns[target.host], target.ifname, target.label
                )
            path = directory / (filename or target.filename)
            log = logs / f"capture-{target.filename[:-5]}-{time.time_ns()}.log"
            process = await _spawn(forkserver, fabric, tool.argv(ifname, path), log)
            captures.append(Capture(target, path, process, fabric, ifname))
            logs_of[captures[-1]] = log
        # All of them start at once; each is ready when tcpdump says it listens.
        await asyncio.gather(*(_wait_listening(c, logs_of[c], tool) for c in captures))
        await asyncio.gather(*(c.mark() for c in captures))
    except BaseException:
        await asyncio.gather(*(c.stop() for c in captures if c.running), return_exceptions=True)
        raise
    return captures


def _args(ifname: str, path: Path) -> list[str]:
    # -Z root: keep root, so the file can be written wherever we are told (no drop to
    # the tcpdump user); -n: no name lookups from a lab; -U --immediate-mode: each frame
    # is in the file as soon as it is seen, and nothing is lost in a ring buffer at stop.
    return ["-i", ifname, "-w", str(path), "-U", "--immediate-mode", "-n", "-Z", "root"]


def _dumpcap_args(ifname: str, path: Path) -> list[str]:
    # -P: the classic pcap format tcpdump writes; -q: no running packet counts on stderr.
    return ["-i", ifname, "-w", str(path), "-P", "-q"]


async def _spawn(
    forkserver: ForkServerClient, netns: str, argv: list[str], log: Path
) -> ForkedProcess:
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return await forkserver.spawn(netns, argv, (null, out, out))
    finally:
        os.close(null)
        os.close(out)


async def _wait_listening(capture: Capture, log: Path, tool: Capturer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        text = log.read_text(errors="replace")
        if tool.ready in text:
            return
        if not capture.running or time.monotonic() > deadline:
            await capture.stop()
            said = text.strip() or "nothing"
            raise BackendError(
                f"{tool.name} did not start capturing {capture.target.label} (it said: {said})"
            )
        await asyncio.sleep(0.01)


async def stop(captures: Iterable[Capture]) -> None:
    await asyncio.gather(*(c.stop() for c in captures if c.running))


class LabCapture:
    """A capture started by hand on a running lab (`lab.capture(...)`); also stopped at
    teardown if still running."""

    def __init__(self, capture: Capture, runner: LoopThread) -> None:
        self._capture = capture
        self._runner = runner

    @property
    def path(self) -> Path:
        return self._capture.path

    @property
    def target(self) -> Target:
        return self._capture.target

    def stop(self) -> None:
        if self._capture.running:
            self._runner.run(self._capture.stop())

    def packets(self) -> int:
        return self._capture.packets()

    def __enter__(self) -> LabCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
