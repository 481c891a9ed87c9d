"""The ports suite's ephemeral checks: one client runs out of source ports toward one
destination, then reuses them elsewhere, then finds them in TIME_WAIT."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import (
    Recorder,
    show,
)
from harness.errors import AgentError

if TYPE_CHECKING:
    from harness.core.agent import Socket
    from harness.observe.diag import KernelSocket
from harness.checks.suites.ports._context import (
    EXPECTED,
    MAX_SMALL_RANGE,
    Judgement,
    _Context,
    _first_bound,
    _listing,
    _tcp_sockets,
    _Unavailable,
    _verdict,
    _wait_for,
)

# ---- ephemeral ports --------------------------------------------------------------------

EPHEMERAL = ("ephemeral-exhaustion", "ephemeral-other-destination", "ephemeral-time-wait")


@dataclass
class _Exhaustion:
    host: str
    server: str
    low: int
    high: int
    address: str
    port: int
    second_port: int
    second_address: str
    second_address_port: int
    conns: list[Socket]
    refused: str | None  # errno of connection R+1 ("connected" if it was not refused)
    client_pid: int


def _ephemeral(
    ctx: _Context, rec: Recorder, ephemeral_host: str | None, selected: set[str]
) -> None:
    """The three ephemeral checks share one client and its R connections: selecting either
    of the later two runs ephemeral-exhaustion too (it is their set-up)."""
    if not selected & set(EPHEMERAL):
        for name in EPHEMERAL:
            with rec.check(name, expected=EXPECTED[name]) as check:
                check.error(f"not run: left out by only={sorted(selected)}")
        return
    with ctx.scope():
        state: _Exhaustion | None = None
        missing = "the exhausted host of ephemeral-exhaustion could not be set up (its record)"
        with rec.check("ephemeral-exhaustion", expected=EXPECTED["ephemeral-exhaustion"]) as c:
            try:
                state = _exhaust(ctx, ephemeral_host)
            except _Unavailable as exc:
                missing = str(exc)
                c.error(missing)
            else:
                ok, observed, evidence = _judge_exhaustion(state)
                c.observe(ok=ok, observed=observed, evidence=evidence)
        for name, judge in (
            ("ephemeral-other-destination", _other_destination),
            ("ephemeral-time-wait", _ephemeral_time_wait),
        ):
            with rec.check(name, expected=EXPECTED[name]) as c:
                if name not in selected:
                    c.error(f"not run: left out by only={sorted(selected)}")
                elif state is None:
                    c.error(missing)
                else:
                    ok, observed, evidence = judge(ctx, state)
                    c.observe(ok=ok, observed=observed, evidence=evidence)


def _exhaust(ctx: _Context, ephemeral_host: str | None) -> _Exhaustion:
    ranges = {h: ctx.info(h).ip_local_port_range for h in ctx.lab.hosts}

    def size(port_range: tuple[int, int] | None) -> int:
        return port_range[1] - port_range[0] + 1 if port_range else 1 << 16

    if ephemeral_host is not None:
        host = ephemeral_host
        if size(ranges[host]) > MAX_SMALL_RANGE:
            raise _Unavailable(
                f"{host}'s ip_local_port_range {ranges[host]} spans {size(ranges[host])} "
                f"ports; exhaustion needs at most {MAX_SMALL_RANGE}"
            )
    else:
        small = [h for h, r in ranges.items() if size(r) <= MAX_SMALL_RANGE]
        if not small:
            shown = _listing({h: f"{r[0]}-{r[1]}" if r else "?" for h, r in ranges.items()})
            raise _Unavailable(
                f"needs a host whose net.ipv4.ip_local_port_range spans at most "
                f"{MAX_SMALL_RANGE} ports, and this lab has none ({shown}); add one to the "
                'topology, e.g. sysctls: {net.ipv4.ip_local_port_range: "40000 40009"}'
            )
        host = small[0]
    port_range = ranges[host]
    assert port_range is not None
    low, high = port_range
    others = [h for h in ctx.lab.hosts if h != host]
    if not others:
        raise _Unavailable("ephemeral exhaustion needs a server host besides the client")
    server = ctx.server if ctx.server != host else others[0]
    address = ctx.target(host, server)
    listener = ctx.agent(server)
    first = _first_bound(ctx.bind(listener, "tcp", "0.0.0.0", 0, expected="bound"))
    second = _first_bound(ctx.bind(listener, "tcp", "0.0.0.0", 0, expected="bound"))
    second_address, far = _second_address(ctx, host, server, address)
    far_agent = ctx.agent(far)
    far_listener = _first_bound(
        ctx.bind(far_agent, "tcp", "::" if ":" in second_address else "0.0.0.0", 0)
    )
    client = ctx.agent(host)
    conns: list[Socket] = []
    refused: str | None = None
    for _attempt in range(high - low + 2):
        try:
            conns.append(client.connect("tcp", address, first.port))
        except AgentError as exc:
            if exc.kind != "os":
                raise
            refused = exc.errno
            break
    else:
        refused = "connected"
    return _Exhaustion(
        host=host,
        server=server,
        low=low,
        high=high,
        address=address,
        port=first.port,
        second_port=second.port,
        second_address=second_address,
        second_address_port=far_listener.port,
        conns=conns,
        refused=refused,
        client_pid=client.pid,
    )


def _second_address(ctx: _Context, host: str, server: str, used: str) -> tuple[str, str]:
    """Another address a client on `host` can reach: the server's other IPv4 address, or
    another host's, or the server's IPv6 address; with the host that owns it."""
    client = ctx.lab.hosts[host]
    mine = {i.network for i in client.spec.interfaces}
    for interface in ctx.lab.hosts[server].spec.interfaces:
        address = interface.address
        reachable = interface.network in mine or bool(client.spec.routes)
        if address is not None and str(address.ip) != used and reachable:
            return str(address.ip), server
    for name, other in ctx.lab.hosts.items():
        if name in (host, server):
            continue
        for interface in other.spec.interfaces:
            if interface.network in mine and interface.address is not None:
                return str(interface.address.ip), name
    return ctx.target(host, server, 6), server


def _judge_exhaustion(state: _Exhaustion) -> Judgement:
    size = state.high - state.low + 1
    sports = [c.local[1] for c in state.conns]
    problems = []
    if len(state.conns) != size:
        problems.append(f"{len(state.conns)} connections succeeded, not R = {size}")
    outside = [p for p in sports if not state.low <= p <= state.high]
    if outside:
        problems.append(f"source ports outside the range: {outside}")
    if len(set(sports)) != len(sports):
        problems.append(f"a source port used twice: {sorted(sports)}")
    if state.refused != "EADDRNOTAVAIL":
        problems.append(f"connection R+1 gave {state.refused}, not EADDRNOTAVAIL")
    target = show((state.address, state.port))
    observed = (
        f"{state.host} (ip_local_port_range {state.low}-{state.high}, R = {size}) opened "
        f"{len(state.conns)} connections to {target} from ports {sorted(sports)}; "
        f"connection {len(state.conns) + 1}: {state.refused}"
    )
    return _verdict(
        problems,
        observed,
        {
            "client_host": state.host,
            "client_pid": state.client_pid,
            "ip_local_port_range": [state.low, state.high],
            "server": target,
            "connections": [f"{show(c.local)} -> {show(c.peer)}" for c in state.conns],
            "next_connection": state.refused,
        },
    )


def _other_destination(ctx: _Context, state: _Exhaustion) -> Judgement:
    client = state.conns[0].agent if state.conns else ctx.agent(state.host)
    busy = {c.local[1] for c in state.conns}
    rows: list[dict[str, Any]] = []
    problems = []
    for address, port, what in (
        (state.address, state.second_port, "second port"),
        (state.second_address, state.second_address_port, "second address"),
    ):
        try:
            conn = client.connect("tcp", address, port)
        except AgentError as exc:
            if exc.kind != "os":
                raise
            rows.append({"to": show((address, port)), "what": what, "result": exc.errno})
            problems.append(f"{what} {show((address, port))}: {exc.errno}")
            continue
        sport = conn.local[1]
        rows.append(
            {
                "to": show((address, port)),
                "what": what,
                "result": "connected",
                "from": show(conn.local),
                "reuses_busy_port": sport in busy,
            }
        )
        if not state.low <= sport <= state.high:
            problems.append(f"{what}: source port {sport} outside the range")
    observed = f"with all {len(busy)} ports busy toward {show((state.address, state.port))}: " + (
        "; ".join(
            f"{r['what']} {r['to']}: {r['result']}" + (f" from {r['from']}" if "from" in r else "")
            for r in rows
        )
    )
    return _verdict(problems, observed, {"client_pid": state.client_pid, "connections": rows})


def _ephemeral_time_wait(ctx: _Context, state: _Exhaustion) -> Judgement:
    ports = sorted(c.local[1] for c in state.conns)
    for conn in state.conns:
        conn.close()  # the client closes first: TIME_WAIT is on its side
    target = (state.address, state.port)
    wanted = set(ports)

    def waiting() -> list[KernelSocket]:
        rows = [
            s
            for s in _tcp_sockets(ctx, state.host)
            if s.state == "TIME_WAIT" and s.peer == target and s.local[1] in wanted
        ]
        return rows if {s.local[1] for s in rows} == wanted else []

    rows = _wait_for(waiting)
    if not rows:  # report what there is
        rows = [
            s for s in _tcp_sockets(ctx, state.host) if s.peer == target and s.local[1] in wanted
        ]
    states = Counter(s.state for s in rows)
    in_time_wait = sorted(s.local[1] for s in rows if s.state == "TIME_WAIT")
    problems = []
    if not ports:
        problems.append("no connections to close")
    if in_time_wait != ports:
        problems.append(
            f"TIME_WAIT on ports {in_time_wait}, expected {ports} (states: {dict(states)})"
        )
    client = ctx.agent(state.host)
    settings = client.request("sysctl", names=["net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_rfc1337"])[
        "values"
    ]
    tw_reuse = settings.get("net.ipv4.tcp_tw_reuse")
    try:
        again = show(client.connect("tcp", *target).local)
        result = "connected"
    except AgentError as exc:
        if exc.kind != "os":
            raise
        again, result = "-", str(exc.errno)
    if tw_reuse != "1" and result != "EADDRNOTAVAIL":
        problems.append(f"a new connection to {show(target)} gave {result}, not EADDRNOTAVAIL")
    observed = (
        f"after closing, {len(in_time_wait)} of {len(ports)} ports in TIME_WAIT on "
        f"{state.host} toward {show(target)}; a new connection there (tcp_tw_reuse = "
        f"{tw_reuse}): {result}"
    )
    return _verdict(
        problems,
        observed,
        {
            "client_host": state.host,
            "kernel_sockets": [f"{s.state} {show(s.local)} {show(s.peer)}" for s in rows],
            "tcp_tw_reuse": tw_reuse,
            "tcp_rfc1337": settings.get("net.ipv4.tcp_rfc1337"),
            "new_connection": {"result": result, "from": again},
        },
    )
