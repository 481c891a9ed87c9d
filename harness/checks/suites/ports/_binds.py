"""The ports suite's bind checks: conflicts, SO_REUSEADDR after TIME_WAIT, SO_REUSEPORT,
privileged ports and port 0; each runs its binds and judges them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import (
    exchange,
    show,
)
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.core.agent import Agent, AgentInfo
    from harness.observe.diag import KernelSocket
from harness.checks.suites.ports._context import (
    Bind,
    Judgement,
    _Context,
    _first_bound,
    _Options,
    _rows,
    _sysctl_for_check,
    _tcp_sockets,
    _time_wait_kept,
    _Unavailable,
    _wait_for,
)

# ---- bind conflicts ---------------------------------------------------------------------


def _second_bind(proto: str) -> Callable[[_Context, _Options], Judgement]:
    def judge(ctx: _Context, options: _Options) -> Judgement:
        first, other = ctx.agent(ctx.server), ctx.agent(ctx.server)
        address = ctx.address(ctx.server)
        bound = _first_bound(ctx.bind(first, proto, address, 0, expected="bound"))
        binds = [
            bound,
            ctx.bind(first, proto, address, bound.port, expected="EADDRINUSE"),
            ctx.bind(other, proto, address, bound.port, expected="EADDRINUSE"),
        ]
        return _rows(binds, "binds")

    return judge


def _tcp_udp_same_port(ctx: _Context, options: _Options) -> Judgement:
    binds: list[Bind] = []
    served: dict[str, Any] = {}
    for first_proto, second_proto in (("tcp", "udp"), ("udp", "tcp")):
        a, b = ctx.agent(ctx.server), ctx.agent(ctx.server)
        first = _first_bound(ctx.bind(a, first_proto, "0.0.0.0", 0, expected="bound"))
        second = ctx.bind(b, second_proto, "0.0.0.0", first.port, expected="bound")
        binds += [first, second]
        if second.result != "bound":
            continue
        # Both answer, each its own protocol: the echo names the process.
        client = ctx.agent(ctx.client)
        address = ctx.target(ctx.client, ctx.server)
        flows = exchange(
            client,
            [
                {"proto": p, "address": address, "port": first.port, "tag": f"{p}-{first.port}"}
                for p in ("tcp", "udp")
            ],
        )
        owner = {first.proto: first.pid, second.proto: second.pid}
        for flow in flows:
            pid = flow.replies[0].pid if flow.replies else None
            served[f"{flow.proto} {show(flow.target)}"] = {
                "answered_by": pid,
                "owner": owner[flow.proto],
                "error": flow.error,
            }
    ok, observed, evidence = _rows(binds, "binds")
    wrong = [k for k, v in served.items() if v["answered_by"] != v["owner"]]
    if wrong:
        ok = False
        observed += f"; not answered by the socket's owner: {', '.join(wrong)}"
    else:
        observed += f"; each protocol answered by its own process ({len(served)} exchanges)"
    return ok, observed, {**evidence, "served": served}


def _pair(
    ctx: _Context,
    proto: str,
    first: tuple[str, bool | None],
    second: tuple[str, bool | None],
    expected: str,
    reuseaddr: bool = False,
) -> list[Bind]:
    """Bind `first` (address, v6only) to a fresh port, then `second` to the same port from
    another process."""
    a, b = ctx.agent(ctx.server), ctx.agent(ctx.server)
    one = _first_bound(
        ctx.bind(a, proto, first[0], 0, reuseaddr=reuseaddr, v6only=first[1], expected="bound")
    )
    two = ctx.bind(
        b, proto, second[0], one.port, reuseaddr=reuseaddr, v6only=second[1], expected=expected
    )
    return [one, two]


def _wildcard_vs_specific(reuseaddr: bool) -> Callable[[_Context, _Options], Judgement]:
    def judge(ctx: _Context, options: _Options) -> Judgement:
        specific = ctx.address(ctx.server)
        binds: list[Bind] = []
        for proto in ("tcp", "udp"):
            expected = "bound" if reuseaddr and proto == "udp" else "EADDRINUSE"
            for first, second in (("0.0.0.0", specific), (specific, "0.0.0.0")):
                binds += _pair(ctx, proto, (first, None), (second, None), expected, reuseaddr)
            if not reuseaddr:  # the control: two specific addresses never overlap
                binds += _pair(ctx, proto, (specific, None), ("127.0.0.1", None), "bound")
        return _rows(binds, "binds")

    return judge


def _v6_wildcard(v6only: bool) -> Callable[[_Context, _Options], Judgement]:
    def judge(ctx: _Context, options: _Options) -> Judgement:
        expected = "bound" if v6only else "EADDRINUSE"
        binds: list[Bind] = []
        for proto in ("tcp", "udp"):
            binds += _pair(ctx, proto, ("0.0.0.0", None), ("::", v6only), expected)
            binds += _pair(ctx, proto, ("::", v6only), ("0.0.0.0", None), expected)
        return _rows(binds, "binds")

    return judge


# ---- SO_REUSEADDR and TIME_WAIT ---------------------------------------------------------


def _time_wait_after_server_close(
    ctx: _Context, reuseaddr: bool
) -> tuple[Bind, list[KernelSocket], dict[str, Any]]:
    """A server (with or without SO_REUSEADDR) closes its connection first, then ends:
    the server's side of the connection waits in TIME_WAIT."""
    old = ctx.agent(ctx.server)
    listener = _first_bound(
        ctx.bind(old, "tcp", "0.0.0.0", 0, reuseaddr=reuseaddr, expected="bound")
    )
    assert listener.socket is not None
    client = ctx.agent(ctx.client)
    conn = client.connect("tcp", ctx.target(ctx.client, ctx.server), listener.port)
    echo = conn.request("before the restart")
    old.request("close", sock=echo.sock)  # the server closes first ...
    if conn.recv(timeout=5.0) != b"":
        raise HarnessError("the client did not see the server's FIN")
    conn.close()  # ... and the client answers with its own FIN
    old.close()  # the server process ends, its listener with it
    waiting = _wait_for(
        lambda: [
            s
            for s in _tcp_sockets(ctx, ctx.server)
            if s.state == "TIME_WAIT" and s.local[1] == listener.port
        ]
    )
    connection = {
        "server_pid": old.pid,
        "client_pid": client.pid,
        "client": show(conn.local),
        "server": show(conn.peer),
        "closed_first_by": "server",
    }
    return listener, waiting, connection


