"""Batched rtnetlink requests: many packed into one sendmsg, every one acknowledged.

Bring-up makes a handful of objects per host (veth pair, addresses, routes, links up).
Through pyroute2's request pipeline each costs about a millisecond of Python, more than
the kernel's own work, so the fabric packs these few fixed message types itself (layouts
from linux/rtnetlink.h and linux/if_link.h) and sends a chunk of them per system call.
Interfaces get explicit indexes, so no lookup is needed between creating a veth and
configuring it. Everything else (reads, rare requests) stays with pyroute2.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from harness.core import _netns
from harness.errors import BackendError

RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
CHANGE = NLM_F_REQUEST | NLM_F_ACK
IFF_UP = 0x1
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 3, 10, 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_BR_FORWARD_DELAY, IFLA_BR_STP_STATE, IFLA_BR_MCAST_SNOOPING = 1, 5, 23
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS, IFA_F_NODAD = 1, 2, 8, 0x02
RTA_DST, RTA_GATEWAY = 1, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
LOOPBACK_INDEX = 1
# Acks queue in our receive buffer while the kernel works through a send (it does so in
# the sending thread); each costs about a kilobyte of the default 208 KiB buffer.
CHUNK = 64


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _text(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ifinfo(index: int, up: bool) -> bytes:
    """struct ifinfomsg: change only IFF_UP, to `up`."""
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)


def new_bridge(index: int, name: str) -> bytes:
    """A bridge, up, switching at once: no STP, no forwarding delay, no IGMP snooping."""
    data = (
        _u32(IFLA_BR_STP_STATE, 0)
        + _u32(IFLA_BR_FORWARD_DELAY, 0)
        + _attr(IFLA_BR_MCAST_SNOOPING, b"\0")
    )
    info = _text(IFLA_INFO_KIND, "bridge") + _attr(IFLA_INFO_DATA, data)
    return _ifinfo(index, True) + _text(IFLA_IFNAME, name) + _attr(IFLA_LINKINFO, info)


def new_veth(
    index: int,
    name: str,
    master: int,
    alias: str,
    peer_index: int,
    peer_name: str,
    peer_netns_fd: int,
) -> bytes:
    """A veth pair: this end up on bridge `master`, the peer made inside `peer_netns_fd`.

    The peer stays down: the kernel cannot open it before both ends are linked
    (ENOTCONN), so it is set up afterwards from its own namespace.
    """
    peer = (
        _ifinfo(peer_index, False)
        + _text(IFLA_IFNAME, peer_name)
        + _u32(IFLA_NET_NS_FD, peer_netns_fd)
    )
    info = _text(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
    return (
        _ifinfo(index, True)
        + _text(IFLA_IFNAME, name)
        + _u32(IFLA_MASTER, master)
        + _text(IFLA_IFALIAS, alias)
        + _attr(IFLA_LINKINFO, info)
    )


def set_up(index: int) -> bytes:
    return _ifinfo(index, True)


def new_address(index: int, value: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bytes:
    """An address usable at once (no duplicate address detection)."""
    family = socket.AF_INET if value.version == 4 else socket.AF_INET6
    packed = value.ip.packed
    header = struct.pack("=BBBBI", family, value.network.prefixlen, IFA_F_NODAD, 0, index)
    flags = _u32(IFA_FLAGS, IFA_F_NODAD)
    return header + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed) + flags


def new_route(
    to: ipaddress.IPv4Network | ipaddress.IPv6Network,
    via: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bytes:
    family = socket.AF_INET if to.version == 4 else socket.AF_INET6
    header = struct.pack(
        "=BBBBBBBBI",
        family,
        to.prefixlen,
        0,  # source prefix length
        0,  # tos
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,  # flags
    )
    body = header + _attr(RTA_GATEWAY, via.packed)
    if to.prefixlen:
        body += _attr(RTA_DST, to.network_address.packed)
    return body


def open_socket(netns_fd: int) -> socket.socket:
    """An rtnetlink socket of the namespace behind `netns_fd` (sockets keep their netns)."""
    with _netns.entered(netns_fd):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class Batch:
    """Requests for one rtnetlink socket; `commit()` sends them and checks every ack.

    Each request names the host and what it does, so a refusal becomes a BackendError
    that says which host, which step and the errno. The kernel carries on with the
    requests after a refused one; the first refusal is raised once all are answered.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._requests: list[tuple[int, bytes, str | None, str]] = []
        self._seq = 0

    def add(self, kind: int, flags: int, body: bytes, host: str | None, what: str) -> None:
        self._seq += 1
        header = struct.pack("=IHHII", 16 + len(body), kind, flags, self._seq, 0)
        self._requests.append((self._seq, header + body, host, what))

    def __len__(self) -> int:
        return len(self._requests)

    def commit(self) -> None:
        requests, self._requests = self._requests, []
        first: BackendError | None = None
        for start in range(0, len(requests), CHUNK):
            chunk = requests[start : start + CHUNK]
            try:
                self._sock.sendall(b"".join(message for _s, message, _h, _w in chunk))
                failures = self._acks({seq for seq, *_ in chunk})
            except OSError as exc:
                raise BackendError.from_os(exc, "netlink") from exc
            if failures and first is None:
                by_seq = {seq: (host, what) for seq, _m, host, what in chunk}
                seq, code = min(failures)
                host, what = by_seq[seq]
                first = BackendError(what, host=host, code=code)
        if first is not None:
            raise first

    def _acks(self, waiting: set[int]) -> list[tuple[int, int]]:
        failures = []
        while waiting:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_ERROR:
                    # struct nlmsgerr: the error, then the header of the request it answers
                    code, seq = struct.unpack_from("=i8xI", data, offset + 16)
                    waiting.discard(seq)
                    if code:
                        failures.append((seq, -code))
                offset += max((length + 3) & ~3, 16)
        return failures
