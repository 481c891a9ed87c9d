"""The transport suites. Each takes a running lab and returns one `Check` per claim.

    from harness.checks.suites import run_suite
    checks = run_suite("five_tuple", lab, clients=["h1", "h2"], server="h3")

Registered in one explicit mapping; `all` runs them in this order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from harness.checks.suites._base import Check, Recorder, Roles, pick_roles, target_address
from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.lab import Lab


def _multiplexing() -> ModuleType:
    from harness.checks.suites import multiplexing

    return multiplexing


def _five_tuple() -> ModuleType:
    from harness.checks.suites import five_tuple

    return five_tuple


def _ports() -> ModuleType:
    from harness.checks.suites import ports

    return ports


# Imported on use: the CLI lists suites without loading them.
SUITES: dict[str, Callable[[], ModuleType]] = {
    "multiplexing": _multiplexing,
    "five_tuple": _five_tuple,
    "ports": _ports,
}


def suite_module(name: str) -> ModuleType:
    """The module of a suite, by name (`five-tuple` is accepted for `five_tuple`)."""
    key = name.replace("-", "_")
    if key not in SUITES:
        raise UsageError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}, all")
    return SUITES[key]()


def expand(name: str) -> list[str]:
    """`all` → every suite, anything else → that suite (validated)."""
    if name == "all":
        return list(SUITES)
    suite_module(name)
    return [name.replace("-", "_")]


def checks_of(name: str) -> Sequence[str]:
    return tuple(suite_module(name).CHECKS)


def suite_options(name: str) -> set[str]:
    """The options a suite's `run` takes besides the lab (server and clients included)."""
    import inspect

    parameters = inspect.signature(suite_module(name).run).parameters
    keyword = inspect.Parameter.VAR_KEYWORD
    return {p for p in parameters if p != "lab" and parameters[p].kind != keyword}


def run_suite(name: str, lab: Lab, **options: Any) -> list[Check]:
    runner: Callable[..., list[Check]] = suite_module(name).run
    return runner(lab, **options)


__all__ = [
    "SUITES",
    "Check",
    "Recorder",
    "Roles",
    "checks_of",
    "expand",
    "pick_roles",
    "run_suite",
    "suite_options",
    "suite_module",
    "target_address",
]
