"""The JSON Schema of topology files, generated from the models the loader validates with."""

from __future__ import annotations

import copy
import functools
from typing import Any

from harness.topology._raw import RawTopology

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def topology_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a topology file; a fresh copy on every call.

    It describes the structure exactly (keys, required keys, types). Rules about values
    that need the whole file (addresses inside subnets, unique names...) are checked by
    `load_topology`; the schema carries the per-value ones as patterns and enums.
    """
    return copy.deepcopy(_schema())


@functools.cache
def _schema() -> dict[str, Any]:
    schema = _rename(RawTopology.model_json_schema())
    assert isinstance(schema, dict)
    return {"$schema": SCHEMA_DIALECT, **schema}


def _rename(node: Any) -> Any:
    """Name definitions as users know them: `Host`, not the internal `RawHost`."""
    if isinstance(node, list):
        return [_rename(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            out[key] = {name.removeprefix("Raw"): _rename(v) for name, v in value.items()}
        elif key == "$ref" and isinstance(value, str):
            out[key] = value.replace("/$defs/Raw", "/$defs/")
        else:
            out[key] = _rename(value)
    return out