def _reuseaddr_time_wait(ctx: _Context, options: _Options) -> Judgement:
    with _time_wait_kept(ctx, ctx.server):
        return _judge_reuseaddr_time_wait(ctx)


def _judge_reuseaddr_time_wait(ctx: _Context) -> Judgement:
    listener, waiting, connection = _time_wait_after_server_close(ctx, reuseaddr=True)
    port = listener.port
    new = ctx.agent(ctx.server)
    binds = [
        listener,
        ctx.bind(new, "tcp", "0.0.0.0", port, expected="EADDRINUSE"),
        ctx.bind(new, "tcp", "0.0.0.0", port, reuseaddr=True, expected="bound"),
    ]
    ok, observed, evidence = _rows(binds, "binds")
    time_wait = [f"{s.state} {show(s.local)} {show(s.peer)}" for s in waiting]
    if not waiting:
        ok = False
        observed = f"no TIME_WAIT socket on port {port} of {ctx.server}; " + observed
    else:
        observed = (
            f"{len(waiting)} TIME_WAIT socket(s) on {ctx.server} port {port} after the old "
            f"server (pid {listener.pid}) closed first; restarted as pid {new.pid}: " + observed
        )
    # A Linux detail, reported and not judged: the socket that went into TIME_WAIT must
    # have had the option too, or even a new socket with it is refused.
    with ctx.scope():
        bare, bare_waiting, _ = _time_wait_after_server_close(ctx, reuseaddr=False)
        retry = ctx.agent(ctx.server)
        detail = ctx.bind(retry, "tcp", "0.0.0.0", bare.port, reuseaddr=True)
    return (
        ok,
        observed,
        {
            **evidence,
            "connection": connection,
            "time_wait": time_wait,
            "old_socket_without_option": {
                "note": (
                    "reported, not judged: Linux wants SO_REUSEADDR on the socket that went "
                    "into TIME_WAIT too, or even a new socket with it is refused"
                ),
                "time_wait": len(bare_waiting),
                "rebind_with_option": detail.row(),
            },
        },
    )


