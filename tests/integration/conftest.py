from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _needs_root(needs_root: None) -> None:
    """Every integration test runs real namespaces."""
