"""Connections per second of the five_tuple suite, against a C epoll client doing the same.

    python bench/connections.py [N ...] [--rounds R] [--split] [--topology FILE]

For each N (default 10,000 and 30,000; 5 rounds, 3 above 10,000), in one lab
(topologies/lan.yaml: h1 and h2 connect to h3), each round measures both, in turn (the
order flips every round, so neither always runs on a machine the other just left):

- suite: the five_tuple suite's own TCP phase (`five_tuple.gather`): its client agents
  (every host but the server) open N connections with `connect_many`, from the first
  request until every agent has reported every connection back to the controller (the
  suite's `tcp-concurrent-connections` time); its server agents accept them.
- C epoll client: bench/epoll_connect.c, compiled here with the system's `cc` into a
  temporary directory (`make bench-deps` installs gcc), doing the same connects: the
  same hosts and server address, a port the kernel picks (port 0, as the suite's first
  server agent asks), as many server processes sharing it with SO_REUSEPORT and a
  backlog of 4096, as many client processes with the same shares of N, at most the
  suite's window (64) of non-blocking connects in flight per process, 10 s each, every
  connection held until all are made. Timed as the suite is, by this controller: from
  the go-ahead to the last process's report.
- with --split, also the C client against the suite's own server agents (listening as
  the suite has them listen): how much of the gap is the server side's.

Every connection is then reset (SO_LINGER 0: no TIME_WAIT keeps a port) and the next
measurement starts when no host's kernel lists a connection. Printed per N: the median
of the rounds (min - max) of each, the ratio of the medians with the range of the
per-round ratios, and a `target:` line (suite >= 0.5x the C client).

The kernel's TCP counters (/proc/net/netstat and snmp, summed over the lab's hosts) are
read around every measurement and printed when they moved. When a method's slowest round
is more than 2x slower than its fastest, its rounds are listed with their counters and
what sets the slow ones apart is named. The usual cause: a listener whose accept queue
is full (ListenOverflows) drops a SYN, which the client sends again only after a second
(TCP_TIMEOUT_INIT, TCPSynRetrans), and the round waits for it. That is what made the
bare-Python "blocking" baseline of earlier versions move 14x between runs: re-run with
these counters, its single-process rounds of 10,000 made 33,201-51,067 conn/s without a
dropped SYN and 8,292 with exactly one (30,000: 10,459-12,052 without, 4,450-6,531 with
one), its Python accept loops having fallen 4,096 connections behind. It is gone, with
the other Python baselines: what the scheduler decides is no baseline, and the C client
is the limit the suite is held to.

What bounds the suite (py-spy over its TCP phase alone, 2 cores): at 10,000 the CPU, in
the agents' interpreters on both sides. The server agents no longer report an `accepted`
event per connection (the suite's account is their `sockets` listing, read once all are
in), take each accepted socket's address from the listener instead of asking the kernel,
make it without socket.accept()'s enum conversions and as a bare `_socket.socket`, and
register it with an epoll poller of their own instead of `selectors` (a record per
registration); a socket's record has slots (1.0 us, was 4.8); a client agent resumes its
paused garbage collector only once its answer is written (the catch-up took ~4 ms before
the answer). That took the suite from 0.35-0.40x to 0.40-0.53x of the C client at
10,000 (eight runs of five rounds as the changes came, other work loading the machine
in some: the C client's median moved 57,961-90,102 conn/s over them, the suite's
29,446-41,006), so the target sits inside the spread between runs. What is left is
the interpreter around the same system calls the C processes make: per connection a
client agent makes a socket object, connects,
asks getpeername (the handshake over a veth pair completes inside connect(), so the
kernel work of both sides lands in the client's call), sets TCP_NODELAY, makes a record
(getsockname), registers it for reading and adds a result; a server agent accepts,
makes a socket object, sets it non-blocking and TCP_NODELAY, makes a record and
registers it. Samples over six TCP phases of 10,000: the client agents' connect_many
16% (half of it in socket() and connect() themselves), the server agents' accepts 8%,
the controller's decoding of the four replies a few percent. Both sides weigh the
same: with --split, the C client against the suite's server agents made 0.64x
(0.49-0.72) of the C pair, and the suite's own clients took that to 0.40x in that run.
At 30,000 both methods are bound by the kernel's choice of ephemeral ports: connect()
tries the even ports of ip_local_port_range first (14,116 in 32768-60999), each client
host makes 15,000
connections to one destination, and once the even ports are taken every connect()
walks all of them before it takes an odd one (__inet_hash_connect and
__inet_check_established: 62% of the C client's samples, 35% of the suite's). The C
client made 66,000 conn/s at 28,000 connections (14,000 a host), 27,000 at 29,000 and
15,000 at 30,000 in one run; a line says so when it applies. The suite's server agents
no longer fall behind there (769 SYNs dropped by full accept queues over three rounds
before, none in a run of three since they send no event per connection). A round of
the suite costs more than its TCP phase (its accounts: sock_diag dumps, /proc/<pid>/fd,
the agents' listings): at 30,000 about 6 s; it was 20 s while the dumps went through
pyroute2's parsed messages and `_duplicate` dumped every socket to find three (now the
agent's struct-based dump, with the kernel filtering by port).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Lab, load_topology
from harness.checks.suites import five_tuple
from harness.checks.suites._base import pick_roles, target_address
from harness.observe import diag

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "bench" / "epoll_connect.c"
WINDOW = 64  # the suite's default: connects in flight per client process
TIMEOUT = 10  # seconds per connection, the suite's default
BACKLOG = 4096  # the suite's server agents listen with this backlog
TARGET = 0.5  # the suite's rate, at least this share of the C client's
SPREAD_LIMIT = 2.0  # max/min of a method's rounds above this is explained
SUITE, C_CLIENT = "suite", "C epoll client"
AGENTS_SERVING = "C client, agents serving"  # --split: the suite's servers, C's clients
# The kernel's TCP counters that tell why a round was slow (nstat's names).
WATCHED = (
    "ListenOverflows",  # a SYN or handshake ACK met a full accept queue
    "ListenDrops",
    "TCPSynRetrans",  # SYNs and SYN-ACKs sent again
    "TCPTimeouts",  # retransmission timers that fired
    "TCPReqQFullDrop",  # the SYN queue was full
    "SyncookiesSent",
    "TW",  # connections that went through TIME_WAIT
)


class Unavailable(Exception):
    """What this machine lacks to run the benchmark (exit status 3)."""


# -- the pure part: counters, rates and their spread ---------------------------------------


def parse_counters(text: str) -> dict[str, int]:
    """/proc/net/netstat or /proc/net/snmp: each group is a line of names and a line of
    values, both starting with the group (`TcpExt: ListenOverflows ...`)."""
    counters: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        group, _, rest = line.partition(":")
        if group not in names:
            names[group] = rest.split()
            continue
        for name, value in zip(names.pop(group), rest.split(), strict=True):
            counters[name if group == "TcpExt" else f"{group}.{name}"] = int(value)
    return counters


def difference(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {name: after.get(name, 0) - before.get(name, 0) for name in WATCHED}


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.0f} (min {min(values):.0f} - max {max(values):.0f})"


def spread_note(
    name: str, rates: Sequence[float], counters: Sequence[Mapping[str, int]]
) -> list[str]:
    """Why a method's rounds differ by more than SPREAD_LIMIT, as the counters tell it; no
    lines when they do not."""
    low, high = min(rates), max(rates)
    if high <= SPREAD_LIMIT * low:
        return []
    lines = [f"  {name}: max/min {high / low:.1f}x, above {SPREAD_LIMIT:g}x; its rounds:"]
    for rate, counted in zip(rates, counters, strict=True):
        shown = ", ".join(f"{k} {v}" for k, v in counted.items() if v) or "no counter moved"
        lines.append(f"    {rate:8.0f} conn/s  {shown}")
    middle = math.sqrt(low * high)
    slow = [rate < middle for rate in rates]
    retransmitted = [c.get("TCPSynRetrans", 0) > 0 for c in counters]
    if slow != retransmitted:
        lines.append(
            "    the counters do not set the slow rounds apart (TCPSynRetrans in some fast "
            "rounds or none in a slow one): not explained by dropped SYNs"
        )
        return lines
    overflowed = all(
        c.get("ListenOverflows", 0) > 0 for c, s in zip(counters, slow, strict=True) if s
    )
    why = (
        "the server's accept queue was full (ListenOverflows), the listener dropped "
        "their SYNs, and a dropped SYN is sent again only after 1 s (TCP_TIMEOUT_INIT)"
        if overflowed
        else "SYNs were sent again (TCPSynRetrans), without an accept queue overflow"
    )
    lines.append(f"    the slow rounds, and only they, retransmitted SYNs: {why}")
    return lines


def drop_note(name: str, totals: Mapping[str, int]) -> str | None:
    """What the counters say about SYNs lost over a method's rounds, if any were."""
    again = totals.get("TCPSynRetrans", 0)
    if not again:
        return None
    overflowed = totals.get("ListenOverflows", 0)
    why = (
        f"{overflowed} met a full accept queue (ListenOverflows) and were dropped"
        if overflowed
        else "no accept queue overflowed (ListenOverflows 0)"
    )
    return (
        f"  {name}: {again} SYNs or SYN-ACKs sent again (TCPSynRetrans): {why}; a dropped "
        "SYN is sent again after 1 s (TCP_TIMEOUT_INIT), so a round with one lasts at "
        "least 1 s past it"
    )


