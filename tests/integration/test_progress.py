"""Progress of bring-up and teardown: events from a real lab, a bar on a pty, lines in a pipe."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from harness import Lab
from harness.lab.progress import Event

HOSTS = 24  # above the default threshold (20), small enough to stay quick


def topology(tmp_path: Path, count: int = HOSTS) -> Path:
    hosts = "\n".join(f"  h{i:02d}: {{networks: {{lan: auto}}}}" for i in range(count))
    path = tmp_path / "wide.yaml"
    path.write_text(f"name: wide\nnetworks:\n  lan: {{subnet: 10.0.0.0/24}}\nhosts:\n{hosts}\n")
    return path


def test_every_phase_counts_each_host_once(backend: str, tmp_path: Path) -> None:
    events: list[Event] = []
    count = 6  # the library reports for any size; the CLI decides what to show
    with Lab.up(topology(tmp_path, count), backend=backend, progress=events.append) as lab:
        phases = {e.phase for e in events}
        assert phases == {"hosts", "wired", "agents"}
    by_phase: dict[str, list[int]] = {}
    for event in events:
        assert event.lab == lab.id
        by_phase.setdefault(event.phase, []).append(event.done)
    for phase in ("hosts", "wired", "agents"):
        # O(1) per host: a start, one event per host, nothing else.
        assert by_phase[phase] == list(range(count + 1)), phase
    # Teardown: every namespace (the hosts', containers' named too, and the fabric's)
    # counted as it goes.
    namespaces = count + 1
    assert by_phase["removed"] == list(range(namespaces + 1))


def netharness(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness", *args]


def test_cli_plain_lines_when_piped(tmp_path: Path) -> None:
    up = subprocess.run(
        netharness("up", str(topology(tmp_path)), "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["id"]  # stdout stays clean JSON
    down = subprocess.run(
        netharness("down", lab), capture_output=True, text=True, timeout=120, check=False
    )
    assert down.returncode == 0, down.stderr
    for what in ("hosts created", "hosts wired", "agents started"):
        assert f"netharness: lab {lab}: {what} 0/{HOSTS}" in up.stderr
        assert re.search(rf"{what} {HOSTS}/{HOSTS} in \d+\.\d s", up.stderr), up.stderr
    assert re.search(rf"namespaces removed {HOSTS + 1}/{HOSTS + 1} in", down.stderr)
    assert "\x1b[" not in up.stderr + down.stderr
    assert len(up.stderr.splitlines()) <= 3 * 5 + 2  # a few lines per phase, not per host
    quiet = subprocess.run(
        netharness("up", str(topology(tmp_path)), "--json", "--no-progress"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert quiet.returncode == 0, quiet.stderr
    subprocess.run(netharness("down", json.loads(quiet.stdout)["id"]), timeout=120, check=True)
    assert quiet.stderr == ""


def lab_ids() -> set[str]:
    listed = subprocess.run(
        netharness("ls", "--json"), capture_output=True, text=True, timeout=60, check=True
    )
    return {row["id"] for row in json.loads(listed.stdout)}


def test_cli_bar_on_a_terminal(tmp_path: Path) -> None:
    # `script` gives the command a pty, as an engineer's terminal would.
    command = " ".join(netharness("up", str(topology(tmp_path))))
    typescript = tmp_path / "typescript"
    before = lab_ids()
    try:
        done = subprocess.run(
            ["script", "-qec", command, str(typescript)],
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        screen = typescript.read_bytes().decode(errors="replace")
        for lab in lab_ids() - before:  # ours: the screen names it
            if lab in screen:
                subprocess.run(netharness("down", lab), timeout=120, check=True)
    assert done.returncode == 0, screen
    assert re.search(r"lab (\w{6}) is up", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen))
    assert "━" in screen  # rich's bar
    assert "hosts created" in screen
    assert f"{HOSTS}/{HOSTS}" in screen
    assert "netharness: lab" not in screen  # no plain lines on a terminal
