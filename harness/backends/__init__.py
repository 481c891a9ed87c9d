"""Backends, registered by name in one explicit mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.backends.base import Backend
from harness.errors import UsageError


def _netns(**kwargs: Any) -> Backend:
    from harness.backends.netns import NetnsBackend

    return NetnsBackend(kwargs["lab_id"], kwargs["forkserver"], kwargs["record"])


BACKENDS: dict[str, Callable[..., Backend]] = {"netns": _netns}


def create_backend(name: str, **kwargs: Any) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        valid = ", ".join(sorted(BACKENDS))
        raise UsageError(f"unknown backend {name!r}; valid backends: {valid}") from None
    return factory(**kwargs)
