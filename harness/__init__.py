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
)
from harness.topology import Topology, load_topology

if TYPE_CHECKING:
    from harness.lab import Lab, LabHost

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lab pulls in pyroute2 and asyncio; `netharness validate` should not pay for that.
    if name in ("Lab", "LabHost"):
        from harness import lab

        return getattr(lab, name)
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
    "__version__",
    "load_topology",
]
