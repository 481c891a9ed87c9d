"""`sock_diag`: the kernel's list of the host's sockets, for hosts the controller cannot
enter (ssh: existing machines), where `harness.observe.diag` has no namespace to open a netlink
socket in. Same source as `ss`: NETLINK_SOCK_DIAG, spoken with the socket module.

    > {"id": 3, "op": "sock_diag", "proto": "tcp", "family": 4, "states": 1024}
    < {"id": 3, "ok": true, "result": {"sockets": [[10, "0.0.0.0", 80, "0.0.0.0", 0, 4711, 0]]}}

Each row is [state number, local address, local port, peer address, peer port, inode, uid];
`states` is the kernel's bit mask (1 << state number; omitted: every state).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from hostagent.ops import PROTOS, register
from hostagent.protocol import OpError

if TYPE_CHECKING:
    from hostagent.agent import HostAgent
    from hostagent.protocol import Request

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST_DUMP = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR, NLMSG_DONE = 2, 3
ALL_STATES = (1 << 13) - 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
# inet_diag_req_v2: family, protocol, ext, pad, states, then an all-zero inet_diag_sockid
_REQUEST = struct.Struct("=BBBxI48x")
# inet_diag_msg: family, state, timer, retrans, sport, dport (big endian), src, dst,
# if, cookie, expires, rqueue, wqueue, uid, inode
_MESSAGE = struct.Struct("=BBBB2H16s16sI8xIIIII")
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@register("sock_diag", "proto", "family", "states")
def op_sock_diag(agent: HostAgent, req: Request) -> dict[str, Any]:
    proto = req.choice("proto", PROTOS)
    family = req.integer("family", 4, 4, 6)
    if family not in _FAMILIES:
        raise OpError("sock_diag: family must be 4 or 6", kind="bad-request")
    states = req.integer("states", ALL_STATES, 0, ALL_STATES)
    try:
        rows = dump(_FAMILIES[family], _PROTOCOLS[proto], states)
    except OSError as exc:
        raise OpError.from_os(exc, f"sock_diag {proto}/IPv{family}") from exc
    return {"sockets": rows}


def dump(family: int, protocol: int, states: int) -> list[list[Any]]:
    """Every socket of `family`/`protocol` whose state is in the mask, as the kernel says."""
    length = _HEADER.size + _REQUEST.size
    request = _HEADER.pack(length, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST_DUMP, 1, 0)
    request += _REQUEST.pack(family, protocol, 0, states)
    rows: list[list[Any]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.bind((0, 0))
        nl.send(request)
        while True:
            data = nl.recv(1 << 20)
            offset = 0
            while offset + _HEADER.size <= len(data):
                size, kind = _HEADER.unpack_from(data, offset)[:2]
                body = offset + _HEADER.size
                if kind == NLMSG_DONE:
                    return rows
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return rows
                if kind == SOCK_DIAG_BY_FAMILY:
                    rows.append(_row(family, data, body))
                offset += (size + 3) & ~3
                if size == 0:  # a malformed message: never loop on it
                    return rows


def _row(family: int, data: bytes, offset: int) -> list[Any]:
    fields = _MESSAGE.unpack_from(data, offset)
    state, sport, dport, src, dst = fields[1], fields[4], fields[5], fields[6], fields[7]
    uid, inode = fields[12], fields[13]
    width = 4 if family == socket.AF_INET else 16
    return [
        state,
        socket.inet_ntop(family, src[:width]),
        socket.ntohs(sport),
        socket.inet_ntop(family, dst[:width]),
        socket.ntohs(dport),
        inode,
        uid,
    ]
