"""Fixtures shared by the reliability tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.reliability.support import cpu_hogs


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts: any still running when the test ends (it failed half-way)
    are killed, so a failure cannot leave a controller or its lab to the next test."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture(params=["quiet", "busy"])
def load(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test twice: as the machine is, and with every core busy (a CPU hog per
    core), since CI may run on a loaded machine and the bounds are guarantees."""
    if request.param == "quiet":
        yield "quiet"
        return
    with cpu_hogs():
        yield "busy"
