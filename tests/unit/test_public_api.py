"""The public surface is pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import subprocess
import sys

import harness


def test_exported_names() -> None:
    assert sorted(harness.__all__) == [
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
    for name in harness.__all__:
        assert getattr(harness, name) is not None


def test_errors_form_one_tree() -> None:
    for name in (
        "AgentError",
        "AgentGone",
        "BackendError",
        "CleanupError",
        "EnvironmentProblem",
        "LabNotFound",
        "TopologyError",
        "UsageError",
    ):
        assert issubclass(getattr(harness, name), harness.HarnessError)


def test_importing_harness_does_not_load_netlink() -> None:
    # `netharness validate` and `schema` must stay fast and work without root.
    code = "import sys, harness; print('pyroute2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
