"""netharness: test what the transport layer promises, end to end, across many hosts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import (
    AgentError,
    AgentGone,
    BackendError,
    CleanupError,
    EnvironmentProblem,
    HarnessError,
    LabNotFound,
    TopologyError,
    UsageError,
)

if TYPE_CHECKING:
    from harness.lab import Lab, LabHost
    from harness.topology import Topology, load_topology

from harness._version import __version__


def __getattr__(name: str) -> object:
    # Imported on first use: Lab pulls in pyroute2, the topology model pydantic, and
    # `netharness ls`/`clean` (the reaper among them) need neither.
    if name in ("Lab", "LabHost"):
        from harness import lab

        return getattr(lab, name)
    if name in ("Topology", "load_topology"):
        from harness import topology

        return getattr(topology, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


__all__ = [
    "AgentError",
    "AgentGone",
    "BackendError",
    "CleanupError",
    "EnvironmentProblem",
    "HarnessError",
    "Lab",
    "LabHost",
    "LabNotFound",
    "Topology",
    "TopologyError",
    "UsageError",
    "__version__",
    "load_topology",
]