def port_note(hosts: str, per_host: int, port_range: str) -> str | None:
    """Whether a client host's connections to one destination outnumber the even ports
    of its ip_local_port_range ("LOW HIGH"): connect() tries those first (odd ones are
    left to bind), so once they are all taken every further connect() walks all of them
    before it takes an odd one, in the kernel, whoever calls it."""
    low, high = map(int, port_range.split())
    even = high // 2 - (low - 1) // 2
    if per_host <= even:
        return None
    return (
        f"  {hosts}: {per_host} connections each to one destination, more than "
        f"the {even} even ports of its ip_local_port_range {low}-{high} that connect() "
        f"tries first: each of the last {per_host - even} walks all of them in the kernel "
        "(__inet_hash_connect), the C client's as much as the suite's"
    )


def rounds_for(n: int, given: int | None) -> int:
    """5 rounds, or 3 above 10,000 connections: a round of the suite at 30,000 takes
    about 20 s, most of it the suite's own accounts (sock_diag dumps of every socket),
    and `make bench` gives this benchmark about 90 s."""
    if given is not None:
        return given
    return 5 if n <= 10_000 else 3


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- the lab side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The suite's layout for N connections in this lab, which the C client copies."""

    connections: int
    server: str
    listen_address: str
    targets: Mapping[str, str]  # client host → the server address it connects to
    shares: Sequence[tuple[str, int]]  # one (host, connections) per client process
    processes_per_client: int
    servers: int

    @classmethod
    def of(cls, lab: Lab, n: int) -> Plan:
        """As five_tuple.gather lays it out (client processes per host and server
        processes raised under the open-files limit, shares split evenly)."""
        roles = pick_roles(lab)
        cap = five_tuple.per_process_limit()
        per_client = max(2, math.ceil(math.ceil(n / len(roles.clients)) / cap))
        server = lab.hosts[roles.server]
        targets = {c: target_address(lab.hosts[c], server) for c in roles.clients}
        hosts = [c for c in roles.clients for _i in range(per_client)]
        unique = set(targets.values())
        return cls(
            connections=n,
            server=roles.server,
            listen_address=unique.pop() if len(unique) == 1 else "0.0.0.0",
            targets=targets,
            shares=list(zip(hosts, split(n, len(hosts)), strict=True)),
            processes_per_client=per_client,
            servers=max(2, math.ceil(n / cap)),
        )

    def describe(self) -> str:
        return (
            f"{len(self.targets)} client hosts x {self.processes_per_client} processes "
            f"({', '.join(str(c) for _h, c in self.shares)} connections each), "
            f"{self.servers} server processes, window {WINDOW}"
        )


