"""Rootless bring-up against root mode: star100, the same code in both, side by side.

    python bench/rootless.py [--topology topologies/star100.yaml] [--rounds 5] [--labs 3]

Each round starts two child processes in turn (the order rotates): one as root, one with
NETHARNESS_ROOTLESS=1, which runs its labs in a user namespace of its own exactly as an
ordinary user's would (harness.core.userns). Each child imports netharness, then brings
`--labs` labs of star100 (or --topology) up (`Lab.up` until every agent has answered)
and down in turn, timing each `Lab.up`. Its first lab pays for the user namespace's
creation (unshare, a tmpfs on /run, the real /run's entries bound back: once per
process) and the fork server's interpreter start, as every lab's first bring-up in a
process does. Reported: the median bring-up over all labs of each mode, its spread, and
the ratio (target: rootless within 1.2x of root).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.2

CHILD = """
import json, sys, time
from harness import Lab, load_topology
topology, labs = load_topology(sys.argv[1]), int(sys.argv[2])
times = []
for _ in range(labs):
    started = time.perf_counter()
    lab = Lab.up(topology)
    times.append(time.perf_counter() - started)
    lab.down()
print(json.dumps(times))
"""


def child(topology: Path, labs: int, rootless: bool) -> list[float]:
    env = dict(os.environ)
    env.pop("NETHARNESS_ROOTLESS", None)
    if rootless:
        env["NETHARNESS_ROOTLESS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(topology), str(labs)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bring-up ({'rootless' if rootless else 'root'}) failed:\n{done.stderr}")
    times: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", type=Path, default=ROOT / "topologies" / "star100.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--labs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/rootless.py compares with root mode: run it as root")
    modes = {"root": [], "rootless": []}  # type: dict[str, list[float]]
    for round_ in range(args.rounds):
        order = ["root", "rootless"] if round_ % 2 == 0 else ["rootless", "root"]
        for mode in order:
            modes[mode] += child(args.topology, args.labs, mode == "rootless")
    name = args.topology.stem
    print(f"# {name} bring-up, {args.rounds} rounds x {args.labs} labs per mode")
    print("mode      median   min..max")
    for mode, times in modes.items():
        print(
            f"{mode:<9} {statistics.median(times) * 1000:6.0f} ms "
            f"{min(times) * 1000:.0f}..{max(times) * 1000:.0f} ms"
        )
    ratio = statistics.median(modes["rootless"]) / statistics.median(modes["root"])
    met = ratio <= TARGET
    print(
        f"target: {name} rootless bring-up within {TARGET}x of root: "
        f"{ratio:.2f}x — {'met' if met else 'missed'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
