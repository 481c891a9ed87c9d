"""Bring-up and teardown of a topology on the netns backend: median of N runs.

    python bench/bringup.py topologies/star100.yaml [runs]

Bring-up counts until every host's agent has answered its hello; teardown until the last
namespace is gone. Absolute times drift on shared machines: compare figures from one run.
"""

from __future__ import annotations

import statistics
import sys
import time

from harness import Lab, load_topology


def main(path: str, runs: int) -> None:
    topology = load_topology(path)
    ups, downs = [], []
    for _ in range(runs):
        started = time.perf_counter()
        lab = Lab.up(topology)
        ups.append(time.perf_counter() - started)
        started = time.perf_counter()
        lab.down()
        downs.append(time.perf_counter() - started)
    for name, values in (("bring-up", ups), ("teardown", downs)):
        print(
            f"{topology.name}: {name} of {len(topology.hosts)} hosts: median "
            f"{statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, "
            f"max {max(values) * 1000:.0f}, n={runs})"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
