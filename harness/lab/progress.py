"""Progress of long work (bring-up, teardown): events from the library, shown by the CLI.

The library never prints. It reports steps to a callback:

    Lab.up(topology, progress=lambda event: ...)    # Event(lab, phase, done, total)

Each phase ("hosts", "wired", "agents", "namespaces", ...) reports `done=0` when it
starts, one event per finished step, and `done == total` when it ends. Reporting is
O(1) per step: a counter and a call. The CLI turns events into a rich progress bar on a
terminal (redrawn by rich's own thread, ten times a second, never per host) or into a
few plain lines in a CI log (no terminal): a phase's start, every quarter, and its end.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, TextIO, TypeVar

if TYPE_CHECKING:  # rich is imported when a Display is made: labs alone never need it
    from rich.console import Console
    from rich.progress import Progress, TaskID

T = TypeVar("T")
MIN_HOSTS = 20  # smaller labs come up in well under a second: no bar, no lines
PLAIN_STEPS = 4  # plain lines per phase besides its start: every quarter
WATCH_INTERVAL = 0.1  # how often `down` reports namespaces removed
# Variables that make rich treat a pipe as a terminal.
FORCING_VARIABLES = frozenset({"FORCE_TERMINAL", "FORCE_COLOR", "TTY_COMPATIBLE"})
POLL_INTERVAL = 0.005  # how often it looks whether the lab is gone: reaping takes ms
# How each phase reads on screen.
DESCRIPTIONS = {
    "hosts": "hosts created",
    "wired": "hosts wired",
    "agents": "agents started",
    "removed": "namespaces removed",
    "suites": "suites run",
}


class Event(NamedTuple):
    """`done` of `total` steps of `phase` of lab `lab` are finished."""

    lab: str
    phase: str
    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done >= self.total


Callback = Callable[[Event], None]


class Phase:
    """Counts one phase's steps and reports them; without a callback it only counts."""

    def __init__(self, callback: Callback | None, lab: str, name: str, total: int) -> None:
        self._callback = callback
        self._lab = lab
        self.name = name
        self.total = total
        self.done = 0
        self._emit()

    def step(self, count: int = 1) -> None:
        self.done += count
        self._emit()

    def finish(self) -> None:
        if self.done < self.total:
            self.done = self.total
            self._emit()

    def _emit(self) -> None:
        if self._callback is not None:
            self._callback(Event(self._lab, self.name, self.done, self.total))

    async def counted(self, work: Awaitable[T]) -> T:
        """Await `work`, then count one step."""
        result = await work
        self.step()
        return result


def guarded(callback: Callback) -> Callback:
    """`callback`, except that if it raises, progress stops and the work goes on: a
    broken progress display (a closed pipe) must never break a bring-up or a teardown."""
    failed = False

    def call(event: Event) -> None:
        nonlocal failed
        if failed:
            return
        try:
            callback(event)
        except Exception:
            failed = True

    return call


class Display:
    """Shows events: a rich bar on a terminal, plain lines otherwise. A context manager;
    use `callback` as Lab.up's `progress=`. Safe to call from any thread."""

    def __init__(self, console: Console | None = None, plain: TextIO | None = None) -> None:
        self._console = console
        self._plain_out = plain or sys.stderr
        self._lock = threading.Lock()
        self._bar: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._plain: dict[tuple[str, str], tuple[int, float]] = {}  # last quarter, start

    @property
    def terminal(self) -> bool:
        if self._console is None:
            # Plain lines need no rich: only import it (~50 ms) when it may draw a bar.
            if not (sys.stderr.isatty() or FORCING_VARIABLES & os.environ.keys()):
                return False
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console.is_terminal

    def __enter__(self) -> Display:
        if self.terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self._console,  # set by `terminal`
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def callback(self, event: Event) -> None:
        key = (event.lab, event.phase)
        if self._bar is not None:
            with self._lock:
                task = self._tasks.get(key)
                if task is None:
                    label = f"lab {event.lab}: {DESCRIPTIONS.get(event.phase, event.phase)}"
                    task = self._tasks[key] = self._bar.add_task(label, total=event.total)
            self._bar.update(task, completed=event.done)  # drawn by rich's refresh thread
            return
        self._plain_line(key, event)

    def _plain_line(self, key: tuple[str, str], event: Event) -> None:
        now = time.monotonic()
        with self._lock:
            last, started = self._plain.get(key, (-1, now))
            quarter = event.done * PLAIN_STEPS // max(event.total, 1)
            if quarter == last:
                return
            self._plain[key] = (quarter, started)
        took = f" in {now - started:.1f} s" if event.finished else ""
        what = DESCRIPTIONS.get(event.phase, event.phase)
        line = f"netharness: lab {event.lab}: {what} {event.done}/{event.total}{took}\n"
        self._plain_out.write(line)
        self._plain_out.flush()


def wanted(hosts: int, choice: bool | None) -> bool:
    """Show progress for this lab? `choice` from --progress/--no-progress, else by size."""
    return choice if choice is not None else hosts >= MIN_HOSTS


@contextmanager
def shown(hosts: int, choice: bool | None) -> Iterator[Callback | None]:
    """A callback for Lab.up(progress=...) that shows progress, or None when not wanted."""
    if not wanted(hosts, choice):
        yield None
        return
    with Display() as display:
        yield display.callback


def watch_removal(
    lab: str, namespaces: list[str], ledger_dir: Path, timeout: float, callback: Callback
) -> bool:
    """Report another process tearing a lab down (`netharness down`): how many of its
    namespaces are gone, until its ledger is gone or the timeout. Returns whether it is."""

    def gone() -> bool:
        return not ledger_dir.exists()

    deadline = time.monotonic() + timeout
    total = len(namespaces)
    callback(Event(lab, "removed", 0, total))
    report = time.monotonic() + WATCH_INTERVAL
    while not gone():
        now = time.monotonic()
        if now > deadline:
            return False
        if now >= report:
            left = sum(1 for path in namespaces if os.path.exists(path))
            callback(Event(lab, "removed", total - left, total))
            report = now + WATCH_INTERVAL
        time.sleep(POLL_INTERVAL)
    callback(Event(lab, "removed", total, total))
    return True
