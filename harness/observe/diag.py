"""The kernel's own view of a host's sockets: sock_diag over netlink, as `ss` sees them.

    from harness.observe import diag
    for s in diag.sockets(lab.hosts["h2"], "tcp", 4):
        print(s.state, s.local, s.peer, s.inode)   # ESTABLISHED ('10.0.1.12', 80) (...)

The netlink socket is made inside the host's network namespace (a netlink socket keeps
the namespace it was created in), on a short-lived thread of its own (setns moves only
the calling thread), and spoken with the agent's own struct-based dump
(`hostagent.ops_diag`): a fixed header per socket, no attribute parsing, so 30,000
sockets take tens of milliseconds (pyroute2's parsed messages took seconds). Nothing
here parses `ss` output.

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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from harness.core import _netns
from harness.errors import BackendError
from hostagent import ops_diag

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
    port: int = 0,
) -> list[KernelSocket]:
    """Every `proto` socket of `family` in the host's network namespace.

    `states` (names from STATES, or `UNCONN` for UDP) asks the kernel to report only
    sockets in those states; the default is all of them. `port` asks for only those
    whose local port it is (the kernel filters: three sockets among 30,000 cost no
    dump of the 30,000).
    """
    if not host.handle.netns_path:
        return _through_agent(host, proto, family, states, port)
    return sockets_in(
        host.handle.netns_path, proto, family, states=states, port=port, label=host.name
    )


def sockets_in(
    netns_path: str,
    proto: Proto,
    family: int = 4,
    *,
    states: Collection[str] | None = None,
    port: int = 0,
    label: str | None = None,
) -> list[KernelSocket]:
    """`sockets` for a namespace given by its path (`/run/netns/...`, `/proc/<pid>/ns/net`)."""
    if proto not in _PROTOCOLS:
        raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")
    if family not in _FAMILIES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    mask = _state_mask(proto, states)

    def dump() -> list[KernelSocket]:
        rows = _dump(netns_path, _FAMILIES[family], _PROTOCOLS[proto], mask, port)
        return [_kernel_socket(proto, family, row) for row in rows]

    try:
        return _on_own_thread(dump)
    except OSError as exc:
        what = f"sock_diag {proto}/IPv{family} in {label or netns_path}"
        raise BackendError.from_os(exc, what, host=label) from exc


def _through_agent(
    host: LabHost, proto: Proto, family: int, states: Collection[str] | None, port: int
) -> list[KernelSocket]:
    if family not in _FAMILIES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    mask = _state_mask(proto, states)
    args: dict[str, Any] = {"proto": proto, "family": family, "states": mask}
    if port:
        args["port"] = port
    reply = host.host_agent.request("sock_diag", **args)
    return [_kernel_socket(proto, family, row) for row in reply["sockets"]]


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


def _dump(netns_path: str, family: int, protocol: int, mask: int, port: int) -> list[list[Any]]:
    """The rows (state, local address and port, peer address and port, inode, uid);
    runs on a thread nobody else uses."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _netns.entered(fd):
            # The socket is created here, inside the host's namespace, and stays bound
            # to it; nothing else runs on this thread meanwhile.
            nl = ops_diag.netlink_socket()
    finally:
        os.close(fd)
    with nl:
        return ops_diag.dump(family, protocol, mask, sport=port, nl=nl)


def _kernel_socket(proto: str, family: int, row: Sequence[Any]) -> KernelSocket:
    number, src, sport, dst, dport, inode, uid = row
    state = STATES.get(number, f"STATE_{number}")
    if proto == "udp" and state == "CLOSE":
        state = "UNCONN"
    return KernelSocket(
        proto=proto,
        family=family,
        state=state,
        local=(str(src), int(sport)),
        peer=(str(dst), int(dport)),
        inode=int(inode),
        uid=int(uid),
    )


def _on_own_thread(call: Callable[[], T]) -> T:
    # A fresh thread per dump: setns is per thread, and the caller's thread (the lab's
    # loop's, perhaps) must stay in its own namespace.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netharness-diag") as pool:
        return pool.submit(call).result()