class LineProcess:
    """A process inside a lab host (`ip netns exec`), driven by lines on its stdio."""

    def __init__(self, netns: str, argv: Sequence[object]) -> None:
        self.name = " ".join(map(str, argv))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *map(str, argv)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise RuntimeError(f"{self.name} exited with {self.proc.wait()}")
        return text.strip()

    def expect(self, word: str) -> list[str]:
        fields = self.line().split()
        if not fields or fields[0] != word:
            raise RuntimeError(f"{self.name} said {fields}, not {word!r}")
        return fields[1:]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def __enter__(self) -> LineProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.end()

    def end(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def compile_client(directory: Path) -> Path:
    """bench/epoll_connect.c built with the system's `cc` into `directory`."""
    cc = shutil.which("cc")
    if cc is None:
        raise Unavailable(
            "no C compiler: `cc` is not on PATH, and the connections benchmark compiles its "
            f"baseline ({SOURCE.relative_to(ROOT)}); `make bench-deps` installs gcc"
        )
    binary = directory / "epoll_connect"
    built = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise Unavailable(f"{cc} could not compile {SOURCE}:\n{built.stderr.strip()}")
    return binary


def c_servers(lab: Lab, binary: Path, plan: Plan, stack: contextlib.ExitStack) -> int:
    """The C server processes, sharing a port the kernel picks; that port."""
    netns = lab.hosts[plan.server].netns
    first = stack.enter_context(
        LineProcess(netns, [binary, "serve", plan.listen_address, 0, BACKLOG])
    )
    port = int(first.expect("ready")[0])
    for _i in range(plan.servers - 1):
        argv = [binary, "serve", plan.listen_address, port, BACKLOG]
        stack.enter_context(LineProcess(netns, argv)).expect("ready")
    return port


def agent_servers(lab: Lab, _binary: Path, plan: Plan, stack: contextlib.ExitStack) -> int:
    """The suite's own server agents, listening as five_tuple.gather has them listen."""
    agents = []
    for _i in range(plan.servers):
        agents.append(lab.hosts[plan.server].agent())
        stack.callback(agents[-1].close)
    options: dict[str, Any] = {"backlog": BACKLOG, "reuseport": True, "echo": True, "events": False}
    first = agents[0].listen("tcp", 0, plan.listen_address, **options)
    for agent in agents[1:]:
        agent.listen("tcp", first.port, plan.listen_address, **options)
    return first.port


Servers = Callable[[Lab, Path, Plan, contextlib.ExitStack], int]


def c_client(lab: Lab, binary: Path, plan: Plan, servers: Servers = c_servers) -> float:
    """Seconds the C client processes take for the plan's connections, from the
    go-ahead to the last report, against `servers`."""
    with contextlib.ExitStack() as stack:
        port = servers(lab, binary, plan, stack)
        clients = [
            stack.enter_context(
                LineProcess(
                    lab.hosts[h].netns,
                    [binary, "connect", plan.targets[h], port, count, WINDOW, TIMEOUT],
                )
            )
            for h, count in plan.shares
        ]
        for client in clients:
            client.expect("ready")
        began = time.perf_counter()
        for client in clients:
            client.send("go")
        reports = [client.expect("done") for client in clients]
        seconds = time.perf_counter() - began
        for client in clients:
            client.send("close")
        for client in clients:
            client.expect("closed")
    failed = sum(int(report[3]) for report in reports)
    if failed:
        errors = [field.partition(":") for report in reports for field in report[4:]]
        named = ", ".join(f"{errno.errorcode.get(int(e), e)} {c}" for e, _, c in errors)
        raise RuntimeError(f"the C client failed {failed} connections: {named}")
    return seconds


def suite(lab: Lab, plan: Plan, not_passing: list[str]) -> float:
    evidence = five_tuple.gather(
        lab,
        connections=plan.connections,
        processes_per_client=plan.processes_per_client,
        server_processes=plan.servers,
        window=WINDOW,
        timeout=TIMEOUT,
        udp_flows=10,
    )
    checks = five_tuple.evaluate(evidence)
    not_passing[:] = [f"{c.name}: {c.verdict} ({c.observed})" for c in checks if not c.passed]
    if evidence.tcp is None or len(evidence.tcp.conns) != plan.connections:
        raise RuntimeError(f"the suite did not open {plan.connections} connections: {not_passing}")
    return evidence.tcp.seconds


def counters(lab: Lab) -> dict[str, int]:
    """The kernel's TCP counters, summed over the lab's hosts."""
    total: dict[str, int] = {}
    for host in lab.hosts.values():
        read = host.run(["cat", "/proc/net/netstat", "/proc/net/snmp"])
        if read.returncode != 0:
            raise RuntimeError(f"cannot read {host.name}'s TCP counters: {read.stderr}")
        for name, value in parse_counters(read.stdout).items():
            total[name] = total.get(name, 0) + value
    return total


def settle(lab: Lab, timeout: float = 30.0) -> None:
    """Wait until no host's kernel lists a TCP connection (listeners aside)."""
    gc.collect()  # the controller's own pauses are not what is measured
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [
            s
            for host in lab.hosts.values()
            for s in diag.sockets(host, "tcp", 4)
            if s.state != "LISTEN"
        ]
        if not left:
            return
        time.sleep(0.1)
    raise RuntimeError(f"connections still listed after {timeout:g} s")


def measure(lab: Lab, binary: Path, n: int, rounds: int, split_servers: bool) -> bool:
    """The methods in turn (rotating which goes first), `rounds` times; prints the
    figures; True if the target is met."""
    began = time.perf_counter()
    plan = Plan.of(lab, n)
    not_passing: list[str] = []
    methods: dict[str, Callable[[], float]] = {
        SUITE: lambda: suite(lab, plan, not_passing),
        C_CLIENT: lambda: c_client(lab, binary, plan),
    }
    if split_servers:
        methods[AGENTS_SERVING] = lambda: c_client(lab, binary, plan, agent_servers)
    names = list(methods)
    rates: dict[str, list[float]] = {name: [] for name in names}
    moved: dict[str, list[dict[str, int]]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0.0)
    for round_ in range(rounds):
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            settle(lab)
            before = counters(lab)
            started = time.perf_counter()
            rates[name].append(n / methods[name]())
            spent[name] += time.perf_counter() - started
            moved[name].append(difference(counters(lab), before))
    print(f"N = {n}: {plan.describe()}, {rounds} rounds; conn/s, median (min - max)")
    for name in names:
        print(f"  {name:24} {spread(rates[name])}")
    ratio = statistics.median(rates[SUITE]) / statistics.median(rates[C_CLIENT])
    for name in (other for other in names if other != C_CLIENT):
        paired = [s / c for s, c in zip(rates[name], rates[C_CLIENT], strict=True)]
        share = statistics.median(rates[name]) / statistics.median(rates[C_CLIENT])
        print(
            f"  {name} / {C_CLIENT}: {share:.2f} "
            f"(per round min {min(paired):.2f} - max {max(paired):.2f})"
        )
    for name in names:
        total = {k: sum(c[k] for c in moved[name]) for k in WATCHED}
        shown = ", ".join(f"{k} {v}" for k, v in total.items() if v) or "none moved"
        print(f"  {name} kernel counters over the rounds: {shown}")
        note = drop_note(name, total)
        if note:
            print(note)
        for line in spread_note(name, rates[name], moved[name]):
            print(line)
    measured = sum(n / rate for rate in rates[SUITE])
    print(
        f"  {time.perf_counter() - began:.0f} s for N = {n}; the suite's rounds "
        f"{spent[SUITE]:.0f} s, {measured:.1f} s of them its measured TCP phase"
    )
    alike: dict[tuple[int, str], list[str]] = {}
    for host in plan.targets:
        made = sum(count for h, count in plan.shares if h == host)
        port_range = lab.hosts[host].sysctl("net.ipv4.ip_local_port_range")
        alike.setdefault((made, port_range), []).append(host)
    for (made, port_range), hosts in alike.items():
        note = port_note(", ".join(hosts), made, port_range)
        if note:
            print(note)
    print(f"  suite checks not passing: {'; '.join(not_passing) or 'none'}")
    met = ratio >= TARGET
    print(
        f"target: suite at N={n} at least {TARGET:g}x the C epoll client's rate: "
        f"{ratio:.3f}x - {'met' if met else 'missed'}"
    )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("connections", nargs="*", type=int, default=[10_000, 30_000])
    parser.add_argument("--rounds", type=int, help="rounds per N (default 5; 3 above 10,000)")
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "lan.yaml"))
    parser.add_argument(
        "--split",
        action="store_true",
        help="also the C client against the suite's own server agents: which side bounds it",
    )
    args = parser.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="nh-bench-") as directory:
            binary = compile_client(Path(directory))
            with Lab.up(load_topology(args.topology)) as lab:
                met = [
                    measure(lab, binary, n, rounds_for(n, args.rounds), args.split)
                    for n in args.connections
                ]
    except Unavailable as exc:
        print(f"bench/connections.py: {exc}", file=sys.stderr)
        return 3
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
