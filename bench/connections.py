"""Connections established per second by the five_tuple suite, against bare Python.

    python bench/connections.py [N ...] [--runs 5] [--topology topologies/lan.yaml]

For each N (default 10,000 and 30,000), in one lab and its namespaces, each run measures:

- suite: the five_tuple suite's own TCP phase (`five_tuple.gather`): its client agents
  (every host but the server, `processes_per_client` each) open N connections with
  `connect_many`, from the first request until every agent has reported every
  connection back to the controller (the suite's `tcp-concurrent-connections` time);
- blocking: the same client and server processes in the same namespaces, but bare
  Python: each client process a plain loop of blocking `connect()` calls, each server
  process a blocking `accept()` loop (SO_REUSEPORT when there are several, as the
  suite's server agents share their port), started together; timed from the first
  connect to the last, across processes;
- asyncio: the same layout with `asyncio.open_connection` clients (as many in flight
  per process as the suite's window) and `asyncio.start_server` servers;
- one blocking process: a single blocking loop (up to what one process may hold under
  the open-files limit), the fastest bare Python client on its own.

Every connection is held until all are made, then reset (SO_LINGER 0) so no TIME_WAIT
keeps the ports; the next measurement starts when the kernel lists no connection in any
host. Methods run in a rotating order. Printed: median of the runs (min-max) and the
suite's rate as a ratio of each baseline's. Absolute rates depend on the machine and
whatever else runs on it: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import Lab, load_topology
from harness.checks.suites import five_tuple
from harness.checks.suites._base import pick_roles, target_address
from harness.observe import diag

ROOT = Path(__file__).resolve().parents[1]
PORTS = {"blocking": 7101, "asyncio": 7102, "one blocking process": 7103}

BLOCKING_SERVER = """
import os, socket, sys, threading
address, port = sys.argv[1], int(sys.argv[2])
listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
listener.bind((address, port))
listener.listen(4096)
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
print("ready", flush=True)
held = []
while True:
    held.append(listener.accept()[0])
"""

ASYNCIO_SERVER = """
import asyncio, sys
address, port = sys.argv[1], int(sys.argv[2])
async def main():
    held = []
    async def handle(reader, writer):
        held.append(writer)
    server = await asyncio.start_server(handle, address, port, reuse_port=True, backlog=4096)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()
asyncio.run(main())
"""

_CLIENT_END = """
print(started, ended, flush=True)
sys.stdin.readline()
for sock in held:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
print("closed", flush=True)
"""

BLOCKING_CLIENT = (
    """
import socket, struct, sys, time
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in address else socket.AF_INET
print("ready", flush=True)
sys.stdin.readline()
held = []
started = time.monotonic()
for _ in range(count):
    sock = socket.socket(family)
    sock.connect((address, port))
    held.append(sock)
ended = time.monotonic()
"""
    + _CLIENT_END
)

ASYNCIO_CLIENT = """
import asyncio, socket, struct, sys, time
address, port, count, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
async def main():
    slots = asyncio.Semaphore(window)
    writers = []
    async def one():
        async with slots:
            writers.append((await asyncio.open_connection(address, port))[1])
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    ended = time.monotonic()
    print(started, ended, flush=True)
    sys.stdin.readline()
    for writer in writers:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    await asyncio.sleep(0)
    print("closed", flush=True)
