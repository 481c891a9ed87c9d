from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.rootns import RootSnapshot, snapshot

pytest_plugins = ["pytester"]


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces and needs root", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched() -> Iterator[RootSnapshot]:
    """Fails the run if the root namespace differs after the session: links, addresses,
    routes, namespaces, net sysctls and the nft ruleset, byte for byte."""
    before = snapshot()
    yield before
    after = snapshot()
    assert not before.difference(after), f"root namespace changed: {before.difference(after)}"
