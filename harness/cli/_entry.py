"""The `netharness` entry point: Ctrl-C even while the CLI's modules load exits 130 quietly."""

from __future__ import annotations

import gc


def main() -> int:
    try:
        from harness.cli.main import main as cli_main
    except KeyboardInterrupt:
        return 130
    code = cli_main()
    # The interpreter's last garbage collection walks every object the command made
    # (~60 ms after `up` of 100 hosts); the process ends now, so skip that walk. Exit
    # handlers and finalizers still run.
    gc.freeze()
    return code
