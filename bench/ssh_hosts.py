"""SSH hosts: how fast an agent starts and a command runs on a machine reached over SSH.

    python bench/ssh_hosts.py [--runs 30] [--old-runs 5] [--labs 3]

Real OpenSSH servers in a netns lab (tests/integration/sshd.py, the tests' own), reached
through a socket made in its `ctl` host. In one process, one lab with one ssh host up:

- agent start: `host.agent()` until the new agent's hello has arrived (a fork of the
  machine's helper, over the lab's SSH session), then its first `info()` round trip;
- host.run: `host.run(["true"])`, from request to exit status and output's end;
- session floor: `exec_command("true")` on a new session of an open paramiko connection to
  the same sshd, to its exit status: what any process cost when each had its own session;
- old agent: `python3` importing the agent from a zipapp of sources on its own session,
  until its hello (how agents started before the helper; --old-runs times, it is slow);
- local agent start, local host.run: the same on a namespace host of this machine (the
  sshd lab's `ctl`, through the lab's own fork server), for "as quick as local ones";

the fast five alternating in rotating order. Then --labs bring-ups and teardowns of a
one-host lab (connect, private directory, upload, helper start, relay start).

Prints median (min-max) of each, ratios to the session floor, `target:` lines (agent
start and host.run at most 50 ms, the issue's aim) and a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from harness import Lab, LabHost
from harness.core import _ssh
from hostagent import build_zipapp
from tests.integration.sshd import SshdLab

TARGET = 0.050
OLD_LAUNCH = (  # the per-agent start this backend had: a python3 per agent and session
    "import sys; sys.path.insert(0, sys.argv[1]); import hostagent.agent as a; "
    "sys.exit(a.serve(0, 1))"
)


def agent_start(host: LabHost, rtt: list[float]) -> float:
    started = time.perf_counter()
    agent = host.agent()
    took = time.perf_counter() - started
    asked = time.perf_counter()
    agent.info()
    rtt.append(time.perf_counter() - asked)
    agent.close()
    return took


def run_true(host: LabHost) -> float:
    started = time.perf_counter()
    result = host.run(["true"])
    took = time.perf_counter() - started
    assert result.returncode == 0, result
    return took


def session_true(client: paramiko.SSHClient) -> float:
    started = time.perf_counter()
    status, _, _ = _ssh.run(client, "a", "true")
    took = time.perf_counter() - started
    assert status == 0
    return took


def old_agent(client: paramiko.SSHClient, zipapp: str) -> float:
    transport = client.get_transport()
    assert transport is not None
    started = time.perf_counter()
    channel = transport.open_session()
    try:
        channel.exec_command(f"exec python3 -c {shlex.quote(OLD_LAUNCH)} {shlex.quote(zipapp)}")
        hello = channel.makefile("rb").readline()
        took = time.perf_counter() - started
        assert b'"hello"' in hello, hello
    finally:
        channel.close()
    return took


def old_zipapp(client: paramiko.SSHClient, directory: str) -> str:
    """The agent as it was uploaded before: sources only (compiled at every start)."""
    with tempfile.TemporaryDirectory(prefix="nh-bench-ssh-") as tmp:
        built = build_zipapp(Path(tmp) / "old-agent.pyz")
        with client.open_sftp() as sftp:
            sftp.put(str(built), f"{directory}/old-agent.pyz")  # goes with the directory
    return f"{directory}/old-agent.pyz"


def spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1000:8.1f} ms "
        f"({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"
    )


def lab_cycles(topology: Any, options: dict[str, Any], labs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"bring-up": [], "teardown": []}
    for _ in range(labs):
        started = time.perf_counter()
        lab = Lab.up(topology, backend_options=options)
        times["bring-up"].append(time.perf_counter() - started)
        started = time.perf_counter()
        lab.down()
        times["teardown"].append(time.perf_counter() - started)
    return times


def measure(sshd: SshdLab, runs: int, old_runs: int) -> dict[str, list[float]]:
    topology = sshd.topology(hosts=("a",))
    options = {"ssh_options": sshd.options()}
    names = ("agent start", "agent info", "host.run", "local agent start", "local host.run")
    times: dict[str, list[float]] = {k: [] for k in (*names, "session floor", "old agent")}
    assert sshd.lab is not None
    local = sshd.lab.hosts["ctl"]
    spec = topology.hosts["a"].ssh
    assert spec is not None
    client = _ssh.open_client("a", spec, sshd.options())
    try:
        with Lab.up(topology, backend_options=options) as lab:
            host = lab.hosts["a"]
            zipapp = old_zipapp(client, host.handle.details["dir"])
            probes: list[tuple[str, Callable[[], float]]] = [
                ("agent start", lambda: agent_start(host, times["agent info"])),
                ("host.run", lambda: run_true(host)),
                ("local agent start", lambda: agent_start(local, [])),
                ("local host.run", lambda: run_true(local)),
                ("session floor", lambda: session_true(client)),
            ]
            for _, probe in probes:  # warm: first forks, first session
                probe()
            times["agent info"].clear()
            for run in range(runs):
                turn = run % len(probes)
                for name, probe in probes[turn:] + probes[:turn]:
                    times[name].append(probe())
            times["old agent"] = [old_agent(client, zipapp) for _ in range(old_runs)]
    finally:
        client.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--old-runs", type=int, default=5)
    parser.add_argument("--labs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nh-bench-ssh-") as tmp, SshdLab(Path(tmp)) as sshd:
        times = measure(sshd, args.runs, args.old_runs)
        cycles = lab_cycles(sshd.topology(hosts=("a",)), {"ssh_options": sshd.options()}, args.labs)
    floor = statistics.median(times["session floor"])
    print(f"one ssh host, {args.runs} runs ({args.old_runs} of the old agent), median (min-max):")
    for name, values in times.items():
        ratio = statistics.median(values) / floor
        print(f"  {name:17} {spread(values):>27}   {ratio:5.2f}x the session floor")
    for name in ("agent start", "host.run"):
        ratio = statistics.median(times[name]) / statistics.median(times[f"local {name}"])
        print(f"  ssh {name} / local {name}: {ratio:.2f}x")
    print(f"one-host ssh lab, {args.labs} cycles:")
    for name, values in cycles.items():
        print(f"  {name:17} {spread(values):>27}")
    missed = False
    for name in ("agent start", "host.run"):
        median = statistics.median(times[name])
        met = median <= TARGET
        missed |= not met
        print(
            f"target: ssh {name} at most {TARGET * 1000:.0f} ms: median {median * 1000:.1f} ms "
            f"({min(times[name]) * 1000:.1f}-{max(times[name]) * 1000:.1f}), "
            f"{median / floor:.2f}x a bare session's `true` — {'met' if met else 'missed'}"
        )
    summary = {"bench": "ssh_hosts", "runs": args.runs}
    summary |= {k: round(statistics.median(v), 5) for k, v in (times | cycles).items()}
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
