"""Every host agent op against real loopback sockets (127.0.0.1 and ::1 only)."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.test_hostagent_protocol import RawAgent

LO = "127.0.0.1"
LO6 = "::1"


@pytest.fixture
def agent() -> Iterator[RawAgent]:
    raw = RawAgent()
    try:
        yield raw
    finally:
        raw.close()


@pytest.fixture
def other() -> Iterator[RawAgent]:
    raw = RawAgent()
    try:
        yield raw
    finally:
        raw.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on right now (bound by us, then released)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LO, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_event(agent: RawAgent, kind: str, **match: Any) -> dict[str, Any]:
    for event in agent.events:
        if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
            agent.events.remove(event)
            return event
    while True:
        frame = agent.frame()
        assert "event" in frame, frame
        if frame["event"] == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame
        agent.events.append(frame)


def test_info(agent: RawAgent) -> None:
    info = agent.ok("info")
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        low, high = (int(part) for part in handle.read().split())
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as handle:
        unprivileged = int(handle.read())
    assert info["pid"] == agent.pid
    assert info["uid"] == os.getuid()
    assert info["hostname"] == socket.gethostname()
    assert info["version"] == 1
    assert info["ip_local_port_range"] == [low, high]
    assert info["ip_unprivileged_port_start"] == unprivileged
    assert info["netns"] == os.readlink("/proc/self/ns/net")
    assert info["sockets"] == 0
    agent.ok("listen", proto="udp", address=LO)
    assert agent.ok("info")["sockets"] == 1


def test_listen_tcp_and_udp_on_both_families(agent: RawAgent) -> None:
    tcp4 = agent.ok("listen", proto="tcp", address=LO)
    tcp6 = agent.ok("listen", proto="tcp", address=LO6)
    agent.ok("listen", proto="udp", address=LO)
    udp6 = agent.ok("listen", proto="udp", address=LO6)
    assert tcp4["local"][0] == LO
    assert tcp4["local"][1] > 0
    assert tcp6["local"][0] == LO6
    assert tcp6["local"][1] > 0
    rows = {row["sock"]: row for row in agent.ok("sockets")["sockets"]}
    assert [(r["proto"], r["family"], r["kind"], r["state"]) for r in rows.values()] == [
        ("tcp", 4, "listener", "listening"),
        ("tcp", 6, "listener", "listening"),
        ("udp", 4, "datagram", "bound"),
        ("udp", 6, "datagram", "bound"),
    ]
    assert rows[udp6["sock"]]["local"] == udp6["local"]
    assert rows[tcp4["sock"]]["peer"] is None
    with socket.create_connection((LO, tcp4["local"][1]), timeout=2):
        pass  # the kernel really listens there


def test_second_bind_is_eaddrinuse(agent: RawAgent, other: RawAgent) -> None:
    port = agent.ok("listen", proto="tcp", address=LO)["local"][1]
    error = other.error("listen", proto="tcp", address=LO, port=port)
    assert error["errno"] == "EADDRINUSE"
    assert error["code"] == 98
    assert error["kind"] == "os"
    assert f"{LO}:{port}" in error["message"]
    udp = agent.ok("listen", proto="udp", address=LO6)["local"][1]
    assert agent.error("listen", proto="udp", address=LO6, port=udp)["errno"] == "EADDRINUSE"


def test_binding_a_foreign_address_is_eaddrnotavail(agent: RawAgent) -> None:
    for proto in ("tcp", "udp"):
        error = agent.error("listen", proto=proto, address="10.255.255.1")
        assert error["errno"] == "EADDRNOTAVAIL"
    error = agent.error("connect", proto="tcp", address=LO, port=9, source="10.255.255.1")
    assert error["errno"] == "EADDRNOTAVAIL"
    assert agent.ok("sockets")["sockets"] == []


def test_connect_to_a_closed_port_is_econnrefused(agent: RawAgent) -> None:
    error = agent.error("connect", proto="tcp", address=LO, port=free_port())
    assert error["errno"] == "ECONNREFUSED"
    assert error["kind"] == "os"
    error6 = agent.error("connect", proto="tcp", address=LO6, port=free_port())
    assert error6["errno"] == "ECONNREFUSED"
    assert agent.ok("sockets")["sockets"] == []


def test_connect_timeout_is_etimedout() -> None:
    # A listener with a full accept queue drops SYNs: the connect never completes.
    with socket.socket() as full:
        full.bind((LO, 0))
        full.listen(0)
        port = full.getsockname()[1]
        raw = RawAgent()
        try:
            errors = []
            for _ in range(4):
                frame = raw.call("connect", proto="tcp", address=LO, port=port, timeout=0.2)
                if not frame["ok"]:
                    errors.append(frame["error"])
                    break
        finally:
            raw.close()
    assert errors, "the queue never filled"
    assert errors[0]["errno"] == "ETIMEDOUT"
    assert errors[0]["kind"] == "timeout"
    assert errors[0]["code"] == 110


def test_tcp_echo_identity_one_accepted_socket_per_connection(agent: RawAgent) -> None:
    listener = agent.ok("listen", proto="tcp", address=LO)
    port = listener["local"][1]
    client = RawAgent()
    try:
        conns = [client.ok("connect", proto="tcp", address=LO, port=port) for _ in range(3)]
        echoes = [client.ok("request", sock=c["sock"], data=f"hi {i}") for i, c in enumerate(conns)]
        accepted = [wait_event(agent, "accepted", listener=listener["sock"]) for _ in conns]
        rows = {row["sock"]: row for row in agent.ok("sockets")["sockets"]}
    finally:
        client.close()
    by_peer = {tuple(e["peer"]): e for e in accepted}
    tuples = set()
    for i, (conn, result) in enumerate(zip(conns, echoes, strict=True)):
        echo = result["reply"]
        assert echo["pid"] == agent.pid
        assert echo["data"] == f"hi {i}"
        assert echo["local"] == conn["peer"]  # the server sees the client's view, mirrored
        assert echo["peer"] == conn["local"]
        assert by_peer[tuple(conn["local"])]["sock"] == echo["sock"]
        assert echo["sock"] != listener["sock"]
        assert 0 <= result["rtt"] < 5
        tuples.add((*echo["local"], *echo["peer"]))
    assert len(tuples) == 3
    assert len({e["sock"] for e in accepted}) == 3
    for event in accepted:
        assert rows[event["sock"]]["parent"] == listener["sock"]
        assert rows[event["sock"]]["kind"] == "stream"
        assert rows[event["sock"]]["state"] == "connected"
    # The client is gone: each echoing connection closes and is forgotten; the listener stays.
    for event in accepted:
        assert wait_event(agent, "closed", sock=event["sock"])["by"] == "peer"
    assert [row["sock"] for row in agent.ok("sockets")["sockets"]] == [listener["sock"]]


def test_a_listener_without_events_still_lists_and_echoes_what_it_accepted(
    agent: RawAgent,
) -> None:
    listener = agent.ok("listen", proto="tcp", address=LO, events=False)
    port = listener["local"][1]
    client = RawAgent()
    try:
        conns = [client.ok("connect", proto="tcp", address=LO, port=port) for _ in range(3)]
        echoes = [client.ok("request", sock=c["sock"], data="hi")["reply"] for c in conns]
        rows = [r for r in agent.ok("sockets")["sockets"] if r["parent"] == listener["sock"]]
    finally:
        client.close()
    # every accepted socket, with the flow the client saw mirrored (its local address
    # taken from the listener's own, with no getsockname)
    assert sorted((r["sock"], r["local"], r["peer"]) for r in rows) == sorted(
        (e["sock"], c["peer"], c["local"]) for e, c in zip(echoes, conns, strict=True)
    )
    assert all(r["state"] == "connected" for r in rows)
    # no `accepted` frame came: the first events are the connections' `closed`
    first = agent.frame()
    assert first["event"] == "closed", first
    assert all(e["event"] != "accepted" for e in agent.events)


def test_udp_one_socket_serves_every_client(agent: RawAgent) -> None:
    server = agent.ok("listen", proto="udp", address="0.0.0.0")
    port = server["local"][1]
    client = RawAgent()
    try:
        conns = [client.ok("connect", proto="udp", address=LO, port=port) for _ in range(3)]
        echoes = [client.ok("request", sock=c["sock"], data="ping")["reply"] for c in conns]
    finally:
        client.close()
    assert {e["sock"] for e in echoes} == {server["sock"]}
    assert {e["pid"] for e in echoes} == {agent.pid}
    # `local` is where each datagram was addressed, not the wildcard the socket is bound to
    assert all(e["local"] == [LO, port] for e in echoes)
    assert [e["peer"] for e in echoes] == [c["local"] for c in conns]
    assert len({e["peer"][1] for e in echoes}) == 3
    grams = [wait_event(agent, "datagram", sock=server["sock"]) for _ in conns]
    assert [g["peer"] for g in grams] == [c["local"] for c in conns]
    assert all(g["size"] == 4 for g in grams)


def test_udp_echo_over_ipv6_and_dual_stack(agent: RawAgent) -> None:
    server = agent.ok("listen", proto="udp", address="::", v6only=False)
    port = server["local"][1]
    six = agent.ok("connect", proto="udp", address=LO6, port=port)
    four = agent.ok("connect", proto="udp", address=LO, port=port)
    echo6 = agent.ok("request", sock=six["sock"], data="six")["reply"]
    echo4 = agent.ok("request", sock=four["sock"], data="four")["reply"]
    assert echo6["local"] == [LO6, port]
    assert echo6["peer"] == six["local"]
    assert echo4["local"] == ["::ffff:127.0.0.1", port]  # v4-mapped, as the v6 socket sees it
    assert echo4["peer"] == ["::ffff:127.0.0.1", four["local"][1]]


def test_two_server_agents_are_two_processes(agent: RawAgent, other: RawAgent) -> None:
    ports = [a.ok("listen", proto="tcp", address=LO)["local"][1] for a in (agent, other)]
    conns = [agent.ok("connect", proto="tcp", address=LO, port=p)["sock"] for p in ports]
    pids = [agent.ok("request", sock=c, data="who")["reply"]["pid"] for c in conns]
    assert pids == [agent.pid, other.pid]
    assert pids[0] != pids[1]


def test_send_and_recv_on_a_quiet_tcp_server(agent: RawAgent) -> None:
    listener = agent.ok("listen", proto="tcp", address=LO6, echo=False)
    conn = agent.ok("connect", proto="tcp", address=LO6, port=listener["local"][1])
    server = wait_event(agent, "accepted", listener=listener["sock"])["sock"]
    assert agent.ok("send", sock=conn["sock"], data="héllo")["sent"] == len("héllo".encode())
    got = agent.ok("recv", sock=server, timeout=2)
    assert got["data"] == "héllo"
    assert got["peer"] == conn["local"]
    raw = bytes([0xFF, 0x00, 0x80])
    agent.ok("send", sock=server, data_b64=base64.b64encode(raw).decode())
    back = agent.ok("recv", sock=conn["sock"], timeout=2)
    assert base64.b64decode(back["data_b64"]) == raw
    timeout = agent.error("recv", sock=server, timeout=0.05)
    assert (timeout["kind"], timeout["errno"]) == ("timeout", "ETIMEDOUT")
    agent.ok("close", sock=conn["sock"])
    assert wait_event(agent, "closed", sock=server)["by"] == "peer"
    assert agent.ok("recv", sock=server, timeout=2) == {
        "data": "",
        "eof": True,
        "peer": conn["local"],
    }


def test_recv_with_max_returns_part_and_keeps_the_rest(agent: RawAgent) -> None:
    listener = agent.ok("listen", proto="tcp", address=LO, echo=False)
    conn = agent.ok("connect", proto="tcp", address=LO, port=listener["local"][1])
    server = wait_event(agent, "accepted", listener=listener["sock"])["sock"]
    agent.ok("send", sock=conn["sock"], data="abcdef")
    first = agent.ok("recv", sock=server, max=2)["data"]
    assert first == "ab"
    rest = ""
    while len(first + rest) < 6:
        rest += agent.ok("recv", sock=server)["data"]
    assert rest == "cdef"


def test_linger0_close_resets_the_peer(agent: RawAgent) -> None:
    listener = agent.ok("listen", proto="tcp", address=LO, echo=False)
    conn = agent.ok("connect", proto="tcp", address=LO, port=listener["local"][1])
    server = wait_event(agent, "accepted", listener=listener["sock"])["sock"]
    agent.ok("close", sock=conn["sock"], linger0=True)
    closed = wait_event(agent, "closed", sock=server)
    assert (closed["by"], closed["errno"]) == ("error", "ECONNRESET")
    assert agent.error("recv", sock=server)["errno"] == "ECONNRESET"
    assert agent.error("close", sock=conn["sock"])["kind"] == "no-such-socket"


def test_udp_send_to_and_recv_from(agent: RawAgent) -> None:
    quiet = agent.ok("listen", proto="udp", address=LO, echo=False)
    echo = agent.ok("listen", proto="udp", address=LO)
    sent = agent.ok("send", sock=quiet["sock"], data="x", to=echo["local"])
    assert sent == {"sent": 1}
    got = agent.ok("recv", sock=quiet["sock"], timeout=2)
    assert got["peer"] == echo["local"]
    assert got["local"] == quiet["local"]
    reply = json.loads(got["data"])
    assert reply == {
        "pid": agent.pid,
        "sock": echo["sock"],
        "local": echo["local"],
        "peer": quiet["local"],
        "data": "x",
    }
    refused = agent.ok("connect", proto="udp", address=LO, port=free_port(socket.SOCK_DGRAM))
    agent.ok("send", sock=refused["sock"], data="anyone?")
    error = agent.error("recv", sock=refused["sock"], timeout=2)  # ICMP port unreachable
    assert error["errno"] == "ECONNREFUSED"


def test_request_errors(agent: RawAgent) -> None:
    listener = agent.ok("listen", proto="tcp", address=LO, echo=False)
    assert agent.error("request", sock=listener["sock"], data="x")["kind"] == "bad-request"
    echoing = agent.ok("listen", proto="udp", address=LO)
    assert agent.error("recv", sock=echoing["sock"])["kind"] == "bad-request"
    assert agent.error("request", sock=99, data="x")["kind"] == "no-such-socket"
    conn = agent.ok("connect", proto="tcp", address=LO, port=listener["local"][1])
    assert agent.error("request", sock=conn["sock"], data="a\nb")["kind"] == "bad-request"
    server = wait_event(agent, "accepted", listener=listener["sock"])["sock"]
    agent.write(
        json.dumps({"id": "r", "op": "request", "sock": conn["sock"], "data": "q"}).encode()
    )
    agent.write(b"\n")
    assert agent.ok("recv", sock=server)["data"] == "q\n"
    agent.ok("send", sock=server, data="not an echo\n")
    bad = agent.reply("r")["error"]
    assert bad["kind"] == "bad-reply"
    assert "not an echo" in bad["message"]
    agent.write(
        json.dumps({"id": "s", "op": "request", "sock": conn["sock"], "data": "q"}).encode()
    )
    agent.write(b"\n")
    assert agent.ok("recv", sock=server)["data"] == "q\n"  # unread data would make it an RST
    agent.ok("close", sock=server)
    assert agent.reply("s")["error"]["kind"] == "eof"


def test_close_and_ids_are_never_reused(agent: RawAgent) -> None:
    first = agent.ok("listen", proto="udp", address=LO)["sock"]
    assert agent.ok("close", sock=first) == {}
    second = agent.ok("listen", proto="udp", address=LO)["sock"]
    assert second > first
    assert [row["sock"] for row in agent.ok("sockets")["sockets"]] == [second]
    assert agent.error("close", sock=first)["kind"] == "no-such-socket"


def test_v6only_decides_dual_stack_conflicts(agent: RawAgent) -> None:
    port = agent.ok("listen", proto="tcp", address="::", v6only=True)["local"][1]
    agent.ok("listen", proto="tcp", address="0.0.0.0", port=port)  # a separate IPv4 socket
    dual = agent.ok("listen", proto="tcp", address="::", v6only=False)["local"][1]
    error = agent.error("listen", proto="tcp", address="0.0.0.0", port=dual)
    assert error["errno"] == "EADDRINUSE"


def test_reuseport_shares_a_port_between_processes(agent: RawAgent, other: RawAgent) -> None:
    port = agent.ok("listen", proto="udp", address=LO, reuseport=True)["local"][1]
    other.ok("listen", proto="udp", address=LO, port=port, reuseport=True)
    third = RawAgent()
    try:
        assert third.error("listen", proto="udp", address=LO, port=port)["errno"] == "EADDRINUSE"
    finally:
        third.close()


def test_connect_with_a_chosen_source_port(agent: RawAgent) -> None:
    port = agent.ok("listen", proto="tcp", address=LO)["local"][1]
    sport = free_port()
    conn = agent.ok("connect", proto="tcp", address=LO, port=port, source=LO, sport=sport)
    assert conn["local"] == [LO, sport]
    assert conn["peer"] == [LO, port]
    assert agent.ok("request", sock=conn["sock"], data="x")["reply"]["peer"] == [LO, sport]
    again = agent.error("connect", proto="tcp", address=LO, port=port, sport=sport)
    assert again["errno"] == "EADDRINUSE"
    mixed = agent.error("connect", proto="tcp", address=LO6, port=port, source=LO)
    assert mixed["kind"] == "bad-request"


def test_many_connections_in_flight_at_once(agent: RawAgent) -> None:
    listener = agent.ok("listen", proto="tcp", address=LO, backlog=1024)
    port = listener["local"][1]
    count = 300
    frames = [
        {"id": f"c{i}", "op": "connect", "proto": "tcp", "address": LO, "port": port}
        for i in range(count)
    ]
    agent.write(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
    replies: dict[str, dict[str, Any]] = {}
    accepted: list[dict[str, Any]] = []
    while len(replies) < count or len(accepted) < count:
        frame = agent.frame()  # replies and events interleave, replies in any order
        if frame.get("event") == "accepted":
            accepted.append(frame)
        else:
            assert frame["ok"] is True, frame
            replies[frame["id"]] = frame["result"]
    assert set(replies) == {f"c{i}" for i in range(count)}
    client_side = {(*r["local"], *r["peer"]) for r in replies.values()}
    server_side = {(*e["peer"], *e["local"]) for e in accepted}
    assert len(client_side) == count
    assert client_side == server_side  # the same four-tuples, seen from both ends
    assert agent.ok("info")["sockets"] == 1 + 2 * count


# ---- sock_diag: the kernel's socket list, as harness.observe.diag reads it locally --------------

LISTEN, ESTABLISHED, CLOSE = 10, 1, 7


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_lists_a_listener_and_both_ends_of_a_connection_with_their_inodes(
    agent: RawAgent,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                rows = agent.ok("sock_diag", proto="tcp", family=4)["sockets"]
                by_inode = {row[5]: row for row in rows}
                assert by_inode[inode(server)][:5] == [LISTEN, "127.0.0.1", port, "0.0.0.0", 0]
                sport = client.getsockname()[1]
                assert by_inode[inode(client)][:5] == [
                    ESTABLISHED,
                    "127.0.0.1",
                    sport,
                    "127.0.0.1",
                    port,
                ]
                assert by_inode[inode(accepted)][:5] == [
                    ESTABLISHED,
                    "127.0.0.1",
                    port,
                    "127.0.0.1",
                    sport,
                ]
                assert by_inode[inode(client)][6] == os.getuid()
                only_listen = agent.ok("sock_diag", proto="tcp", family=4, states=1 << LISTEN)
                assert {r[0] for r in only_listen["sockets"]} == {LISTEN}
                assert inode(client) not in {r[5] for r in only_listen["sockets"]}


def test_the_kernel_filters_by_local_port(agent: RawAgent) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                rows = agent.ok("sock_diag", proto="tcp", family=4, port=port)["sockets"]
                assert sorted(row[5] for row in rows) == sorted([inode(server), inode(accepted)])
                sport = client.getsockname()[1]
                rows = agent.ok("sock_diag", proto="tcp", family=4, port=sport)["sockets"]
                assert [row[5] for row in rows] == [inode(client)]


def test_udp_and_ipv6(agent: RawAgent) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        udp.bind(("::1", 0))
        port = udp.getsockname()[1]
        rows = agent.ok("sock_diag", proto="udp", family=6, states=1 << CLOSE)["sockets"]
        assert [CLOSE, "::1", port, "::", 0] in [r[:5] for r in rows if r[5] == inode(udp)]


def test_refuses_a_family_that_is_not_4_or_6(agent: RawAgent) -> None:
    reply = agent.call("sock_diag", proto="tcp", family=5)
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "bad-request"
