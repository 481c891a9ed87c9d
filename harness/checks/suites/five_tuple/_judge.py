"""The five_tuple suite, judging: each check's verdict from the `Evidence` alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.checks.suites._base import (
    Check,
    Observation,
    Recorder,
    show,
)
from harness.checks.suites.five_tuple._evidence import (
    CHECKS,
    EXPECTED,
    NAME,
    SAMPLE,
    Conn,
    Echo,
    Evidence,
    FiveTuple,
    KernelView,
    Served,
    TcpEvidence,
    _conn_json,
    _echo_json,
    _kernel_json,
    _show,
    _show_flow,
)
from harness.errors import HarnessError
from harness.observe import diag

# ---- judging -----------------------------------------------------------------------------


def evaluate(evidence: Evidence) -> list[Check]:
    """One record per check, judged from `evidence` alone."""
    rec = Recorder(NAME, CHECKS)
    judges: dict[str, Callable[[Evidence, Observation], None]] = {
        "tcp-concurrent-connections": _judge_concurrent,
        "tcp-client-view-is-kernel-view": _judge_client_kernel,
        "tcp-server-view-is-kernel-view": _judge_server_kernel,
        "tcp-client-view-is-server-view": _judge_client_server,
        "tcp-tuples-unique": _judge_unique,
        "source-ports-in-range": _judge_port_range,
        "kernel-refuses-duplicate-tuple": _judge_duplicate,
        "udp-flows-agree": _judge_udp,
        "translation": _judge_translation,
    }
    needs = {
        "source-ports-in-range": ("tcp", "udp"),
        "kernel-refuses-duplicate-tuple": ("duplicate",),
        "udp-flows-agree": ("udp",),
        "translation": ("tcp", "udp"),
    }
    for name in CHECKS:
        with rec.check(name, expected=EXPECTED[name]) as check:
            phases = needs.get(name, ("tcp",))
            missing = [p for p in phases if p in evidence.errors]
            if missing:
                check.error("; ".join(f"{p}: {evidence.errors[p]}" for p in missing))
                continue
            if all(p in evidence.not_measured for p in phases):
                check.skip("; ".join(evidence.not_measured[p] for p in phases))
                continue
            judges[name](evidence, check)
    return rec.results()


def _tcp_of(evidence: Evidence) -> TcpEvidence:
    if evidence.tcp is None:
        raise HarnessError("no TCP evidence was gathered")
    return evidence.tcp


def _judge_concurrent(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    ok = len(tcp.conns)
    per_host = Counter(c.host for c in tcp.conns)
    per_pid = Counter(c.pid for c in tcp.conns)
    accepted_per_pid = Counter(s.pid for s in tcp.accepted)
    where = show((evidence.listen_address, evidence.port))
    processes = sum(len(p) for p in evidence.client_pids.values())
    by = (
        f"the server's process ({evidence.service_owner}), as sock_diag shows them held"
        if evidence.service
        else f"{len(evidence.server_pids)} server processes"
    )
    observed = (
        f"{ok} of {tcp.requested} established at once from {len(evidence.client_hosts)} hosts "
        f"({processes} processes) to {where} in {tcp.seconds:.2f} s "
        f"({ok / tcp.seconds if tcp.seconds else 0:.0f}/s); {len(tcp.accepted)} accepted by "
        f"{by}"
    )
    if tcp.failures:
        observed += "; failed: " + ", ".join(f"{n} x{k}" for n, k in sorted(tcp.failures.items()))
    check.observe(
        ok=ok == tcp.requested
        and len(tcp.accepted) == ok
        and all(per_host[h] for h in evidence.client_hosts)
        and len(per_pid) == processes,
        observed=observed,
        evidence={
            "requested": tcp.requested,
            "established": ok,
            "accepted": len(tcp.accepted),
            "seconds": round(tcp.seconds, 4),
            "per_second": round(ok / tcp.seconds) if tcp.seconds else None,
            "server": {
                "address": where,
                "pids": list(evidence.server_pids),
                **({"service": evidence.service} if evidence.service else {}),
            },
            "server_accepted_per_pid": {str(p): n for p, n in sorted(accepted_per_pid.items())},
            "clients": {
                h: {
                    "target": evidence.targets[h],
                    "pids": list(evidence.client_pids[h]),
                    "connections": per_host[h],
                    "per_pid": {str(p): per_pid[p] for p in evidence.client_pids[h]},
                }
                for h in evidence.client_hosts
            },
            "failures": dict(tcp.failures),
            "failure_samples": list(tcp.failure_samples),
            "sample": [_conn_json(c) for c in tcp.conns[:SAMPLE]],
            "notes": list(evidence.notes),
        },
    )


def _compare_kernel(
    reported: Mapping[FiveTuple, int], view: KernelView
) -> tuple[list[FiveTuple], list[FiveTuple], list[str], list[str], Counter[FiveTuple]]:
    """missing (reported, not listed), extra (listed, not reported), not ESTABLISHED,
    held by another process, and the kernel's own duplicates."""
    listed = Counter(s.five_tuple for s in view.sockets)
    missing = [t for t in reported if t not in listed]
    extra = [t for t in listed if t not in reported]
    states = [f"{_show(s.five_tuple)} {s.state}" for s in view.sockets if s.state != "ESTABLISHED"]
    wrong_owner = []
    if view.owners is not None:
        for s in view.sockets:
            holder = view.owner(s)
            claimed = reported.get(s.five_tuple)
            if claimed is not None and holder != claimed:
                wrong_owner.append(
                    f"{_show(s.five_tuple)}: reported by pid {claimed}, inode {s.inode} "
                    f"held by {holder if holder is not None else 'no agent'}"
                )
    duplicates = Counter({t: n for t, n in listed.items() if n > 1})
    return missing, extra, states, wrong_owner, duplicates


