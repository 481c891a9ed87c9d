"""The five_tuple suite: every connection is one five-tuple, the same to client, server and
kernel, never used twice; and where a NAT rewrites it, the suite says so.

    from harness.checks.suites import five_tuple
    checks = five_tuple.run(lab, connections=10_000, processes_per_client=4)

Several client processes (agents) on every client host open `connections` TCP connections
in all, at the same time, to one server address and port (the agent's `connect_many` op:
non-blocking connects, thousands per request). The server is a few processes listening on
that one address and port together (SO_REUSEPORT, as a pre-forked server does), each
holding at most what its open-files limit allows. Three accounts of each connection are then
compared: the client's (getsockname/getpeername in the connecting process), the server's
(the accepted sockets its processes hold) and the kernel's, read with sock_diag inside each
host's namespace (`harness.observe.diag`) with each socket's inode traced to the process that
holds it. Connected UDP flows are checked the same way, the server's account coming from
its echo. Then the kernel is asked for a duplicate: a second socket bound with
SO_REUSEADDR to a source address and port already in use may connect elsewhere, but not to
the same destination (EADDRNOTAVAIL).

Translation. The server's account of a flow differs from the client's when a NAT rewrites
it. The `translation` check reports which flows were translated and shows both tuples
("10.0.10.11:40001 -> 198.18.0.1:40001"), or "no translation". It passes when that report
is complete and consistent (every flow accounted for, one server-side tuple per client
tuple) and agrees with what is expected: `expect_translation` (default: expected exactly
when some host's `nft` script has a nat statement, as topologies/nat.yaml has). The same
expectation decides `tcp-client-view-is-server-view` and `udp-flows-agree`: identical
tuples without NAT, a one-to-one mapping with it.

Against your own server. `service="web:8080/tcp"` (`--set five_tuple.service=...`) makes
the process listening there the server: no server agent is started (nothing listening
there is a UsageError naming what does listen on the host). Your server reports nothing,
so its account of each connection is the host's socket table, read while the clients hold
the connections open: the port's ESTABLISHED sockets held by the listener's processes
(the holders of the listener that descend from no other holder; with `process: NAME` in
the topology, that process) or the workers they forked. `tcp-server-view-is-kernel-view`
sets that account (the agent's sock_diag and /proc) against a second sock_diag read with
its own /proc scan; the client-server and translation checks pair tuples without an echo,
so a client tuple the server holds no socket for is reported as not accepted (a server
with a short backlog drops the handshakes of a burst: python's http.server listens with
5), not as translated. The duplicate-tuple check's second destination is a listener of a
client process. UDP: `udp-flows-agree` is reported "skip" (not measured: the service is
TCP), and a UDP service is refused: a real UDP server keeps one unconnected socket, no
per-flow state, and echoes nothing, so it has no account of a flow to compare.

The suite leaves nothing behind: its client connections are reset (no TIME_WAIT holds
their ports afterwards) and every process it started is ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.checks.suites._base import Check, all_errors, gathered
from harness.checks.suites.five_tuple._evidence import (
    CHECKS,
    EXPECTED,
    NAME,
    Conn,
    DuplicateEvidence,
    Echo,
    Evidence,
    KernelView,
    Served,
    TcpEvidence,
    UdpEvidence,
    _flag,
    _integer,
    _number,
    per_process_limit,
    translation_expected,
)
from harness.checks.suites.five_tuple._gather import gather
from harness.checks.suites.five_tuple._judge import evaluate

if TYPE_CHECKING:
    from harness.lab import Lab

# ---- running -----------------------------------------------------------------------------


def run(  # noqa: PLR0913 - keyword-only options: the suite's API (--set)
    lab: Lab,
    *,
    server: str | None = None,
    clients: Sequence[str] | None = None,
    client: str | None = None,
    connections: int = 1000,
    processes_per_client: int = 2,
    server_processes: int | None = None,
    udp_flows: int = 100,
    echo_sample: int = 64,
    family: int = 4,
    window: int = 64,
    timeout: float = 10.0,
    expect_translation: bool | str | None = None,
    service: str | None = None,
) -> list[Check]:
    """Run the suite on `lab` (see the module's docstring). `client` names one client host
    (as `clients=[client]`); `server_processes` (default: two, more if N connections do
    not fit under one process's open-files limit) listen on the one address and port
    together; `window` is the connects each client process keeps in flight; `service`
    ("web:8080/tcp") makes the user's process listening there the server instead."""
    return gathered(
        lambda: gather(
            lab,
            server=server,
            clients=[client] if client and not clients else clients,
            connections=_integer("connections", connections, 1),
            processes_per_client=_integer("processes_per_client", processes_per_client, 1),
            server_processes=(
                None
                if server_processes is None
                else _integer("server_processes", server_processes, 1)
            ),
            udp_flows=_integer("udp_flows", udp_flows, 1),
            echo_sample=_integer("echo_sample", echo_sample, 1),
            family=_integer("family", family, 4),
            window=_integer("window", window, 1),
            timeout=_number("timeout", timeout),
            expect_translation=_flag("expect_translation", expect_translation),
            service=service,
        ),
        evaluate,
        not_run,
    )


def not_run(reason: str) -> list[Check]:
    """Every check as an error with `reason` (the suite could not gather its evidence)."""
    return all_errors(NAME, EXPECTED, reason)


__all__ = [
    "CHECKS",
    "EXPECTED",
    "NAME",
    "Check",
    "Conn",
    "DuplicateEvidence",
    "Echo",
    "Evidence",
    "KernelView",
    "Served",
    "TcpEvidence",
    "UdpEvidence",
    "evaluate",
    "gather",
    "not_run",
    "per_process_limit",
    "run",
    "translation_expected",
]
