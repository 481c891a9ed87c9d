"""Truth tables for people: one row per (source, target, family), one column per port.

On a terminal it is a rich table with colours; anywhere else (a pipe, a CI log) the same
grid as plain aligned text. A cell that did not match its expectation is marked `✗` and
shows what was expected; below the grid every mismatch gets its reason and the
`netharness probe` command that reproduces it. JSON for scripts is
`CheckReport.to_json()` or `matrix_json()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.checks.probe import CheckReport, ProbeResult, Verdict, reproduce_command

STATE_STYLE = {"open": "green", "closed": "blue", "filtered": "yellow", "open|filtered": "magenta"}
MISMATCH = "✗"

Row = tuple[str, str, int]  # source, target, family
Column = tuple[int, str]  # port, proto


def _grid(
    results: Sequence[ProbeResult], verdicts: Sequence[Verdict | None]
) -> tuple[list[Row], list[Column], dict[tuple[Row, Column], tuple[ProbeResult, Verdict | None]]]:
    rows: dict[Row, None] = {}
    columns: dict[Column, None] = {}
    cells = {}
    for result, verdict in zip(results, verdicts, strict=True):
        row = (result.source, result.target, result.family)
        column = (result.port, result.proto)
        rows[row] = None
        columns[column] = None
        cells[(row, column)] = (result, verdict)
    return list(rows), sorted(columns, key=lambda c: (c[1], c[0])), cells


def _cell_text(result: ProbeResult, verdict: Verdict | None) -> tuple[str, str]:
    """(plain text, rich markup) of one cell."""
    if verdict is None:
        style = STATE_STYLE.get(result.state, "")
        return result.state, f"[{style}]{escape(result.state)}[/{style}]"
    if not verdict.passed:
        text = f"{MISMATCH} {result.state} (want {verdict.expected})"
        if verdict.owner is not None and result.state == verdict.expected:
            text = f"{MISMATCH} {result.state} (not by {verdict.owner.process})"
        return text, f"[bold red]{escape(text)}[/bold red]"
    if verdict.retries:
        text = f"{result.state} (retried {verdict.retries})"
        return text, f"[yellow]{escape(text)}[/yellow]"
    style = STATE_STYLE.get(result.state, "")
    return result.state, f"[{style}]{escape(result.state)}[/{style}]"


def print_table(
    console: Console,
    results: Sequence[ProbeResult],
    verdicts: Sequence[Verdict | None] | None = None,
    title: str = "",
) -> None:
    """The grid of `results` (checked against `verdicts` where given)."""
    marks = list(verdicts) if verdicts is not None else [None] * len(results)
    rows, columns, cells = _grid(results, marks)
    headers = ["from", "to", *(f"{port}/{proto}" for port, proto in columns)]
    if any(family == 6 for _s, _t, family in rows):
        headers.insert(2, "ip")
    grid: list[list[tuple[str, str]]] = []
    for row in rows:
        line = [(row[0], escape(row[0])), (row[1], escape(row[1]))]
        if len(headers) > len(columns) + 2:
            line.append((f"v{row[2]}", f"v{row[2]}"))
        for column in columns:
            found = cells.get((row, column))
            line.append(_cell_text(*found) if found else ("", ""))
        grid.append(line)
    if console.is_terminal:
        table = Table(*headers, title=title or None)
        for line in grid:
            table.add_row(*(markup for _plain, markup in line))
        console.print(table)
        return
    if title:
        console.print(title, markup=False, highlight=False)
    widths = [len(h) for h in headers]
    for line in grid:
        widths = [max(w, len(plain)) for w, (plain, _m) in zip(widths, line, strict=True)]
    for texts in [headers, *([plain for plain, _m in line] for line in grid)]:
        padded = "  ".join(t.ljust(w) for t, w in zip(texts, widths, strict=True))
        console.print(padded.rstrip(), markup=False, highlight=False)


def print_check(console: Console, report: CheckReport, lab_gone: bool = False) -> None:
    """The checked truth table, every mismatch with its reproducing command, a summary."""
    print_table(
        console,
        [v.result for v in report.verdicts],
        list(report.verdicts),
        title=f"lab {report.lab}: expected vs observed",
    )
    failed = report.failed
    if failed:
        console.print()
        console.print(f"{len(failed)} mismatch{'es' if len(failed) != 1 else ''}:", markup=False)
        if lab_gone:
            console.print(
                "  (the lab is down now: `netharness up` the file, then use its id as LAB)",
                markup=False,
            )
        for verdict in failed:
            result = verdict.result
            where = f"line {verdict.line}: " if verdict.line else ""
            lab = "LAB" if lab_gone else report.lab
            if verdict.owner is not None and result.state == verdict.expected:
                console.print(
                    f"  {MISMATCH} {where}{result.cell} ({result.address}): expected "
                    f"{verdict.expected}, accepted by {verdict.owner.process} — "
                    f"{verdict.owner.problem}\n"
                    f"    see: netharness ps {lab} {result.target} --all",
                    markup=False,
                    highlight=False,
                )
                continue
            console.print(
                f"  {MISMATCH} {where}{result.cell} ({result.address}): expected "
                f"{verdict.expected}, observed {result.state} — {result.reason} "
                f"(after {verdict.retries} retr{'y' if verdict.retries == 1 else 'ies'})\n"
                f"    reproduce: {reproduce_command(lab, result, verdict.address_given)}",
                markup=False,
                highlight=False,
            )
    _print_services(console, report)
    console.print(report.summary(), markup=False)


def _print_services(console: Console, report: CheckReport) -> None:
    """Each `process:` service: who holds its listeners, or what is wrong."""
    if not report.services:
        return
    console.print()
    console.print("process services:", markup=False)
    for service in report.services:
        owner = service.owner
        if owner.passed:
            holders = ", ".join(sorted({f"pid {o.pid}" for o in owner.holders}))
            text = f"  ok {service.label}: held by {owner.process} ({holders})"
        else:
            text = f"  {MISMATCH} {service.label}: {owner.problem}"
        console.print(text, markup=False, highlight=False)


def matrix_json(lab_id: str, results: Sequence[ProbeResult]) -> dict[str, Any]:
    return {"lab": lab_id, "cells": [r.to_json() for r in results]}
