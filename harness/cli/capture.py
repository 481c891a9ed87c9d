"""`netharness capture <lab> <network|host:iface>`: record a running lab's link to a pcap."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click


@click.command()
@click.argument("lab")
@click.argument("target")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The pcap file to write (default: <lab>-<target>.pcap here).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds (default: at Ctrl-C).",
)
def capture(lab: str, target: str, output: Path | None, duration: float | None) -> None:
    """Record a network (`lan`) or a host's interface (`h1:eth0`) of a running lab to a
    pcap file, from the lab's fabric: nothing runs inside the hosts."""
    from harness.cli._console import err, out
    from harness.lab import Lab

    file = output or Path(f"{lab}-{target.replace(':', '.')}.pcap")
    with Lab.attach(lab) as running:
        recording = running.capture(target, file.resolve())
        done = threading.Event()
        # Ctrl-C (and SIGTERM) is how a capture normally ends: finish the file, exit 0.
        previous = {
            sig: signal.signal(sig, lambda *_: done.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            err.print(f"capturing {target} of lab {lab} to {file}; Ctrl-C stops")
            done.wait(duration)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            recording.stop()
    out.print(f"{recording.packets()} packets written to {file}")
