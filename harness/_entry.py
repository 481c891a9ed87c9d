"""The `netharness` entry point: Ctrl-C even while the CLI's modules load exits 130 quietly."""

from __future__ import annotations


def main() -> int:
    try:
        from harness.cli import main as cli_main
    except KeyboardInterrupt:
        return 130
    return cli_main()
