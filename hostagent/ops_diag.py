"""`sock_diag`: the kernel's list of the host's sockets, for hosts the controller cannot
enter (ssh: existing machines), where `harness.observe.diag` has no namespace to open a netlink
socket in. Same source as `ss`: NETLINK_SOCK_DIAG, spoken with the socket module.

    > {"id": 3, "op": "sock_diag", "proto": "tcp", "family": 4, "states": 1024}
    < {"id": 3, "ok": true, "result": {"sockets": [[10, "0.0.0.0", 80, "0.0.0.0", 0, 4711, 0]]}}

Each row is [state number, local address, local port, peer address, peer port, inode, uid];
`states` is the kernel's bit mask (1 << state number; omitted: every state); `port`, only
the sockets of that local port (the kernel filters them).

`socket_table`: every TCP and UDP socket of the host (IPv4 and IPv6) with the processes
that hold it, what `ss -tupan` shows (`listening`: only TCP LISTEN and unconnected UDP,
as `ss -tulpn`; `port`: only sockets of that local port; `protos`: only these):

    > {"id": 4, "op": "socket_table", "listening": true}
    < {"id": 4, "ok": true, "result": {"complete": true,
         "sockets": [["tcp", 4, 10, "0.0.0.0", 80, "0.0.0.0", 0, 4711, 0, [[812, 6]]]],
         "processes": {"812": {"ppid": 1, "comm": "nginx", "cmdline": ["nginx", ...],
                               "uid": 0, "user": "root", "ancestors": [1]}}}}

A row is [proto, family, state number, local address, local port, peer address, peer
port, inode, uid, [[pid, fd], ...]]; `complete` is false when some process's descriptors
could not be read (an agent that is not root), so that a holder may be missing.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from hostagent import owners
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
# linux/inet_diag.h: the request's filter program, and its "local port equals" op
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11
_NLATTR = struct.Struct("=HH")  # nla_len, nla_type
_BC_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes, no
_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
# What `ss -l` lists: TCP in LISTEN, UDP in CLOSE (bound, not connected). LISTEN alone
# lets the kernel skip its walk of every namespace's established TCP sockets (~2 ms).
LISTENING = {"tcp": 1 << 10, "udp": 1 << 7}


@register("sock_diag", "proto", "family", "states", "port")
def op_sock_diag(agent: HostAgent, req: Request) -> dict[str, Any]:
    proto = req.choice("proto", PROTOS)
    family = req.integer("family", 4, 4, 6)
    if family not in _FAMILIES:
        raise OpError("sock_diag: family must be 4 or 6", kind="bad-request")
    states = req.integer("states", ALL_STATES, 0, ALL_STATES)
    port = req.port("port", 0)
    try:
        rows = dump(_FAMILIES[family], _PROTOCOLS[proto], states, sport=port)
    except OSError as exc:
        raise OpError.from_os(exc, f"sock_diag {proto}/IPv{family}") from exc
    return {"sockets": rows}


@register("socket_table", "listening", "port", "protos")
def op_socket_table(agent: HostAgent, req: Request) -> dict[str, Any]:
    listening = req.flag("listening", False)
    port = req.port("port", 0)
    protos = req.args.get("protos", list(PROTOS))
    if not isinstance(protos, list) or not protos or set(protos) - set(PROTOS):
        raise OpError("argument 'protos' must be a list of 'tcp' and 'udp'")
    rows: list[list[Any]] = []
    for proto in PROTOS:
        if proto not in protos:
            continue
        for version, family in _FAMILIES.items():
            try:
                states = LISTENING[proto] if listening else ALL_STATES
                found = dump(family, _PROTOCOLS[proto], states)
            except OSError as exc:
                raise OpError.from_os(exc, f"sock_diag {proto}/IPv{version}") from exc
            rows += [[proto, version, *row] for row in found if not port or row[2] == port]
    held, complete = owners.holders({row[7] for row in rows})
    for row in rows:
        row.append(held.get(row[7], []))
    pids = {pid for row in rows for pid, _fd in row[9]}
    return {"sockets": rows, "processes": owners.describe(pids), "complete": complete}


def netlink_socket() -> socket.socket:
    """A sock_diag socket of the calling thread's network namespace (it keeps that one)."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        nl.bind((0, 0))
    except OSError:
        nl.close()
        raise
    return nl


def dump(
    family: int, protocol: int, states: int, *, sport: int = 0, nl: socket.socket | None = None
) -> list[list[Any]]:
    """Every socket of `family`/`protocol` whose state is in the mask, as the kernel says;
    with `sport`, only those of that local port: the kernel filters them (as `ss sport
    = :N` has it), so a few sockets among tens of thousands cost no dump of them all.
    `nl`: a `netlink_socket` made elsewhere (another namespace's), left open."""
    bytecode = _port_filter(sport) if sport else b""
    length = _HEADER.size + _REQUEST.size + len(bytecode)
    request = _HEADER.pack(length, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST_DUMP, 1, 0)
    request += _REQUEST.pack(family, protocol, 0, states) + bytecode
    if nl is not None:
        return _exchange(nl, family, request)
    with netlink_socket() as own:
        return _exchange(own, family, request)


def _exchange(nl: socket.socket, family: int, request: bytes) -> list[list[Any]]:
    rows: list[list[Any]] = []
    nl.send(request)
    while True:
        data = nl.recv(1 << 16)
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


def _port_filter(port: int) -> bytes:
    """An INET_DIAG_REQ_BYTECODE attribute keeping sockets whose local port is `port`:
    one INET_DIAG_BC_S_EQ op (true: go on 8 bytes, to the program's end, kept; false:
    jump 4 past it, dropped) and the op that carries the port in its `no` field."""
    program = _BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + _BC_OP.pack(0, 0, port)
    return _NLATTR.pack(_NLATTR.size + len(program), INET_DIAG_REQ_BYTECODE) + program


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
