"""Bring-up and teardown of container hosts against bare containers made with the SDK.

    python bench/docker_hosts.py [--runs 5] [--sizes 10,50]

(Not bench/docker.py: a script of that name would shadow the docker SDK.)

For each size N, in the same process and in alternating order, each run measures:

- netharness: `Lab.up` of N docker hosts on one network (containers created and started,
  their namespaces named and wired by pyroute2, an agent forked beside each, every
  agent's hello answered), then `down()` until every container is gone;
- bare: N containers of the same image, created and started with the docker SDK from as
  many threads as the lab uses (network_mode none, docker-init and the image's own CMD,
  as the lab's), then removed.

Prints median and min-max per phase, the ratio of the up + down medians (the issue's aim:
under 1.5x), a `target:` line, and a one-line JSON summary at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time
from typing import Any

from harness import Lab
from harness.backends.docker import CREATORS
from harness.core.image import DEFAULT_IMAGE, engine, require
from harness.topology import parse_topology

RATIO_TARGET = 1.5
BENCH_LABEL = "netharness.bench"
# As many threads as the docker backend creates containers from.
THREADS = CREATORS


def star(n: int) -> str:
    hosts = "".join(
        f"  h{i:03d}: {{networks: {{lan: auto}}, backend: docker}}\n" for i in range(1, n + 1)
    )
    return f"name: dstar{n}\nnetworks:\n  lan: {{subnet: 10.0.0.0/16}}\nhosts:\n{hosts}"


def netharness_cycle(n: int) -> tuple[float, float]:
    topology = parse_topology(star(n), f"dstar{n}.yaml")
    started = time.perf_counter()
    lab = Lab.up(topology)
    up = time.perf_counter() - started
    started = time.perf_counter()
    lab.down()
    return up, time.perf_counter() - started


def bare_cycle(client: Any, n: int) -> tuple[float, float]:
    label = f"{os.getpid()}-{time.monotonic_ns()}"

    def make(i: int) -> Any:
        container = client.containers.create(
            DEFAULT_IMAGE,
            name=f"nh-bench-{label}-{i}",
            network_mode="none",
            init=True,
            labels={BENCH_LABEL: label},
            detach=True,
        )
        container.start()
        return container

    made: list[Any] = []
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        try:
            started = time.perf_counter()
            made = list(pool.map(make, range(n)))
            up = time.perf_counter() - started
            started = time.perf_counter()
            list(pool.map(lambda c: c.remove(force=True), made))
            down = time.perf_counter() - started
            made = []
        finally:  # whatever a failed run made, and only that
            leftovers = client.containers.list(
                all=True, ignore_removed=True, filters={"label": f"{BENCH_LABEL}={label}"}
            )
            list(pool.map(lambda c: c.remove(force=True), leftovers))
    return up, down


def spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1000:7.0f} ms "
        f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="10,50")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    client = engine()
    require(client, DEFAULT_IMAGE)
    summary: dict[str, Any] = {"bench": "docker", "runs": args.runs, "threads": THREADS}
    missed = False
    netharness_cycle(2)  # warm: imports, the engine's image cache
    for n in sizes:
        times: dict[str, list[float]] = {
            k: [] for k in ("nh_up", "nh_down", "nh_cycle", "bare_up", "bare_down", "bare_cycle")
        }
        for run in range(args.runs):
            order = ("nh", "bare") if run % 2 == 0 else ("bare", "nh")
            for who in order:
                up, down = netharness_cycle(n) if who == "nh" else bare_cycle(client, n)
                times[f"{who}_up"].append(up)
                times[f"{who}_down"].append(down)
                times[f"{who}_cycle"].append(up + down)
        ratio = statistics.median(times["nh_cycle"]) / statistics.median(times["bare_cycle"])
        up_ratio = statistics.median(times["nh_up"]) / statistics.median(times["bare_up"])
        print(f"docker hosts, N = {n}, {args.runs} runs (median, min-max):")
        print(f"  {'':12} {'bring-up':>24} {'teardown':>24} {'up + down':>24}")
        for who, name in (("nh", "netharness"), ("bare", "bare SDK")):
            print(
                f"  {name:12} {spread(times[who + '_up']):>24} "
                f"{spread(times[who + '_down']):>24} {spread(times[who + '_cycle']):>24}"
            )
        print(f"  netharness / bare: up + down {ratio:.2f}x, bring-up alone {up_ratio:.2f}x")
        met = ratio < RATIO_TARGET
        missed |= not met
        print(
            f"target: {n} container hosts up and down within {RATIO_TARGET}x of bare "
            f"containers: {ratio:.2f}x — {'met' if met else 'missed'}"
        )
        summary[f"n{n}"] = {
            key: round(statistics.median(values), 4) for key, values in times.items()
        } | {"ratio": round(ratio, 3), "up_ratio": round(up_ratio, 3)}
    client.close()
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
