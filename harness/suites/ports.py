"""The ports suite (being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.suites._base import Check, Recorder

if TYPE_CHECKING:
    from harness.lab import Lab

NAME = "ports"
CHECKS: tuple[str, ...] = ()


def run(lab: Lab, **options: Any) -> list[Check]:
    return Recorder(NAME, CHECKS).results()
