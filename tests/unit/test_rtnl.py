"""Batched rtnetlink messages: packed by harness.core._rtnl, read back by pyroute2's parser."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from harness.core import _rtnl
from harness.errors import BackendError


def parse(cls: Any, body: bytes) -> Any:
    data = struct.pack("=IHHII", 16 + len(body), _rtnl.RTM_NEWLINK, 0, 1, 0) + body
    msg = cls(data)
    msg.decode()
    return msg


def test_veth_carries_names_master_alias_and_the_peer_in_its_namespace() -> None:
    msg = parse(ifinfmsg, _rtnl.new_veth(1005, "p5", 1000, "lab:h1:eth0", 1001, "eth0", 7))
    assert (msg["index"], msg["flags"], msg["change"]) == (1005, 1, 1)
    assert msg.get_attr("IFLA_IFNAME") == "p5"
    assert msg.get_attr("IFLA_MASTER") == 1000
    assert msg.get_attr("IFLA_IFALIAS") == "lab:h1:eth0"
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert (peer["index"], peer["flags"]) == (1001, 0)  # up later, from inside
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert peer.get_attr("IFLA_NET_NS_FD") == 7


def test_bridge_switches_at_once() -> None:
    msg = parse(ifinfmsg, _rtnl.new_bridge(1000, "lan"))
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA")
    assert info.get_attr("IFLA_INFO_KIND") == "bridge"
    assert data.get_attr("IFLA_BR_STP_STATE") == 0
    assert data.get_attr("IFLA_BR_FORWARD_DELAY") == 0
    assert data.get_attr("IFLA_BR_MCAST_SNOOPING") == 0


@pytest.mark.parametrize("value", ["10.0.1.11/24", "fd00:1::11/64"])
def test_address_without_duplicate_detection(value: str) -> None:
    msg = parse(ifaddrmsg, _rtnl.new_address(1001, ip_interface(value)))
    address = ip_interface(value)
    assert msg["index"] == 1001
    assert msg["prefixlen"] == address.network.prefixlen
    assert msg.get_attr("IFA_LOCAL") == str(address.ip)
    assert msg.get_attr("IFA_FLAGS") & _rtnl.IFA_F_NODAD


@pytest.mark.parametrize(
    ("to", "via", "dst"),
    [("0.0.0.0/0", "10.0.1.1", None), ("10.2.0.0/16", "10.0.1.1", "10.2.0.0")],
)
def test_route(to: str, via: str, dst: str | None) -> None:
    msg = parse(rtmsg, _rtnl.new_route(ip_network(to), ip_address(via)))
    assert msg["family"] == socket.AF_INET
    assert msg["dst_len"] == ip_network(to).prefixlen
    assert msg.get_attr("RTA_GATEWAY") == via
    assert msg.get_attr("RTA_DST") == dst


class FakeKernel:
    """Answers every request it is sent with an ack, refusing the sequence numbers given."""

    def __init__(self, refuse: dict[int, int]) -> None:
        self.refuse = refuse
        self.sends: list[int] = []
        self.pending: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        offset, count = 0, 0
        while offset < len(data):
            length, _kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
            code = -self.refuse.get(seq, 0)
            header = struct.pack("=IHHII", 36, _rtnl.NLMSG_ERROR, 0, seq, 0)
            self.pending.append(header + struct.pack("=iIHHII", code, length, 0, 0, seq, 0))
            offset += length
            count += 1
        self.sends.append(count)

    def recv(self, size: int) -> bytes:
        data, self.pending = b"".join(self.pending[:3]), self.pending[3:]
        return data


def test_batch_sends_in_chunks_and_raises_the_first_refusal_with_host_and_step() -> None:
    kernel = FakeKernel({70: errno.EEXIST, 90: errno.ENODEV})
    batch = _rtnl.Batch(kernel)  # type: ignore[arg-type]
    for n in range(100):
        batch.add(_rtnl.RTM_NEWLINK, _rtnl.CHANGE, _rtnl.set_up(n + 1), f"h{n}", "configure")
    with pytest.raises(BackendError) as caught:
        batch.commit()
    assert kernel.sends == [_rtnl.CHUNK, 100 - _rtnl.CHUNK]  # every request was sent
    assert (caught.value.host, caught.value.code) == ("h69", errno.EEXIST)
    assert "configure" in str(caught.value)
    assert len(batch) == 0
