"""Backends, registered by name in one explicit mapping; the only code that knows their
names. Each module loads when its backend is first used (docker's SDK is slow to import).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from harness.backends.base import Backend
from harness.errors import UsageError
from harness.topology.model import BACKEND_NAMES

# name -> (module, class); the names are the topology's `backend:` values.
_CLASSES: dict[str, tuple[str, str]] = {
    "netns": ("harness.backends.netns", "NetnsBackend"),
    "docker": ("harness.backends.docker", "DockerBackend"),
    "ssh": ("harness.backends.ssh", "SshBackend"),
}
# name -> the ledger entry kinds its objects are recorded under, besides the namespaces
# every lab records (hostagent.reaper removes those): known here, so that a teardown
# loads only the backends a ledger names (ssh's imports paramiko, ~0.1 s on a Ctrl-C).
RECORDED_KINDS: dict[str, tuple[str, ...]] = {"netns": (), "docker": ("container",), "ssh": ()}
assert tuple(_CLASSES) == BACKEND_NAMES, "a backend the topology format does not name"
assert tuple(RECORDED_KINDS) == BACKEND_NAMES


def backend_class(name: str) -> type[Backend]:
    check_backend_name(name)
    module, attribute = _CLASSES[name]
    cls: type[Backend] = getattr(importlib.import_module(module), attribute)
    return cls


def check_backend_name(name: str) -> None:
    if name not in _CLASSES:
        valid = ", ".join(sorted(_CLASSES))
        raise UsageError(f"unknown backend {name!r}; valid backends: {valid}")


def create_backend(name: str, **kwargs: Any) -> Backend:
    """A backend for one lab. kwargs: `lab_id`, `forkserver`, `record` (writes a ledger
    entry before its object exists), and each backend's own (`ssh_options`)."""
    cls = backend_class(name)
    return cls.for_lab(**kwargs)


def clean_recorded(lab_id: str, entries: list[dict[str, str]]) -> list[str]:
    """Remove the backend objects (not namespaces) a lab's ledger names; only the backends
    whose kinds it has are loaded."""
    removed: list[str] = []
    for name, kinds in RECORDED_KINDS.items():
        mine = [e for e in entries if e.get("kind") in kinds]
        if mine:
            removed += backend_class(name).remove_recorded(lab_id, mine)
    return removed


def recorded_backend(host: Mapping[str, Any]) -> str:
    """The backend of a host as a lab's ledger records it (older ledgers: netns only)."""
    return str(host.get("backend") or "netns")


def run_attached(host: Mapping[str, Any], argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` inside a recorded host (the ledger's `hosts` entry) on this process's
    stdio, for `netharness exec` and `shell`; returns its exit code."""
    cls = backend_class(recorded_backend(host))
    return cls.run_attached(dict(host), argv, env)


def shell_argv(host: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """An interactive shell for `netharness shell` in that host."""
    return backend_class(recorded_backend(host)).shell_argv(env)


__all__ = [
    "Backend",
    "backend_class",
    "check_backend_name",
    "clean_recorded",
    "create_backend",
    "recorded_backend",
    "run_attached",
    "shell_argv",
]
