"""The kernel's own view of a host's sockets: sock_diag over netlink, as `ss` sees them.

    from harness.observe import diag
    for s in diag.sockets(lab.hosts["h2"], "tcp", 4):
        print(s.state, s.local, s.peer, s.inode)   # ESTABLISHED ('10.0.1.12', 80) (...)

The netlink socket is made inside the host's network namespace (a netlink socket keeps
the namespace it was created in), on a short-lived thread of its own: setns moves only
the calling thread, and pyroute2's synchronous socket runs an event loop of its own,
which must not share a thread with the lab's loop. Nothing here parses `ss` output.

States are the kernel's TCP state names (`ESTABLISHED`, `SYN_SENT`, `TIME_WAIT`,
`LISTEN`, ...). UDP sockets use the same numbers: a connected UDP socket is
`ESTABLISHED`, an unconnected one `UNCONN` (as `ss` prints it; the kernel says CLOSE).

A host with no namespace on this machine (ssh: an existing machine) is asked through its
agent instead: the agent's `sock_diag` op makes the same netlink request there.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from harness.core import _netns
from harness.errors import BackendError

if TYPE_CHECKING:
    from harness.lab import LabHost

__all__ = ["STATES", "KernelSocket", "sockets", "sockets_in"]

Proto = Literal["tcp", "udp"]
T = TypeVar("T")

# include/net/tcp_states.h
STATES: dict[int, str] = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
_NUMBERS = {name: number for number, name in STATES.items()}
_ALL_STATES = (1 << 13) - 1
_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True)
class KernelSocket:
    """One socket as the kernel reports it (inode and uid are 0 for TIME_WAIT sockets)."""

    proto: str
    family: int  # 4 or 6
    state: str
    local: tuple[str, int]
    peer: tuple[str, int]
    inode: int
    uid: int

    @property
    def five_tuple(self) -> tuple[str, str, int, str, int]:
        return (self.proto, self.local[0], self.local[1], self.peer[0], self.peer[1])


def sockets(
    host: LabHost,
    proto: Proto,
    family: int = 4,
    *,
    states: Collection[str] | None = None,
) -> list[KernelSocket]:
    """Every `proto` socket of `family` in the host's network namespace.

    `states` (names from STATES, or `UNCONN` for UDP) asks the kernel to report only
    sockets in those states; the default is all of them.
    """
    if not host.handle.netns_path:
        return _through_agent(host, proto, family, states)
    return sockets_in(host.handle.netns_path, proto, family, states=states, label=host.name)


def sockets_in(
    netns_path: str,
    proto: Proto,
    family: int = 4,
    *,
    states: Collection[str] | None = None,
    label: str | None = None,
) -> list[KernelSocket]:
    """`sockets` for a namespace given by its path (`/run/netns/...`, `/proc/<pid>/ns/net`)."""
    if proto not in _PROTOCOLS:
        raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")
    if family not in _FAMILIES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    mask = _state_mask(proto, states)

    def dump() -> list[KernelSocket]:
        rows = _dump(netns_path, _FAMILIES[family], _PROTOCOLS[proto], mask)
        return [_kernel_socket(proto, family, row) for row in rows]

    try:
        return _on_own_thread(dump)
    except OSError as exc:
        what = f"sock_diag {proto}/IPv{family} in {label or netns_path}"
        raise BackendError.from_os(exc, what, host=label) from exc


def _through_agent(
    host: LabHost, proto: Proto, family: int, states: Collection[str] | None
) -> list[KernelSocket]:
    if family not in _FAMILIES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    mask = _state_mask(proto, states)
    reply = host.host_agent.request("sock_diag", proto=proto, family=family, states=mask)
    return [
        _kernel_socket(
            proto,
            family,
            {
                "idiag_state": state,
                "idiag_src": src,
                "idiag_sport": sport,
                "idiag_dst": dst,
                "idiag_dport": dport,
                "idiag_inode": inode,
                "idiag_uid": uid,
            },
        )
        for state, src, sport, dst, dport, inode, uid in reply["sockets"]
    ]


def _state_mask(proto: str, states: Collection[str] | None) -> int:
    if states is None:
        return _ALL_STATES
    mask = 0
    for given in states:
        name = "CLOSE" if given == "UNCONN" and proto == "udp" else given
        if name not in _NUMBERS:
            known = ", ".join([*_NUMBERS, "UNCONN"])
            raise ValueError(f"unknown socket state {name!r} (known: {known})")
        mask |= 1 << _NUMBERS[name]
    return mask


def _dump(netns_path: str, family: int, protocol: int, mask: int) -> Iterable[Any]:
    """The raw sock_diag messages; runs on a thread nobody else uses."""
    from pyroute2 import DiagSocket

    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _netns.entered(fd):
            # The socket is created here, inside the host's namespace, and stays bound
            # to it; nothing else runs on this thread meanwhile.
            ds = DiagSocket()
    finally:
        os.close(fd)
    with ds:
        ds.bind()
        rows: tuple[Any, ...] = ds.get_sock_stats(family=family, protocol=protocol, states=mask)
        return rows


def _kernel_socket(proto: str, family: int, row: Any) -> KernelSocket:
    number = int(row["idiag_state"])
    state = STATES.get(number, f"STATE_{number}")
    if proto == "udp" and state == "CLOSE":
        state = "UNCONN"
    return KernelSocket(
        proto=proto,
        family=family,
        state=state,
        local=(str(row["idiag_src"]), int(row["idiag_sport"])),
        peer=(str(row["idiag_dst"]), int(row["idiag_dport"])),
        inode=int(row["idiag_inode"]),
        uid=int(row["idiag_uid"]),
    )


def _on_own_thread(call: Callable[[], T]) -> T:
    # A fresh thread per dump: setns is per thread, and pyroute2's synchronous socket
    # runs its own event loop, which must not meet the caller's (or the lab's).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netharness-diag") as pool:
        return pool.submit(call).result()
