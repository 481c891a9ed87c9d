"""Who owns a socket: the agent's /proc reading on this process's own sockets, and the
controller's reading of its replies (harness.observe.sockets, harness.checks.owners)."""

from __future__ import annotations

import os
import socket
from typing import Any

from harness.checks import owners
from harness.observe import sockets
from hostagent import owners as agent_owners


def test_the_agent_finds_this_process_as_the_holder_of_its_socket_and_its_forks() -> None:
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        inode = os.fstat(mine.fileno()).st_ino
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # holds the same socket, as a forked worker does
            os.close(write)
            os.read(read, 1)
            os._exit(0)
        try:
            found, complete = agent_owners.holders({inode, 0})
            assert complete or os.geteuid() != 0
            assert sorted(found[inode]) == sorted(
                [[os.getpid(), mine.fileno()], [child, mine.fileno()]]
            )
            described = agent_owners.describe({os.getpid(), child})
        finally:
            os.close(write)
            os.close(read)
            os.waitpid(child, 0)
    me, forked = described[str(os.getpid())], described[str(child)]
    assert forked["ppid"] == os.getpid()
    assert forked["ancestors"][:2] == [os.getpid(), os.getppid()]
    assert me["uid"] == os.geteuid()
    assert me["cmdline"][0].endswith(("python", "python3")) or "python" in me["comm"]
    assert agent_owners.holders({0}) == ({}, True)  # TIME_WAIT: no inode, nothing to find


def reply() -> dict[str, Any]:
    process = {"ppid": 1, "comm": "nginx", "uid": 33, "user": "www-data"}
    return {
        "complete": True,
        "sockets": [
            ["tcp", 4, 1, "10.0.1.12", 80, "10.0.1.11", 40000, 9, 0, [[102, 7]]],
            ["udp", 6, 7, "::", 53, "::", 0, 8, 0, [[200, 3]]],
            ["tcp", 4, 10, "0.0.0.0", 80, "0.0.0.0", 0, 7, 0, [[101, 6], [102, 6]]],
            ["tcp", 4, 6, "10.0.1.12", 80, "10.0.1.11", 39999, 0, 0, []],
        ],
        "processes": {
            "101": {**process, "cmdline": ["nginx", "-g", "daemon off;"], "ancestors": [1]},
            "102": {**process, "ppid": 101, "cmdline": [], "ancestors": [101, 1]},
            "200": {
                "ppid": 1,
                "comm": "dnsmasq",
                "uid": 0,
                "user": None,
                "cmdline": ["dnsmasq", "-k"],
                "ancestors": [1],
            },
        },
    }


def test_a_reply_becomes_a_table_listeners_first_with_every_holder() -> None:
    table = sockets.parse("web", reply())
    assert [(s.netid, s.state, s.local[1]) for s in table.sockets] == [
        ("tcp", "LISTEN", 80),
        ("udp6", "UNCONN", 53),
        ("tcp", "TIME_WAIT", 80),  # then by peer: port 39999 before 40000
        ("tcp", "ESTABLISHED", 80),
    ]
    listener = table.sockets[0]
    assert [o.pid for o in listener.owners] == [101, 102]
    assert listener.owned_by(101)  # the master: it holds it, and so does its worker
    assert not table.sockets[3].owned_by(200)
    assert table.sockets[3].owned_by(101)  # accepted by worker 102, a child of 101
    assert table.listeners("tcp", 80) == [listener]
    assert table.listeners("udp", 80) == []
    text = sockets.text(table).splitlines()
    assert text[0].split() == list(sockets.COLUMNS)
    assert text[1].split()[:6] == ["tcp", "0.0.0.0:80", "0.0.0.0:*", "LISTEN", "101", "www-data"]
    assert text[1].endswith("nginx -g daemon off;")
    assert text[2].split() == ["102", "www-data", "[nginx]"]  # a shared socket's next holder
    assert text[3].split()[:6] == ["udp6", "[::]:53", "[::]:*", "UNCONN", "200", "0"]
    waiting = ["tcp", "10.0.1.12:80", "10.0.1.11:39999", "TIME_WAIT", "-", "-", "-"]
    assert text[4].split() == waiting
    incomplete = sockets.parse("web", {**reply(), "complete": False})
    assert sockets.text(incomplete).endswith("owners may be missing)")
    assert table.to_json()["sockets"][0]["owners"][1]["ancestors"] == [101, 1]


def test_judging_owners_names_who_holds_the_port_instead() -> None:
    table = sockets.parse("web", reply())
    listeners = table.listeners("tcp", 80)
    assert owners.judge("nginx", 101, listeners, "listens").passed
    wrong = owners.judge("api", 300, listeners, "listens on 80/tcp")
    assert wrong.problem == (
        "0.0.0.0:80 is held by nginx (pid 101, www-data: nginx -g daemon off;), "
        "nginx (pid 102, www-data: [nginx]), not by api (pid 300)"
    )
    nothing = owners.judge("api", 300, [], "listens on 81/tcp in web")
    assert nothing.problem == "nothing listens on 81/tcp in web; expected api (pid 300)"
    assert owners.judge("api", None, [], "").problem == "process api is unknown"


def test_a_datagram_reaches_the_exact_address_then_the_wildcard_then_dual_stack() -> None:
    def table(*bound: str) -> sockets.SocketTable:
        rows: list[list[Any]] = [
            ["udp", 6 if ":" in a else 4, 7, a, 53, "::" if ":" in a else "0.0.0.0", 0, i, 0, []]
            for i, a in enumerate(bound, 1)
        ]
        return sockets.parse("ns", {"sockets": rows, "processes": {}})

    def receivers(found: sockets.SocketTable, address: str) -> list[str]:
        return [s.local[0] for s in owners._receivers(found, address, 53)]

    assert receivers(table("10.0.1.12", "0.0.0.0", "::"), "10.0.1.12") == ["10.0.1.12"]
    assert receivers(table("0.0.0.0", "::"), "10.0.1.12") == ["0.0.0.0"]
    assert receivers(table("::"), "10.0.1.12") == ["::"]
    assert receivers(table("0.0.0.0"), "fd00:1::12") == []
    assert receivers(table("::ffff:10.0.1.12"), "10.0.1.12") == ["::ffff:10.0.1.12"]
