"""Run every benchmark in bench/ and write BENCHMARKS.md (what `make bench` does).

    python bench/report.py [--output BENCHMARKS.md] [--only bringup,connections]

A benchmark is a bench/*.py script with a `__main__` block; each runs in its own process
with its defaults, and its output goes into BENCHMARKS.md as printed. Lines it prints
that start with `target:` are also collected into the summary at the top, so a target
missed anywhere shows first. A benchmark that fails is reported with its exit status and
the end of its error output; the others still run, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
FIRST = ["bringup", "reaping", "connections", "probe", "docker_hosts"]  # the rest follow by name
TIMEOUT = 600.0


@dataclass
class Outcome:
    name: str
    output: str
    seconds: float
    failure: str | None


def benchmarks() -> list[str]:
    found = {
        path.stem
        for path in BENCH.glob("*.py")
        if path.stem != "report" and '__name__ == "__main__"' in path.read_text()
    }
    return [n for n in FIRST if n in found] + sorted(found - set(FIRST))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total_kib = int(f.readline().split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return [
        f"- CPU: {model}, {os.cpu_count()} logical cores",
        f"- kernel: {platform.release()}; memory: {total_kib / 1024 / 1024:.1f} GiB",
        f"- load average at start (1, 5, 15 min): {load()}",
        f"- Python {platform.python_version()}; commit {commit or 'unknown'}",
    ]


def run(name: str) -> Outcome:
    """Run one benchmark, echoing its output as it comes (a full run takes minutes)."""
    print(f"== bench/{name}.py", file=sys.stderr, flush=True)
    started = time.perf_counter()
    lines = []
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(
            [sys.executable, str(BENCH / f"{name}.py")],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=ROOT,
        ) as process:
            timer = threading.Timer(TIMEOUT, process.kill)
            timer.start()
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    sys.stderr.write(line)
                    lines.append(line)
            finally:
                timer.cancel()
        errors.seek(0)
        error_text = errors.read()
    failure = None
    output = "".join(lines)
    missed_only = not error_text.strip() and re.search(r"^target:.*missed$", output, re.I | re.M)
    if process.returncode == 1 and missed_only:
        pass  # it says so itself: exit status 1 for a missed target is no failure to run
    elif process.returncode != 0:
        sys.stderr.write(error_text)
        why = f"killed after {TIMEOUT:g} s" if process.returncode == -9 else "exit status"
        tail = "\n".join(error_text.strip().splitlines()[-8:])
        failure = f"{why} {process.returncode}:\n{tail}"
    return Outcome(name, output, time.perf_counter() - started, failure)


def render(started: datetime.datetime, header: list[str], outcomes: list[Outcome]) -> str:
    total = sum(o.seconds for o in outcomes)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (bench/report.py) on {started:%Y-%m-%d %H:%M} UTC in "
        f"{total / 60:.1f} min. Every figure is the median of the runs with (min-max); "
        "every comparison was measured side by side in the same run. Absolute times "
        "drift with the machine's load; trust the ratios. How each figure is taken is "
        "in the docstring of its script in bench/.",
        "",
        "## Machine",
        "",
        *header,
        "",
        "## Targets",
        "",
    ]
    targets = [
        (o.name, line.removeprefix("target:").strip())
        for o in outcomes
        for line in o.output.splitlines()
        if line.startswith("target:")
    ]
    lines += [f"- {text} (bench/{name}.py)" for name, text in targets] or ["- none reported"]
    lines += [f"- bench/{o.name}.py FAILED: see below" for o in outcomes if o.failure]
    for outcome in outcomes:
        lines += ["", f"## bench/{outcome.name}.py ({outcome.seconds:.0f} s)", ""]
        if outcome.output.strip():
            lines += ["```", outcome.output.rstrip(), "```"]
        if outcome.failure:
            lines += ["", "**Failed**, " + outcome.failure.split("\n", 1)[0], ""]
            lines += ["```", *outcome.failure.splitlines()[1:], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args()
    names = benchmarks()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"no such benchmark: {', '.join(unknown)}; have {', '.join(names)}")
            return 2
        names = [n for n in names if n in wanted]
    started = datetime.datetime.now(datetime.UTC)
    header = machine()
    outcomes = [run(name) for name in names]
    header.insert(3, f"- load average at the end: {load()}")
    text = render(started, header, outcomes)
    Path(args.output).write_text(re.sub(r"[ \t]+\n", "\n", text), encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if any(o.failure for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