asyncio.run(main())
"""


class Bare:
    """A bare Python process inside a lab host (`ip netns exec`), driven by lines."""

    def __init__(self, netns: str, code: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", code, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise RuntimeError(f"bare process exited with {self.proc.wait()}")
        return text.strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bare_run(
    lab: Lab,
    server_code: str,
    client_code: str,
    port: int,
    layout: Sequence[tuple[str, int]],
    servers: int,
    extra: Sequence[object] = (),
) -> float:
    """Seconds from the first connect to the last, over client processes started together."""
    roles = pick_roles(lab)
    server_host = lab.hosts[roles.server]
    address = target_address(lab.hosts[layout[0][0]], server_host)
    started_servers = [Bare(server_host.netns, server_code, address, port) for _ in range(servers)]
    clients: list[Bare] = []
    try:
        for server in started_servers:
            assert server.line() == "ready"
        for host, count in layout:
            target = target_address(lab.hosts[host], server_host)
            clients.append(Bare(lab.hosts[host].netns, client_code, target, port, count, *extra))
        for client in clients:
            assert client.line() == "ready"
        for client in clients:
            client.send("go")
        spans = [tuple(map(float, client.line().split())) for client in clients]
        for client in clients:
            client.send("close")
        for client in clients:
            assert client.line() == "closed"
    finally:
        for process in clients + started_servers:
            process.end()
    return max(end for _s, end in spans) - min(start for start, _e in spans)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("connections", nargs="*", type=int, default=[10_000, 30_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "lan.yaml"))
    parser.add_argument("--processes-per-client", type=int, default=2)
    args = parser.parse_args()
    with Lab.up(load_topology(args.topology)) as lab:
        for n in args.connections:
            measure(lab, n, args.runs, args.processes_per_client)


def measure(lab: Lab, n: int, runs: int, processes_per_client: int) -> None:
    cap = five_tuple.per_process_limit()
    roles = pick_roles(lab)
    per_host = math.ceil(n / len(roles.clients))
    processes = max(processes_per_client, math.ceil(per_host / cap))
    servers = max(2, math.ceil(n / cap))  # as the suite's default
    layout = [
        (host, count)
        for host, share in zip(roles.clients, split(n, len(roles.clients)), strict=True)
        for count in split(share, processes)
    ]
    window = 64  # the suite's default: connects in flight per client process
    not_passing: list[str] = []

    def suite() -> float:
        evidence = five_tuple.gather(
            lab, connections=n, processes_per_client=processes, window=window, udp_flows=10
        )
        checks = five_tuple.evaluate(evidence)
        not_passing[:] = [f"{c.name}: {c.verdict} ({c.observed})" for c in checks if not c.passed]
        if evidence.tcp is None or len(evidence.tcp.conns) != n:
            raise RuntimeError(f"the suite did not open {n} connections: {not_passing}")
        return evidence.tcp.seconds

    one = min(n, cap)
    methods: dict[str, tuple[int, Callable[[], float]]] = {
        "suite": (n, suite),
        "blocking": (
            n,
            lambda: bare_run(
                lab, BLOCKING_SERVER, BLOCKING_CLIENT, PORTS["blocking"], layout, servers
            ),
        ),
        "asyncio": (
            n,
            lambda: bare_run(
                lab, ASYNCIO_SERVER, ASYNCIO_CLIENT, PORTS["asyncio"], layout, servers, (window,)
            ),
        ),
        "one blocking process": (
            one,
            lambda: bare_run(
                lab,
                BLOCKING_SERVER,
                BLOCKING_CLIENT,
                PORTS["one blocking process"],
                [(roles.clients[0], one)],
                1,
            ),
        ),
    }
    names = list(methods)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            settle(lab)
            count, method = methods[name]
            rates[name].append(count / method())
    print(
        f"N = {n}: {len(roles.clients)} client hosts x {processes} processes "
        f"({', '.join(str(c) for _h, c in layout)} connections each), {servers} server "
        f"processes, {runs} runs"
    )
    for name in names:
        values = rates[name]
        count = methods[name][0]
        print(
            f"  {name:22} {statistics.median(values):8.0f} conn/s "
            f"(min {min(values):.0f} - max {max(values):.0f})"
            + (f"  [{count} connections, one process]" if count != n else "")
        )
    suite_rate = statistics.median(rates["suite"])
    for name in names[1:]:
        print(f"  suite / {name:22} {suite_rate / statistics.median(rates[name]):.2f}")
    print(f"  suite checks not passing: {'; '.join(not_passing) or 'none'}")


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


if __name__ == "__main__":
    main()
