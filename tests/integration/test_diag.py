"""harness.observe.diag: the kernel's view of a host's sockets, by sock_diag in its netns."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from harness import Lab
from harness.errors import BackendError
from harness.observe import diag

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def test_a_connection_listener_and_time_wait_as_the_kernel_reports_them() -> None:
    # A socket in the root namespace, on loopback: it must not show up in any lab host.
    with socket.socket() as outsider, Lab.up(TOPOLOGIES / "lan.yaml") as lab:
        outsider.bind(("127.0.0.1", 0))
        outsider.listen()
        outsider_port = outsider.getsockname()[1]
        h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
        server = h2.agent()
        listener = server.listen("tcp", address="10.0.1.12")
        conn = h1.agent().connect("tcp", "10.0.1.12", listener.port)
        accepted = listener.accept()
        assert conn.peer == ("10.0.1.12", listener.port)

        client_view = diag.sockets(h1, "tcp", 4)
        server_view = diag.sockets(h2, "tcp", 4)
        mine = [s for s in client_view if s.local == conn.local]
        assert [(s.state, s.peer) for s in mine] == [("ESTABLISHED", conn.peer)]
        assert mine[0].inode > 0
        assert mine[0].uid == 0
        theirs = [s for s in server_view if s.peer == conn.local]
        assert [(s.state, s.local) for s in theirs] == [("ESTABLISHED", accepted.local)]
        assert theirs[0].five_tuple == ("tcp", "10.0.1.12", listener.port, *conn.local)
        listening = [s for s in server_view if s.state == "LISTEN"]
        assert [s.local for s in listening] == [("10.0.1.12", listener.port)]
        # With a port, the kernel reports only the sockets of that local port.
        other = server.listen("tcp", address="10.0.1.12")
        by_port = diag.sockets(h2, "tcp", 4, port=listener.port)
        assert sorted(s.inode for s in by_port) == sorted(
            s.inode for s in server_view if s.local[1] == listener.port
        )
        assert len(by_port) == 2
        assert [s.local for s in diag.sockets(h2, "tcp", 4, port=other.port)] == [other.local]
        assert [s.local for s in diag.sockets(h1, "tcp", 4, port=conn.local[1])] == [conn.local]
        # Every socket the kernel reports for h1 and h2 is one a lab agent made.
        assert {s.local[0] for s in client_view} == {"10.0.1.11"}
        assert {s.local[0] for s in server_view} == {"10.0.1.12"}
        assert outsider_port not in {s.local[1] for s in client_view + server_view}
        assert diag.sockets(lab.hosts["h3"], "tcp", 4) == []

        # The side that closes first keeps the tuple in TIME_WAIT.
        conn.close()
        server.wait_event("closed", lambda e: e["sock"] == accepted.id)
        waiting = diag.sockets(h1, "tcp", 4, states={"TIME_WAIT"})
        assert [(s.local, s.peer) for s in waiting] == [(conn.local, conn.peer)]
        assert waiting[0].state == "TIME_WAIT"
        assert waiting[0].inode == 0
        assert diag.sockets(h1, "tcp", 4, states={"ESTABLISHED"}) == []


def test_udp_ipv6_and_bad_arguments() -> None:
    with Lab.up(TOPOLOGIES / "lan.yaml") as lab:
        h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
        bound = h2.agent().listen("udp", address="::", v6only=True)
        flow = h1.agent().connect("udp", "fd00:1::12", bound.port)
        assert flow.request("x").peer == flow.local

        (client,) = diag.sockets(h1, "udp", 6)
        assert (client.state, client.local, client.peer) == ("ESTABLISHED", flow.local, flow.peer)
        (server,) = diag.sockets(h2, "udp", 6)
        assert (server.state, server.local, server.peer) == (
            "UNCONN",
            ("::", bound.port),
            ("::", 0),
        )
        assert diag.sockets(h2, "udp", 4) == []  # an IPv6-only socket is not an IPv4 one
        assert diag.sockets(h2, "udp", 6, states={"ESTABLISHED"}) == []

        with pytest.raises(ValueError, match="unknown socket state"):
            diag.sockets(h1, "tcp", 4, states={"OPEN"})
        with pytest.raises(ValueError, match="family"):
            diag.sockets(h1, "tcp", 5)
    with pytest.raises(BackendError, match="sock_diag"):
        diag.sockets(h1, "tcp", 4)  # the namespace is gone with the lab
