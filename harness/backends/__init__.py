"""Backends, registered by name in one explicit mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.backends.base import Backend
from harness.errors import UsageError


def _netns(**kwargs: Any) -> Backend:
    from harness.backends.netns import NetnsBackend

    return NetnsBackend(kwargs["lab_id"], kwargs["forkserver"], kwargs["record"])


def _docker(**kwargs: Any) -> Backend:
    from harness.backends.docker import DockerBackend

    return DockerBackend(kwargs["lab_id"], kwargs["record"])


def _clean_containers(lab_id: str, entries: list[dict[str, str]]) -> list[str]:
    from harness.backends.docker import remove_recorded

    return remove_recorded(lab_id, entries)


def _ssh(**kwargs: Any) -> Backend:
    from harness.backends.ssh import SshBackend

    return SshBackend(kwargs["lab_id"], kwargs.get("ssh_options"))


BACKENDS: dict[str, Callable[..., Backend]] = {"netns": _netns, "docker": _docker, "ssh": _ssh}

# Ledger entry kind -> what removes a dead lab's objects of that kind (the netns kind is
# the ledger's own). Each returns what it removed; it touches only what the entries name
# and what carries the lab's id.
CLEANERS: dict[str, Callable[[str, list[dict[str, str]]], list[str]]] = {
    "container": _clean_containers,
}


def check_backend_name(name: str) -> None:
    if name not in BACKENDS:
        valid = ", ".join(sorted(BACKENDS))
        raise UsageError(f"unknown backend {name!r}; valid backends: {valid}")


def create_backend(name: str, **kwargs: Any) -> Backend:
    check_backend_name(name)
    return BACKENDS[name](**kwargs)


def clean_recorded(lab_id: str, entries: list[dict[str, str]]) -> list[str]:
    """Remove the backend objects (not namespaces) a lab's ledger names."""
    removed: list[str] = []
    for kind, clean in CLEANERS.items():
        mine = [e for e in entries if e.get("kind") == kind]
        if mine:
            removed += clean(lab_id, mine)
    return removed
