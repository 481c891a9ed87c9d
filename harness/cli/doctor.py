"""`netharness doctor`: what this machine has for each backend and feature, and the fixes."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from harness.core.doctor import Finding, Report

_MARK = {"ok": "ok", "missing": "MISSING", "untested": "untested"}
_GROUPS = {
    "privileges": "privileges",
    "kernel": "kernel (tried in a throwaway network namespace)",
    "tools": "tools (on PATH)",
    "docker": "docker",
    "sysctls": "sysctls",
}


@click.command()
@click.option("--json", "json_out", is_flag=True, help="Print JSON for scripts.")
def doctor(json_out: bool) -> None:
    """Check what each backend and feature needs (privileges, kernel features, tools, the
    Docker engine and host image, sysctls) and print each missing piece with the command
    that fixes it. Exit 0 when the default (netns) backend has all it needs, 3 otherwise."""
    from harness.core.doctor import examine

    report = examine()
    if json_out:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print(report)
    if not report.ready:
        raise SystemExit(3)


def _print(report: Report) -> None:
    from harness.cli._console import out

    width = 14  # longer names (a sysctl's) push their detail along
    for group, title in _GROUPS.items():
        out.print(title, markup=False)
        for finding in (f for f in report.findings if f.group == group):
            out.print(_line(finding, width), markup=False)
    out.print()
    for backend, ready in report.backends().items():
        default = " (the default)" if backend == "netns" else ""
        out.print(f"{backend} backend{default}: {'ready' if ready else 'NOT READY'}")
    if report.missing:
        out.print()
        out.print("to fix:", markup=False)
        for finding in report.missing:
            need = "needed" if finding.required else "optional"
            out.print(f"  {finding.name} ({need}): {finding.fix}", markup=False)
            out.print(f"      without it: {finding.cost}", markup=False)


def _line(finding: Finding, width: int) -> str:
    return f"  {_MARK[finding.status]:<9}{finding.name:<{width}}  {finding.detail}"