# ---- SO_REUSEPORT -----------------------------------------------------------------------


def _reuseport_pair(ctx: _Context) -> list[Bind]:
    a, b = ctx.agent(ctx.server), ctx.agent(ctx.server)
    one = _first_bound(ctx.bind(a, "tcp", "0.0.0.0", 0, reuseport=True, expected="bound"))
    two = _first_bound(ctx.bind(b, "tcp", "0.0.0.0", one.port, reuseport=True, expected="bound"))
    return [one, two]


def _reuseport_shares(ctx: _Context, options: _Options) -> Judgement:
    binds = _reuseport_pair(ctx)
    port = binds[0].port
    client = ctx.agent(ctx.client)
    address = ctx.target(ctx.client, ctx.server)
    flows = exchange(
        client,
        [
            {"proto": "tcp", "address": address, "port": port, "tag": f"c{i}"}
            for i in range(options.connections)
        ],
    )
    split: Counter[int] = Counter(f.replies[0].pid for f in flows if f.replies)
    failed = [f"{f.tag}: {f.error}" for f in flows if not f.replies]
    owners = {b.pid for b in binds}
    ok = not failed and set(split) == owners and sum(split.values()) == options.connections
    shown = ", ".join(f"pid {pid}: {split.get(pid, 0)}" for pid in sorted(owners))
    observed = (
        f"{options.connections} connections to {show((address, port))} shared by two "
        f"SO_REUSEPORT processes: {shown}"
    )
    strangers = set(split) - owners
    if strangers:
        observed += f"; answered by other processes {sorted(strangers)}"
    if failed:
        observed += f"; {len(failed)} failed: {failed[0]}"
    return (
        ok,
        observed,
        {
            "binds": [b.row() for b in binds],
            "connections": options.connections,
            "split": {str(pid): split.get(pid, 0) for pid in sorted(owners)},
            "sample": [
                {"client": show(f.local), "answered_by": f.replies[0].pid}
                for f in flows[:8]
                if f.replies
            ],
        },
    )


def _reuseport_needs_option(ctx: _Context, options: _Options) -> Judgement:
    pair = _reuseport_pair(ctx)
    port = pair[0].port
    third = ctx.agent(ctx.server)
    stranger = ctx.agent(ctx.server, user=ctx.user)
    binds = [
        *pair,
        ctx.bind(third, "tcp", "0.0.0.0", port, expected="EADDRINUSE"),
        ctx.bind(
            stranger,
            "tcp",
            "0.0.0.0",
            port,
            reuseport=True,
            expected="EADDRINUSE",
        ),
    ]
    return _rows(binds, "binds")


# ---- privileged ports -------------------------------------------------------------------


def _unprivileged(ctx: _Context, host: str) -> tuple[Agent, AgentInfo]:
    agent = ctx.agent(host, user=ctx.user)
    info = agent.info()
    if info.uid == 0:
        raise _Unavailable(f"user {ctx.user!r} is root; name an unprivileged user (user=)")
    return agent, info


def _privileged(ctx: _Context, options: _Options) -> Judgement:
    if options.privileged_host is not None:
        host = options.privileged_host
    else:
        candidates = [ctx.server, *(h for h in ctx.lab.hosts if h != ctx.server)]
        host = next(
            (h for h in candidates if (ctx.info(h).ip_unprivileged_port_start or 0) > 1),
            ctx.server,
        )
    start = ctx.info(host).ip_unprivileged_port_start
    if start is None:
        raise HarnessError(f"cannot read net.ipv4.ip_unprivileged_port_start on {host}")
    port = options.privileged_port
    if port is None:
        if start <= 1:
            raise _Unavailable(
                f"{host} has no privileged ports (ip_unprivileged_port_start = {start}); "
                "name a host that has (privileged_host=)"
            )
        port = start - 1
    user, info = _unprivileged(ctx, host)
    root = ctx.agent(host)
    binds = [ctx.bind(user, proto, "0.0.0.0", port, expected="EACCES") for proto in ("tcp", "udp")]
    binds += [ctx.bind(root, proto, "0.0.0.0", port, expected="bound") for proto in ("tcp", "udp")]
    binds.append(ctx.bind(user, "tcp", "0.0.0.0", 0, expected="bound"))
    return _judged_at_start(binds, host, start, info, f", port {port}")


