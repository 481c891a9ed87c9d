from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.rootns import RootSnapshot, snapshot


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests create network namespaces and need root", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched() -> Iterator[RootSnapshot]:
    """Fails the run if anything in the root namespace differs after the session."""
    before = snapshot()
    yield before
    after = snapshot()
    ours = sorted(n for n in after.namespaces - before.namespaces if n.startswith("nh-"))
    assert not before.difference(after), f"root namespace changed: {before.difference(after)}"
    assert not ours, f"lab namespaces left behind: {ours}"
