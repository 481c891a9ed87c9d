"""Topologies: the YAML format, its validation (every problem, file:line:col) and model.

    load_topology(path)          read a file; TopologyError lists every problem
    parse_topology(text, name)   the same from a string
    topology_schema()            the JSON Schema of the format (draft 2020-12)

The result is an immutable, fully resolved `Topology` (see `harness.topology.model`).
"""

from __future__ import annotations

from harness.topology._load import load_topology, parse_topology
from harness.topology._sysctls import SYSCTLS
from harness.topology.model import (
    BACKEND_NAMES,
    DEFAULT_BACKEND,
    Chain,
    Expectation,
    Firewall,
    FirewallRule,
    Host,
    Interface,
    Network,
    ProbeState,
    Program,
    Ready,
    Route,
    Service,
    SshTarget,
    Topology,
)
from harness.topology.schema import topology_schema

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_BACKEND",
    "SYSCTLS",
    "Chain",
    "Expectation",
    "Firewall",
    "FirewallRule",
    "Host",
    "Interface",
    "Network",
    "ProbeState",
    "Program",
    "Ready",
    "Route",
    "Service",
    "SshTarget",
    "Topology",
    "load_topology",
    "parse_topology",
    "topology_schema",
]
