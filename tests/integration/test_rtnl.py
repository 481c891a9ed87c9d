"""Batched rtnetlink requests against the real kernel, in a namespace of our own."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from ipaddress import ip_interface

import pytest
from pyroute2 import IPRoute

from harness.core import _netns, _rtnl
from harness.errors import BackendError


@pytest.fixture
def netns_fd() -> Iterator[int]:
    name = f"nhtest-rtnl-{os.getpid()}"
    fd = _netns.create(name)
    try:
        yield fd
    finally:
        os.close(fd)
        _netns.remove(_netns.netns_path(name))


def addresses(fd: int) -> set[str]:
    with _netns.entered(fd):
        ipr = IPRoute()
    with ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}


def test_a_refused_request_names_its_host_and_step_and_the_rest_still_apply(
    netns_fd: int,
) -> None:
    sock = _rtnl.open_socket(netns_fd)
    with sock:
        batch = _rtnl.Batch(sock)
        lo = _rtnl.LOOPBACK_INDEX
        batch.add(_rtnl.RTM_NEWLINK, _rtnl.CHANGE, _rtnl.set_up(lo), "h1", "loopback")
        for n, value in enumerate(["10.9.0.1/24", "10.9.0.1/24", "10.9.0.2/24"]):
            body = _rtnl.new_address(lo, ip_interface(value))
            batch.add(_rtnl.RTM_NEWADDR, _rtnl.CREATE, body, "h1", f"address {n}")
        with pytest.raises(BackendError) as caught:
            batch.commit()
    assert (caught.value.host, caught.value.code) == ("h1", errno.EEXIST)
    assert "address 1" in str(caught.value)
    assert {"10.9.0.1", "10.9.0.2"} <= addresses(netns_fd)


def test_hundreds_of_requests_in_one_commit_are_all_acknowledged(netns_fd: int) -> None:
    sock = _rtnl.open_socket(netns_fd)
    with sock:
        batch = _rtnl.Batch(sock)
        for n in range(300):  # several chunks; more acks than one receive buffer holds
            body = _rtnl.new_address(
                _rtnl.LOOPBACK_INDEX, ip_interface(f"10.8.{n // 250}.{n % 250 + 1}/16")
            )
            batch.add(_rtnl.RTM_NEWADDR, _rtnl.CREATE, body, "h1", f"address {n}")
        batch.commit()
    assert len(addresses(netns_fd) - {"127.0.0.1"}) == 300