def _lowered(ctx: _Context, options: _Options) -> Judgement:
    if options.lowered_host is not None:
        host = options.lowered_host
        start = ctx.info(host).ip_unprivileged_port_start
        if start is None or start >= 1024:
            raise _Unavailable(
                f"{host} has net.ipv4.ip_unprivileged_port_start = {start}, not below 1024"
            )
    else:
        starts = {h: ctx.info(h).ip_unprivileged_port_start for h in ctx.lab.hosts}
        lowered = [h for h, s in starts.items() if s is not None and s < 1024]
        if not lowered:
            # No host of the topology lowers it: lower it on a client for this check only.
            host = ctx.roles.clients[0]
            with _sysctl_for_check(ctx, host, "net.ipv4.ip_unprivileged_port_start", "80"):
                ok, observed, evidence = _lowered_on(ctx, host, 80)
            return ok, observed, {**evidence, "set_by_suite": "ip_unprivileged_port_start 80"}
        host = lowered[0]
        start = starts[host]
    assert start is not None
    return _lowered_on(ctx, host, start)


def _lowered_on(ctx: _Context, host: str, start: int) -> Judgement:
    port = start if start > 0 else 80
    user, info = _unprivileged(ctx, host)
    binds = [ctx.bind(user, proto, "0.0.0.0", port, expected="bound") for proto in ("tcp", "udp")]
    if start > 1:
        binds += [
            ctx.bind(user, proto, "0.0.0.0", start - 1, expected="EACCES")
            for proto in ("tcp", "udp")
        ]
    return _judged_at_start(binds, host, start, info)


# ---- port 0 -----------------------------------------------------------------------------


def _port_zero(ctx: _Context, options: _Options) -> Judgement:
    info = ctx.info(ctx.server)
    if info.ip_local_port_range is None:
        raise HarnessError(f"cannot read net.ipv4.ip_local_port_range on {ctx.server}")
    low, high = info.ip_local_port_range
    agent = ctx.agent(ctx.server)
    binds = [ctx.bind(agent, proto, "0.0.0.0", 0) for proto in ("tcp", "udp") for _i in range(3)]
    problems = [f"{b.line()}" for b in binds if b.result != "bound"]
    problems += [f"{b.line()}: outside {low}-{high}" for b in binds if not low <= b.port <= high]
    for proto in ("tcp", "udp"):
        ports = [b.port for b in binds if b.proto == proto and b.result == "bound"]
        if len(set(ports)) != len(ports):
            problems.append(f"{proto} port 0 gave one port twice: {ports}")
    assigned = {proto: [b.port for b in binds if b.proto == proto] for proto in ("tcp", "udp")}
    observed = (
        f"{ctx.server} ip_local_port_range {low}-{high}: port 0 gave TCP {assigned['tcp']}, "
        f"UDP {assigned['udp']}"
    )
    if problems:
        observed += "; " + "; ".join(problems)
    return (
        not problems,
        observed,
        {"binds": [b.row() for b in binds], "ip_local_port_range": [low, high]},
    )


def _judged_at_start(
    binds: list[Bind], host: str, start: int, info: AgentInfo, where: str = ""
) -> Judgement:
    """The binds' verdict, told with the host's ip_unprivileged_port_start and the uid."""
    ok, observed, evidence = _rows(binds, "binds")
    observed = f"{host} (ip_unprivileged_port_start = {start}){where}: " + observed
    extra = {"host": host, "ip_unprivileged_port_start": start, "uid": info.uid}
    return ok, observed, {**evidence, **extra}
