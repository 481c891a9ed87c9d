"""Bring-up and teardown on the netns backend against the raw limit and Mininet.

    python bench/bringup.py [--runs 5] [--stars 10,100,500] [--chain 50]
                            [--mininet 10,100] [--commands 10,100] [--memory 100,500]

NETHARNESS_BENCH_1000=1 adds star1000 (to --stars' default and to --memory's): about two
minutes more, which `make bench` has no room for under its ten minutes.

Cases (generated here): `starN`, N hosts on one network; `chainN`, N routers in a line,
each pair of neighbours on its own /24 and every router routing to every network.
Each run measures, side by side and in rotating order:

- netharness: `Lab.up` until every host's agent has answered its hello, then `down()`
  until the last namespace is gone (in this process, imports done);
- raw netlink: the same namespaces, bridges, veths, addresses and routes made with
  hand-packed netlink messages in batches (bench/rawnet.py), no agents, then removed;
- mn: Mininet's `mn --switch lxbr --controller none --topo single,N --test none`, end to
  end as a command, inside its own network, pid and mount namespaces (so its clean-up
  on errors, which kills processes by name, cannot reach anything outside);
- netharness commands: `netharness up --json --no-progress FILE` (the lab is validated,
  built, announced and handed to its fork server; the command has exited) and then
  `netharness down ID` (until the command exits: the lab is gone), each as a user runs
  it, interpreter start and imports included: compared with mn end to end, and `up`
  with the in-process bring-up.

After each netharness teardown the lab's namespaces must be gone, and no link of its
kinds (a fabric port, a bridge named after a network) may have appeared in the root
namespace; anything left is an error. Memory (at --memory sizes): resident memory of
this controller process and of each agent (RSS, and PSS/USS, which count the fork
server's shared pages once) after bring-up.
Lines starting with `target:` are the issue's targets, each marked met or missed.

Where bring-up time goes (star100, py-spy, under load): creating the namespaces (unshare
and bind mount, kernel work the raw limit pays too) about 30 %; wiring about 60 %, on a
worker thread: the veth pairs, links, addresses and routes in batched requests
(harness/core/_rtnl.py; mostly kernel time) and four sysctl writes per host (ICMP rate
limits; ~0.2 ms each in a new namespace, plus two accept_dad writes at creation; a second
thread for them made it slower on 2 cores). Agents start meanwhile through the fork
server and are ready before the wiring ends. At 10 hosts the fork server's own start (a
Python interpreter, 60-100 ms) bounds bring-up: the raw limit starts no process at all.
At 1,000 hosts (py-spy, BENCHMARKS.md has the figures) the two threads share 2 cores:
the wiring (kernel netlink work and the sysctl writes, which cost more per host as the
namespaces grow in number) and the start of 1,000 agents, each copying ~1.6 MiB of the
fork server's pages as it runs; without the agents the wiring alone is ~2.5x raw.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import rawnet

from harness import Lab
from harness.core import _netns, naming
from harness.topology import Topology, parse_topology

ROOT = Path(__file__).resolve().parents[1]
UP_TARGET_MS = 700  # star100, every agent ready
RAW_RATIO_TARGET = 3.0  # bring-up within 3x of the raw limit at every size
DOWN_RATIO_TARGET = 2.0  # teardown within 2x of the raw removal, at LARGE sizes
LARGE = 500  # from here on the teardown and per-agent memory targets apply
AGENT_PSS_TARGET_MIB = 1.5  # per agent, median
MININET_RATIO_TARGETS = {10: 4.0, 100: 8.0}  # mn / netharness commands, up + down
DOWN_COMMAND_TARGET_MS = 150  # `netharness down` of star100
UP_COMMAND_RATIO_TARGET = 1.5  # `netharness up` of star100 / in-process bring-up
SETTLE, SETTLE_PER_HOST = 0.3, 0.003  # seconds between measurements


def star(n: int) -> str:
    hosts = "".join(f"  h{i:03d}: {{networks: {{lan: auto}}}}\n" for i in range(1, n + 1))
    return f"name: star{n}\nnetworks:\n  lan: {{subnet: 10.0.0.0/16}}\nhosts:\n{hosts}"


def chain(n: int) -> str:
    """Routers r1..rn; link i joins r(i) and r(i+1) on 10.1.i.0/24 (.1 left, .2 right).

    Each router's default route points left, and it has one route per network further
    right than its neighbour, so every router reaches every link.
    """
    lines = [f"name: chain{n}", "networks:"]
    lines += [f"  n{i}: {{subnet: 10.1.{i}.0/24}}" for i in range(1, n)]
    lines.append("hosts:")
    for r in range(1, n + 1):
        nets = []
        if r > 1:
            nets.append(f"n{r - 1}: 10.1.{r - 1}.2")
        if r < n:
            nets.append(f"n{r}: 10.1.{r}.1")
        routes = []
        if r > 1:
            routes.append(f"{{to: default, via: 10.1.{r - 1}.1}}")
        routes += [f"{{to: 10.1.{i}.0/24, via: 10.1.{r}.2}}" for i in range(r + 1, n)]
        lines.append(
            f"  r{r}: {{networks: {{{', '.join(nets)}}}, forwarding: true, "
            f"routes: [{', '.join(routes)}]}}"
        )
    return "\n".join(lines) + "\n"


@dataclass
class Figures:
    up: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)
    cycle: list[float] = field(default_factory=list)


@dataclass
class Memory:
    controller: list[float] = field(default_factory=list)  # MiB
    agent_rss: list[float] = field(default_factory=list)  # MiB, median agent of a run
    agent_pss: list[float] = field(default_factory=list)
    agent_uss: list[float] = field(default_factory=list)
    agents_pss_total: list[float] = field(default_factory=list)


def status_kib(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rollup_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            match = re.match(r"(\w+):\s+(\d+) kB", line)
            if match:
                values[match[1]] = int(match[2])
    return values


def measure_memory(lab: Lab, memory: Memory) -> None:
    inodes = {i for h in lab.hosts.values() if (i := _netns.inode(h.handle.netns_path))}
    agents = _netns.pids_in(inodes)
    if len(agents) != len(lab.hosts):
        raise RuntimeError(f"{len(agents)} processes in {len(lab.hosts)} hosts, expected one each")
    rollups = [rollup_kib(pid) for pid in agents]
    memory.controller.append(status_kib("self", "VmRSS") / 1024)
    memory.agent_rss.append(statistics.median(r["Rss"] for r in rollups) / 1024)
    memory.agent_pss.append(statistics.median(r["Pss"] for r in rollups) / 1024)
    uss = [r["Private_Clean"] + r["Private_Dirty"] for r in rollups]
    memory.agent_uss.append(statistics.median(uss) / 1024)
    memory.agents_pss_total.append(sum(r["Pss"] for r in rollups) / 1024)


def root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def check_gone(lab: Lab, links_before: set[str]) -> None:
    """Raise if the lab left a namespace, or a link of its kinds in the root namespace.

    Only its kinds: docker, run by others meanwhile, adds and removes veths there."""
    prefix = naming.fabric_netns(lab.id)
    left = [n for n in os.listdir(_netns.netns_path("")) if n.startswith(prefix)]
    port = naming.fabric_port(1).rstrip("0123456789")
    new_links = {
        link
        for link in root_links() - links_before
        if link.startswith(port) or link in lab.topology.networks
    }
    if left or new_links:
        raise RuntimeError(
            f"lab {lab.id} left {len(left)} namespaces ({', '.join(sorted(left)[:3])}...) "
            f"and links {sorted(new_links)[:3]} after down()"
        )


def netharness(topology: Topology, figures: Figures, memory: Memory | None) -> None:
    links = root_links()
    started = time.perf_counter()
    lab = Lab.up(topology)
    try:
        figures.up.append(time.perf_counter() - started)
        if memory is not None:
            measure_memory(lab, memory)
    finally:
        started = time.perf_counter()
        lab.down()
    figures.down.append(time.perf_counter() - started)
    figures.cycle.append(figures.up[-1] + figures.down[-1])
    check_gone(lab, links)


def raw(topology: Topology, figures: Figures) -> None:
    started = time.perf_counter()
    with rawnet.raw_lab(topology, f"nhbench{os.getpid()}"):
        figures.up.append(time.perf_counter() - started)
        started = time.perf_counter()
    figures.down.append(time.perf_counter() - started)
    figures.cycle.append(figures.up[-1] + figures.down[-1])


# Mininet in its own network, pid and mount namespaces with a private /tmp: whatever it
# does (its error path runs `mn -c`, which kills processes by name and deletes links and
# files in /tmp) stays inside, and its processes die with it.
MN_JAIL = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]
MN_JAIL += ["--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs /tmp && exec "$@"', "mn"]


def mininet(n: int, figures: Figures, own: list[float]) -> None:
    argv = ["mn", "--switch", "lxbr", "--controller", "none", "--topo", f"single,{n}"]
    started = time.perf_counter()
    result = subprocess.run(
        [*MN_JAIL, *argv, "--test", "none"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    figures.cycle.append(time.perf_counter() - started)
    completed = re.search(r"completed in ([\d.]+) seconds", result.stderr + result.stdout)
    if result.returncode != 0 or completed is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"mn exited with {result.returncode}: {' / '.join(tail)}")
    own.append(float(completed[1]))


def commands(path: Path, figures: Figures) -> None:
    argv = [sys.executable, "-m", "harness"]
    started = time.perf_counter()
    up = subprocess.run(
        [*argv, "up", "--json", "--no-progress", str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    figures.up.append(time.perf_counter() - started)
    lab = json.loads(up.stdout)["id"]
    started = time.perf_counter()
    subprocess.run([*argv, "down", lab], capture_output=True, check=True, cwd=ROOT)
    figures.down.append(time.perf_counter() - started)
    figures.cycle.append(figures.up[-1] + figures.down[-1])


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"{statistics.median(values) * 1000:.0f} "
        f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"
    )


def mib(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def mininet_problem() -> str | None:
    """Why Mininet cannot run here, or None."""
    if shutil.which("mn") is None:
        return "`mn` is not installed (Debian package mininet; `make bench` installs it)"
    if shutil.which("brctl") is None:
        return "`brctl` is not installed (Debian package bridge-utils; mn --switch lxbr uses it)"
    return None


def run_case(
    name: str, text: str, args: argparse.Namespace, n: int | None, problems: dict[str, str]
) -> None:
    topology = parse_topology(text, name)
    methods: dict[str, Figures] = {"netharness": Figures(), "raw netlink": Figures()}
    memories = {"netharness": Memory()} if n in args.memory else {}
    mn_own: list[float] = []
    work: dict[str, Callable[[], None]] = {
        "netharness": lambda: netharness(
            topology, methods["netharness"], memories.get("netharness")
        ),
        "raw netlink": lambda: raw(topology, methods["raw netlink"]),
    }
    if n in args.commands:
        file = args.workdir / f"{name}.yaml"
        file.write_text(text)
        methods["netharness commands"] = Figures()
        work["netharness commands"] = lambda: commands(file, methods["netharness commands"])
    if n is not None and n in args.mininet and "mn" not in problems:
        switch_ports = n
        methods["mn"] = Figures()
        work["mn"] = lambda: mininet(switch_ports, methods["mn"], mn_own)
    # One unmeasured cycle each: the page cache and the kernel's slabs warm up alike.
    for method in work.values():
        method()
        time.sleep(SETTLE)
    methods = {key: Figures() for key in methods}
    memories = {key: Memory() for key in memories}
    mn_own.clear()
    names = list(work)
    # The kernel frees a namespace's devices after its name is gone, on a work queue that
    # takes the locks bring-up needs: let one method's clean-up end before the next runs.
    settle = SETTLE + SETTLE_PER_HOST * len(topology.hosts)
    for run in range(args.runs):
        for key in names[run % len(names) :] + names[: run % len(names)]:
            work[key]()
            time.sleep(settle)
    hosts = len(topology.hosts)
    interfaces = sum(len(h.interfaces) for h in topology.hosts.values())
    routes = sum(len(h.routes) for h in topology.hosts.values())
    print(
        f"{name}: {hosts} hosts, {len(topology.networks)} networks, {interfaces} interfaces, "
        f"{routes} routes; median (min-max) of {args.runs} runs, ms"
    )
    print(f"  {'method':20} {'bring-up':>18} {'teardown':>18} {'up + down':>18}")
    for key, figures in methods.items():
        print(f"  {key:20} {ms(figures.up):>18} {ms(figures.down):>18} {ms(figures.cycle):>18}")
    if mn_own:
        print(f"  (mn's own 'completed in', without its interpreter start: {ms(mn_own)})")
    ours, floor = methods["netharness"], methods["raw netlink"]
    up_ratio = statistics.median(ours.up) / statistics.median(floor.up)
    print(
        f"  netharness / raw: bring-up {up_ratio:.2f}x, teardown "
        f"{statistics.median(ours.down) / statistics.median(floor.down):.2f}x"
    )
    print(
        f"target: {name} bring-up within {RAW_RATIO_TARGET:g}x of raw netlink: "
        f"{up_ratio:.2f}x - {verdict(up_ratio <= RAW_RATIO_TARGET)}"
    )
    if (n or 0) >= LARGE:
        down_ratio = statistics.median(ours.down) / statistics.median(floor.down)
        print(
            f"target: {name} teardown within {DOWN_RATIO_TARGET:g}x of raw netlink: "
            f"{down_ratio:.2f}x - {verdict(down_ratio <= DOWN_RATIO_TARGET)}"
        )
    if n == 100:
        up_ms = statistics.median(ours.up) * 1000
        print(
            f"target: star100 with every agent ready in under {UP_TARGET_MS} ms: "
            f"{up_ms:.0f} ms - {verdict(up_ms < UP_TARGET_MS)}"
        )
    if "netharness commands" in methods:
        command = methods["netharness commands"]
        up_ratio = statistics.median(command.up) / statistics.median(ours.up)
        down_ms = statistics.median(command.down) * 1000
        print(f"  netharness up as a command / in process: {up_ratio:.2f}x")
        if n == 100:
            print(
                f"target: star100 `netharness up` within {UP_COMMAND_RATIO_TARGET:g}x of the "
                f"in-process bring-up: {up_ratio:.2f}x - "
                + verdict(up_ratio <= UP_COMMAND_RATIO_TARGET)
            )
            print(
                f"target: star100 `netharness down` in at most {DOWN_COMMAND_TARGET_MS} ms: "
                f"{down_ms:.0f} ms - {verdict(down_ms <= DOWN_COMMAND_TARGET_MS)}"
            )
    if "mn" in methods:
        mn_cycle = statistics.median(methods["mn"].cycle)
        for key in ("netharness commands", "netharness"):
            if key in methods:
                ratio = mn_cycle / statistics.median(methods[key].cycle)
                how = "as commands, end to end" if key != "netharness" else "in process"
                line = f"{name} mn / {key} (up + down, {how}): {ratio:.2f}x"
                goal = MININET_RATIO_TARGETS.get(n or 0)
                if goal is not None and key == "netharness commands":
                    line = f"target: {line}, at least {goal:g}x - " + verdict(ratio >= goal)
                print(("" if line.startswith("target") else "  ") + line)
    elif n in args.mininet:
        print(f"  mn: not run: {problems['mn']}")
    if (memory := memories.get("netharness")) is not None:
        print(
            f"  memory after bring-up, MiB, median (min-max): controller RSS "
            f"{mib(memory.controller)}; per agent RSS {mib(memory.agent_rss)}, "
            f"PSS {mib(memory.agent_pss)}, USS {mib(memory.agent_uss)}; "
            f"all agents PSS {mib(memory.agents_pss_total)}"
        )
        pss = statistics.median(memory.agent_pss)
        if (n or 0) >= LARGE:
            print(
                f"target: {name} per-agent PSS at most {AGENT_PSS_TARGET_MIB:g} MiB: "
                f"{pss:.2f} MiB - {verdict(pss <= AGENT_PSS_TARGET_MIB)} "
                f"(controller RSS {statistics.median(memory.controller):.1f} MiB)"
            )
    print(flush=True)


def sizes(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    large = [1000] if os.environ.get("NETHARNESS_BENCH_1000") == "1" else []
    parser.add_argument("--stars", type=sizes, default=[10, 100, 500, *large])
    parser.add_argument("--chain", type=int, default=50, help="routers; 0 for none")
    parser.add_argument("--mininet", type=sizes, default=[10, 100])
    parser.add_argument("--commands", type=sizes, default=[10, 100])
    parser.add_argument("--memory", type=sizes, default=[100, 500, *large])
    args = parser.parse_args()
    # The raw baseline holds a namespace fd and a socket per host: 1,000 at 500 hosts.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    problems = {}
    if args.mininet and (problem := mininet_problem()):
        problems["mn"] = problem
    with tempfile.TemporaryDirectory(prefix="nh-bench-") as workdir:
        args.workdir = Path(workdir)  # the topology files the commands are given
        for n in args.stars:
            run_case(f"star{n}", star(n), args, n, problems)
        if args.chain:
            run_case(f"chain{args.chain}", chain(args.chain), args, None, problems)


if __name__ == "__main__":
    main()