def _judge_client_kernel(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    per_host: dict[str, Any] = {}
    problems = 0
    matched = 0
    owner_known = True
    for host in evidence.client_hosts:
        reported = {c.five_tuple: c.pid for c in tcp.conns if c.host == host}
        view = tcp.clients_kernel[host]
        missing, extra, states, wrong, dups = _compare_kernel(reported, view)
        owner_known &= view.owners is not None
        problems += len(missing) + len(extra) + len(states) + len(wrong) + len(dups)
        matched += len(reported) - len(missing)
        per_host[host] = {
            "reported": len(reported),
            "kernel_listed": len(view.sockets),
            "missing_from_kernel": [_show(t) for t in missing[:SAMPLE]],
            "not_reported_by_any_process": [_show(t) for t in extra[:SAMPLE]],
            "not_established": states[:SAMPLE],
            "held_by_another_process": wrong[:SAMPLE],
            "sample": [_kernel_json(s, view) for s in view.sockets[:SAMPLE]],
        }
    total = len(tcp.conns)
    ownership = (
        "each held by the process that reported it"
        if owner_known
        else "(which process holds each is not visible from here)"
    )
    check.observe(
        ok=problems == 0 and matched == total,
        observed=(
            f"{matched} of {total} client tuples ESTABLISHED in the kernel of "
            f"{len(evidence.client_hosts)} client hosts, {ownership}; {problems} discrepancies"
        ),
        evidence={"hosts": per_host, "ownership_checked": owner_known},
    )


def _judge_server_kernel(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    reported = {s.mirrored: s.pid for s in tcp.accepted}
    view = tcp.server_kernel
    # The kernel lists a server socket from the server's side: mirror it too.
    mirrored = KernelView(
        view.host,
        tuple(
            diag.KernelSocket(s.proto, s.family, s.state, s.peer, s.local, s.inode, s.uid)
            for s in view.sockets
        ),
        view.owners,
    )
    missing, extra, states, wrong, dups = _compare_kernel(reported, mirrored)
    problems = len(missing) + len(extra) + len(states) + len(wrong) + len(dups)
    ownership = (
        "each held by the process that accepted it"
        if view.owners is not None
        else "(which process holds each is not visible from here)"
    )
    # A server of the user's reports nothing: its account is the host's socket table
    # (the agent's sock_diag and /proc), set against a second, separate sock_diag read.
    account = (
        f"{len(tcp.accepted)} sockets the socket table shows held by {evidence.service}'s "
        "processes (the server reports nothing itself)"
        if evidence.service
        else f"{len(tcp.accepted)} accepted connections"
    )
    check.observe(
        ok=problems == 0 and len(reported) == len(tcp.accepted),
        observed=(
            f"{len(reported) - len(missing)} of {account} ESTABLISHED in the kernel of "
            f"{evidence.server_host}, {ownership}; "
            f"{len(extra)} there that no server process holds; {problems} discrepancies"
        ),
        evidence={
            "accepted": len(tcp.accepted),
            "kernel_listed": len(view.sockets),
            "missing_from_kernel": [_show(t) for t in missing[:SAMPLE]],
            "not_accepted_by_any_process": [_show(t) for t in extra[:SAMPLE]],
            "not_established": states[:SAMPLE],
            "held_by_another_process": wrong[:SAMPLE],
            "duplicates": [_show(t) for t in list(dups)[:SAMPLE]],
            "sample": [_kernel_json(s, view) for s in view.sockets[:SAMPLE]],
            "ownership_checked": view.owners is not None,
        },
    )


@dataclass(frozen=True)
class _Mapping:
    """How the client tuples of one protocol map onto the server's."""

    identical: int
    translated: int
    unexplained: int  # server-side tuples without a client (or client tuples lost)
    per_host: Mapping[str, tuple[int, int]]  # host → (identical, translated)
    destination_rewritten: int  # echoes whose server-side destination is not the client's
    samples: tuple[str, ...]  # "client tuple -> server tuple" for translated echoes
    unaccepted: int = 0  # client tuples a server of the user's holds no socket for


def _mapping(evidence: Evidence, tcp: TcpEvidence) -> _Mapping:
    """The TCP mapping. Without an echo (a server of the user's) and without a NAT, a
    client tuple the server holds no socket for was not accepted: not translated."""
    unpaired_is_unaccepted = evidence.service is not None and not evidence.expect_translation
    return _map(tcp.conns, tcp.accepted, tcp.echoes, unpaired_is_unaccepted)


def _map(
    conns: Sequence[Conn],
    served: Sequence[Served],
    echoes: Sequence[Echo],
    unpaired_is_unaccepted: bool = False,
) -> _Mapping:
    server_side = Counter(s.mirrored for s in served)
    # An echo pairs a flow with the server's account of that very flow: where there is
    # one, it decides. The server holding the client's tuple does not: behind a NAT a
    # router's own flow can leave with the very address and port the NAT already gave a
    # flow it translated, and is then itself remapped.
    moved_by_echo = {
        (e.conn.host, e.conn.pid, e.conn.sock): (e.served.peer, e.served.local)
        != (e.conn.local, e.conn.peer)
        for e in echoes
    }
    per_host: dict[str, list[int]] = {}
    identical = unaccepted = 0
    for conn in conns:
        counts = per_host.setdefault(conn.host, [0, 0])
        moved = moved_by_echo.get((conn.host, conn.pid, conn.sock))
        if moved is None:
            moved = not server_side.get(conn.five_tuple)
            if moved and unpaired_is_unaccepted:
                unaccepted += 1
                continue
        if moved:
            counts[1] += 1
        else:
            identical += 1
            counts[0] += 1
    translated = len(conns) - identical - unaccepted
    # One server-side tuple per client tuple: what is left on each side pairs up exactly.
    unexplained = abs((sum(server_side.values()) - identical) - translated) + unaccepted
    unexplained += sum(n - 1 for n in server_side.values() if n > 1)
    rewritten = sum(1 for e in echoes if e.served.local != e.conn.peer)
    translated_echoes = [
        e for e in echoes if (e.served.peer, e.served.local) != (e.conn.local, e.conn.peer)
    ]
    # Port remaps first: they show what a NAT does when two flows would collide.
    translated_echoes.sort(key=lambda e: e.served.peer[1] == e.conn.local[1])
    samples = tuple(_translated(e) for e in translated_echoes)
    return _Mapping(
        identical,
        translated,
        unexplained,
        {h: (c[0], c[1]) for h, c in per_host.items()},
        rewritten,
        samples,
        unaccepted,
    )


def _translated(e: Echo) -> str:
    """One translated flow, as "c1 10.0.10.11:40001 -> 198.18.0.1:40001" (the source
    as the client had it, then as the server saw it); both whole flows if the
    destination changed too."""
    if e.served.local == e.conn.peer:
        return f"{e.conn.host} {show(e.conn.local)} -> {show(e.served.peer)}"
    return (
        f"{e.conn.host} {_show_flow(e.conn.local, e.conn.peer)} seen by the server as "
        f"{_show_flow(e.served.peer, e.served.local)}"
    )


def _echo_disagreements(echoes: Sequence[Echo], translated_ok: bool) -> list[str]:
    """Echoes whose server-side account contradicts the client's (where a NAT is expected,
    a different account is the NAT's mapping, shown by the translation check)."""
    if translated_ok:
        return []
    bad = []
    for e in echoes:
        if e.served.peer == e.conn.local and e.served.local == e.conn.peer:
            continue
        bad.append(
            f"{e.conn.host} pid {e.conn.pid} {_show_flow(e.conn.local, e.conn.peer)} — "
            f"server pid {e.served.pid} sock {e.served.sock} saw "
            f"{_show_flow(e.served.peer, e.served.local)}"
        )
    return bad


def _judge_client_server(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    mapping = _mapping(evidence, tcp)
    nat = evidence.expect_translation
    echo_bad = _echo_disagreements(tcp.echoes, nat)
    accepted_socks = {(s.pid, s.sock) for s in tcp.accepted}
    not_accepted = [e for e in tcp.echoes if (e.served.pid, e.served.sock) not in accepted_socks]
    ok = (
        mapping.unexplained == 0
        and not echo_bad
        and not not_accepted
        and (nat or mapping.translated == 0)
        and len(tcp.accepted) == len(tcp.conns)
    )
    if mapping.unaccepted:
        observed = (
            f"{mapping.identical} of {len(tcp.conns)} connections the same five-tuple at both "
            f"ends; {mapping.unaccepted} have no socket of the server's (not accepted)"
        )
    elif mapping.translated == 0:
        observed = f"all {len(tcp.conns)} connections: the same five-tuple at both ends"
    elif nat:
        observed = (
            f"{mapping.identical} connections the same at both ends, {mapping.translated} "
            f"translated by the NAT (see translation), {mapping.unexplained} unpaired"
        )
    else:
        observed = (
            f"{mapping.translated} of {len(tcp.conns)} connections reach the server as another "
            f"five-tuple, but no NAT is expected ({evidence.expectation_source})"
        )
    if evidence.service:
        observed += (
            " (compared with the server's accepted sockets in sock_diag: a server of the "
            "user's echoes nothing)"
        )
    else:
        observed += (
            f"; {len(tcp.echoes) - len(echo_bad)} of {len(tcp.echoes)} sampled echoes "
            "confirm it connection by connection"
        )
    check.observe(
        ok=ok,
        observed=observed,
        evidence={
            "connections": len(tcp.conns),
            "accepted": len(tcp.accepted),
            "identical": mapping.identical,
            "translated": mapping.translated,
            "unexplained": mapping.unexplained,
            "translation_expected": nat,
            "expectation_from": evidence.expectation_source,
            "echoes": [_echo_json(e) for e in tcp.echoes[:SAMPLE]],
            "echo_disagreements": echo_bad[:SAMPLE],
            "echoed_by_socket_not_accepted": [_echo_json(e) for e in not_accepted[:SAMPLE]],
        },
    )


def _judge_unique(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    client = Counter(c.five_tuple for c in tcp.conns)
    server = Counter(s.mirrored for s in tcp.accepted)
    kernel: Counter[tuple[str, FiveTuple]] = Counter()
    for view in [*tcp.clients_kernel.values(), tcp.server_kernel]:
        kernel.update((view.host, s.five_tuple) for s in view.sockets)
    dup_client = [t for t, n in client.items() if n > 1]
    dup_server = [t for t, n in server.items() if n > 1]
    dup_kernel = [f"{h}: {_show(t)}" for (h, t), n in kernel.items() if n > 1]
    ports = Counter((c.host, c.local, c.peer) for c in tcp.conns)
    check.observe(
        ok=not dup_client and not dup_server and not dup_kernel and len(client) == len(tcp.conns),
        observed=(
            f"{len(client)} distinct of {len(tcp.conns)} client tuples, {len(server)} of "
            f"{len(tcp.accepted)} accepted, {len(kernel)} of {sum(kernel.values())} kernel "
            f"sockets; repeats: {len(dup_client)} client, {len(dup_server)} server, "
            f"{len(dup_kernel)} kernel"
        ),
        evidence={
            "client_tuples": len(tcp.conns),
            "distinct_client_tuples": len(client),
            "server_tuples": len(tcp.accepted),
            "distinct_server_tuples": len(server),
            "kernel_sockets": sum(kernel.values()),
            "distinct_source_endpoints": len(ports),
            "duplicates_client": [_show(t) for t in dup_client[:SAMPLE]],
            "duplicates_server": [_show(t) for t in dup_server[:SAMPLE]],
            "duplicates_kernel": dup_kernel[:SAMPLE],
        },
    )


def _judge_port_range(evidence: Evidence, check: Observation) -> None:
    conns: list[Conn] = []
    if evidence.tcp is not None:
        conns += evidence.tcp.conns
    if evidence.udp is not None:
        conns += [e.conn for e in evidence.udp.echoes]
    per_host: dict[str, Any] = {}
    outside: list[str] = []
    for host in evidence.client_hosts:
        port_range = evidence.port_ranges.get(host)
        if port_range is None:
            raise HarnessError(f"{host} did not report its ip_local_port_range")
        low, high = port_range
        ports = [c.local[1] for c in conns if c.host == host]
        bad = [c for c in conns if c.host == host and not low <= c.local[1] <= high]
        outside += [f"{_show(c.five_tuple)} outside {low}-{high}" for c in bad]
        per_host[host] = {
            "ip_local_port_range": [low, high],
            "ports": len(ports),
            "lowest": min(ports) if ports else None,
            "highest": max(ports) if ports else None,
            "outside": len(bad),
        }
    check.observe(
        ok=not outside and bool(conns),
        observed=(
            f"{len(conns) - len(outside)} of {len(conns)} source ports inside their host's "
            "range ("
            + ", ".join(
                f"{h} {v['ip_local_port_range'][0]}-{v['ip_local_port_range'][1]}: "
                f"{v['lowest']}..{v['highest']}"
                for h, v in per_host.items()
            )
            + ")"
        ),
        evidence={"hosts": per_host, "outside": outside[:SAMPLE]},
    )


def _judge_duplicate(evidence: Evidence, check: Observation) -> None:
    dup = evidence.duplicate
    if dup is None:
        raise HarnessError("no duplicate-tuple evidence was gathered")
    first, second = dup.first, dup.second
    if first is None or second is None:
        raise HarnessError("the first two sockets did not connect")
    listed = {(s.local, s.peer, s.state) for s in dup.kernel}
    both_listed = {
        (first.local, first.peer, "ESTABLISHED"),
        (second.local, second.peer, "ESTABLISHED"),
    } <= listed
    ok = (
        first.local == second.local
        and first.peer != second.peer
        and dup.third_errno == "EADDRNOTAVAIL"
        and both_listed
    )
    check.observe(
        ok=ok,
        observed=(
            f"on {dup.host} (pid {dup.pid}) {_show(first.five_tuple)} and "
            f"{_show(second.five_tuple)} share {show(first.local)}"
            + (" (both ESTABLISHED in the kernel)" if both_listed else " (not both in the kernel)")
            + "; the same source to "
            + show(first.peer)
            + (f" again: {dup.third_errno}" if dup.third_errno else f": {dup.third_message}")
        ),
        evidence={
            "host": dup.host,
            "pid": dup.pid,
            "first": _conn_json(first),
            "second": _conn_json(second),
            "third": {"errno": dup.third_errno, "message": dup.third_message},
            "kernel": [
                {"state": s.state, "local": list(s.local), "peer": list(s.peer), "inode": s.inode}
                for s in dup.kernel
            ],
        },
    )


def _judge_udp(evidence: Evidence, check: Observation) -> None:
    udp = evidence.udp
    if udp is None:
        raise HarnessError("no UDP evidence was gathered")
    nat = evidence.expect_translation
    conns = [e.conn for e in udp.echoes]
    problems: list[str] = []
    for host in evidence.client_hosts:
        reported = {c.five_tuple: c.pid for c in conns if c.host == host}
        missing, extra, states, wrong, dups = _compare_kernel(reported, udp.clients_kernel[host])
        problems += [f"{host}: not in the kernel: {_show(t)}" for t in missing]
        problems += [f"{host}: not reported: {_show(t)}" for t in extra]
        problems += [f"{host}: {s}" for s in states + wrong]
        problems += [f"{host}: listed twice: {_show(t)}" for t in dups]
    problems += [f"echo contradicts: {b}" for b in _echo_disagreements(udp.echoes, nat)]
    mapping = _map(conns, [e.served for e in udp.echoes], udp.echoes)
    if mapping.unexplained:
        problems.append(f"{mapping.unexplained} server-side tuples do not pair one-to-one")
    if mapping.translated and not nat:
        problems.append(
            f"{mapping.translated} flows translated but no NAT is expected "
            f"({evidence.expectation_source})"
        )
    client_dups = [t for t, n in Counter(c.five_tuple for c in conns).items() if n > 1]
    problems += [f"tuple used twice: {_show(t)}" for t in client_dups]
    server_socks = {(e.served.pid, e.served.sock) for e in udp.echoes}
    expected_sock = {(udp.server_pid, udp.server_sock)}
    if server_socks - expected_sock:
        problems.append(f"echoes from other sockets: {sorted(server_socks - expected_sock)}")
    kernel_server = udp.server_kernel
    holders = {kernel_server.owner(s) for s in kernel_server.sockets}
    if len(kernel_server.sockets) != 1 or (
        kernel_server.owners is not None and holders != {udp.server_pid}
    ):
        problems.append(
            f"the server's kernel lists {len(kernel_server.sockets)} UDP sockets on port "
            f"{udp.target_port} (held by {sorted(str(h) for h in holders)}), not one"
        )
    if udp.failures:
        problems.append(
            "failed: " + ", ".join(f"{n} x{k}" for n, k in sorted(udp.failures.items()))
        )
    translated = f", {mapping.translated} translated by the NAT" if mapping.translated else ""
    check.observe(
        ok=not problems and len(conns) == udp.requested,
        observed=(
            f"{len(conns)} of {udp.requested} connected UDP flows"
            + (
                f": client, kernel and server echo agree on each{translated}; one server "
                f"socket (pid {udp.server_pid}, sock {udp.server_sock}) answered all"
                if not problems
                else f"; {len(problems)} problems: {'; '.join(problems[:3])}"
            )
        ),
        evidence={
            "flows": len(conns),
            "requested": udp.requested,
            "identical": mapping.identical,
            "translated": mapping.translated,
            "server": {
                "pid": udp.server_pid,
                "sock": udp.server_sock,
                "port": udp.target_port,
                "kernel": [_kernel_json(s, kernel_server) for s in kernel_server.sockets[:3]],
            },
            "echoes": [_echo_json(e) for e in udp.echoes[:SAMPLE]],
            "problems": problems[:SAMPLE],
            "failure_samples": list(udp.failure_samples),
        },
    )


def _judge_translation(evidence: Evidence, check: Observation) -> None:
    tcp = _tcp_of(evidence)
    udp = evidence.udp
    if udp is None and "udp" not in evidence.not_measured:
        raise HarnessError("no UDP evidence was gathered")
    tcp_map = _mapping(evidence, tcp)
    udp_echoes = udp.echoes if udp is not None else ()
    udp_map = _map([e.conn for e in udp_echoes], [e.served for e in udp_echoes], udp_echoes)
    translated = tcp_map.translated + udp_map.translated
    hosts: dict[str, Any] = {}
    for host in evidence.client_hosts:
        t_same, t_moved = tcp_map.per_host.get(host, (0, 0))
        u_same, u_moved = udp_map.per_host.get(host, (0, 0))
        moved, total = t_moved + u_moved, t_same + t_moved + u_same + u_moved
        status = "not translated" if moved == 0 else f"{moved} of {total} flows translated"
        hosts[host] = {
            "status": status,
            "tcp": {"identical": t_same, "translated": t_moved},
            "udp": {"identical": u_same, "translated": u_moved},
        }
    samples = list(tcp_map.samples) + list(udp_map.samples)
    # Consistent: every translated flow pairs with exactly one server-side tuple, and at
    # least one echo shows a translated flow end to end (a server of the user's echoes
    # nothing: there the counts pairing up is all there is to see).
    shown = translated == 0 or bool(samples) or evidence.service is not None
    consistent = tcp_map.unexplained == 0 and udp_map.unexplained == 0 and shown
    rewritten = tcp_map.destination_rewritten + udp_map.destination_rewritten
    expected = evidence.expect_translation
    if translated == 0:
        observed = "no translation"
    elif not samples:
        observed = (
            f"translated: {translated} flows reach the server as other tuples (which is "
            "which needs an echo, and the server is the user's)"
        )
    else:
        more = f" (+{len(samples) - 2} more)" if len(samples) > 2 else ""
        observed = f"translated: {', '.join(samples[:2])}{more}; " + ", ".join(
            f"{h} {v['status']}" for h, v in hosts.items()
        )
        if rewritten:
            observed += f"; {rewritten} sampled flows had their destination rewritten too"
    if tcp_map.unaccepted:
        observed += (
            f"; {tcp_map.unaccepted} client tuples have no socket of the server's to compare "
            "(not accepted)"
        )
    elif not consistent:
        observed += (
            f"; inconsistent: {tcp_map.unexplained + udp_map.unexplained} server-side tuples "
            "do not pair one-to-one with client tuples"
            + ("" if samples or not translated else ", and no echo shows a translated flow")
        )
    if (translated > 0) != expected:
        observed += (
            f"; translation {'expected' if expected else 'not expected'} "
            f"({evidence.expectation_source})"
        )
    check.observe(
        ok=consistent and (translated > 0) == expected,
        observed=observed,
        evidence={
            "translated_flows": translated,
            "expected": expected,
            "expectation_from": evidence.expectation_source,
            "hosts": hosts,
            "tcp": {
                "identical": tcp_map.identical,
                "translated": tcp_map.translated,
                "unpaired": tcp_map.unexplained,
            },
            "udp": {
                "identical": udp_map.identical,
                "translated": udp_map.translated,
                "unpaired": udp_map.unexplained,
            },
            "samples": samples[:10],
        },
    )
