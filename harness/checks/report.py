"""Showing suite results: a table for people, JSON for scripts. Shared by CLI and demo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.checks.suites import Check

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "error": "bold yellow", "skip": "dim"}


def checks_table(checks: Sequence[Check], title: str = "") -> Table:
    table = Table("suite", "check", "verdict", "observed", title=title or None)
    for check in checks:
        style = VERDICT_STYLE[check.verdict]
        observed = (
            f"{check.observed}\nexpected: {check.expected}" if check.failed else check.observed
        )
        table.add_row(
            check.suite, check.name, f"[{style}]{check.verdict}[/{style}]", escape(observed)
        )
    return table


def summary(checks: Sequence[Check]) -> str:
    counts = {v: sum(c.verdict == v for c in checks) for v in VERDICT_STYLE}
    skipped = f", {counts['skip']} skipped (not applicable)" if counts["skip"] else ""
    return (
        f"{len(checks)} checks: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['error']} errors{skipped}"
    )


def print_checks(console: Console, checks: Sequence[Check], title: str = "") -> None:
    console.print(checks_table(checks, title))
    console.print(summary(checks))


def checks_json(lab_id: str, checks: Sequence[Check]) -> dict[str, Any]:
    return {
        "lab": lab_id,
        "passed": bool(checks) and not any(c.failed for c in checks),
        "summary": summary(checks),
        "checks": [c.to_json() for c in checks],
    }
