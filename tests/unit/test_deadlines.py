"""hostagent.net.Deadlines: the one timer a bulk op keeps for everything it has in flight."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from hostagent.net import Deadlines, Timer


class Loop:
    """Just enough of HostAgent for Deadlines: timers that the test fires by hand."""

    def __init__(self) -> None:
        self.timers: list[Timer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(delay, 0.0), callback)
        self.timers.append(timer)
        return timer

    def fire_next(self) -> None:
        live = [t for t in self.timers if not t.cancelled]
        assert live, "no timer armed"
        self.timers = []
        for timer in live:
            timer.callback()


class Item:
    def __init__(self, name: str, deadline: float) -> None:
        self.name = name
        self.deadline = deadline
        self.done = False


def test_an_expiry_that_raises_leaves_the_rest_armed() -> None:
    loop = Loop()
    expired: list[str] = []

    def on_expire(item: Any) -> None:
        item.done = True
        expired.append(item.name)
        if item.name == "a":
            raise RuntimeError("a bug in one probe")

    deadlines = Deadlines(loop, on_expire)  # type: ignore[arg-type]
    now = time.monotonic()
    for name in "abc":
        deadlines.add(Item(name, now - 1))
    with pytest.raises(RuntimeError):  # the agent's loop logs it and goes on
        loop.fire_next()
    loop.fire_next()  # without the re-arm, b and c would wait for ever
    assert expired == ["a", "b", "c"]
    assert not [t for t in loop.timers if not t.cancelled]
