"""harness.lab.progress: events from phases, shown as plain lines or as a rich bar, cheaply."""

from __future__ import annotations

import io
import time

from rich.console import Console

from harness.lab.progress import Display, Event, Phase, guarded, wanted


def test_a_phase_reports_its_start_every_step_and_its_end() -> None:
    events: list[Event] = []
    phase = Phase(events.append, "abc123", "hosts", 3)
    phase.step()
    phase.step()
    phase.finish()
    phase.finish()  # already finished: nothing more
    assert [(e.phase, e.done, e.total) for e in events] == [
        ("hosts", 0, 3),
        ("hosts", 1, 3),
        ("hosts", 2, 3),
        ("hosts", 3, 3),
    ]
    assert events[-1].finished
    assert not events[0].finished
    silent = Phase(None, "abc123", "hosts", 2)  # no callback: it only counts
    silent.step(2)
    assert silent.done == 2


def test_plain_lines_at_start_quarters_and_end_only() -> None:
    out = io.StringIO()
    display = Display(console=Console(file=io.StringIO(), force_terminal=False), plain=out)
    with display:
        assert not display.terminal
        for done in range(101):
            display.callback(Event("abc123", "hosts", done, 100))
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "netharness: lab abc123: hosts created 0/100",
        "netharness: lab abc123: hosts created 25/100",
        "netharness: lab abc123: hosts created 50/100",
        "netharness: lab abc123: hosts created 75/100",
    ]
    assert lines[4].startswith("netharness: lab abc123: hosts created 100/100 in ")
    assert len(lines) == 5
    assert "\x1b[" not in out.getvalue()  # no terminal codes in a CI log


def test_a_terminal_gets_a_bar_per_phase() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    plain = io.StringIO()
    with Display(console=console, plain=plain) as display:
        assert display.terminal
        for phase in ("hosts", "wired"):
            for done in range(51):
                display.callback(Event("abc123", phase, done, 50))
    drawn = screen.getvalue()
    assert "lab abc123: hosts created" in drawn
    assert "lab abc123: hosts wired" in drawn
    assert "50/50" in drawn
    assert "━" in drawn
    assert plain.getvalue() == ""


def test_reporting_costs_microseconds_per_step() -> None:
    # Bring-up reports a few events per host; 500 hosts must not notice (generous bound
    # for a loaded machine: 20,000 events, well under a second in both modes).
    events = [Event("abc123", "hosts", done, 20_000) for done in range(20_000)]
    for console in (Console(file=io.StringIO()), Console(file=io.StringIO(), force_terminal=True)):
        with Display(console=console, plain=io.StringIO()) as display:
            started = time.perf_counter()
            for event in events:
                display.callback(event)
            took = time.perf_counter() - started
        assert took < 1.0, (console.is_terminal, took)


def test_progress_is_shown_for_large_labs_unless_told() -> None:
    assert not wanted(3, None)
    assert wanted(500, None)
    assert wanted(3, True)
    assert not wanted(500, False)


def test_a_failing_callback_stops_progress_not_the_work() -> None:
    calls: list[Event] = []

    def broken(event: Event) -> None:
        calls.append(event)
        raise BrokenPipeError("stderr went away")

    phase = Phase(guarded(broken), "abc123", "removed", 3)  # the start event fails
    phase.step()
    phase.finish()
    assert len(calls) == 1  # nothing more was sent to a callback that failed
    assert phase.done == 3
