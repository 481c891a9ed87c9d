"""The lab's lifecycle: `Lab` (bring-up, teardown, detach), the fabric of networks, the
firewall, progress events and the one teardown path from a ledger.

`Lab` and `LabHost` load on first use: `harness.lab.progress` and `harness.lab.teardown`
serve `netharness down`/`clean`, which must not pay for pyroute2 and asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.lab._lab import Lab, LabHost
    from harness.lab.runtime import CommandResult


def __getattr__(name: str) -> object:
    if name in ("Lab", "LabHost"):
        from harness.lab import _lab

        return getattr(_lab, name)
    if name == "CommandResult":
        from harness.lab.runtime import CommandResult

        return CommandResult
    raise AttributeError(f"module 'harness.lab' has no attribute {name!r}")


__all__ = ["CommandResult", "Lab", "LabHost"]
