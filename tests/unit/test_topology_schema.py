"""The JSON Schema: well-formed draft 2020-12, and in agreement with the loader.

`jsonschema` is not a dependency, so a small validator below covers the keywords the
generated schema uses; it refuses any keyword it does not know, so the schema cannot
grow a rule these tests silently ignore.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from harness.errors import TopologyError
from harness.topology import BACKEND_NAMES, SYSCTLS, parse_topology, topology_schema
from harness.topology._raw import HOST_NAME_MAX, IFNAME_MAX, NAME_PATTERN

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    [*(ROOT / "topologies").glob("*.yaml"), *(ROOT / "tests/data/good").glob("*.yaml")]
)
BAD = ROOT / "tests" / "data" / "bad"

ANNOTATIONS = {"title", "description", "examples", "default", "$schema"}
KNOWN = ANNOTATIONS | {
    "$defs",
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "oneOf",
    "anyOf",
    "enum",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "pattern",
    "maxLength",
    "propertyNames",
    "minProperties",
}
TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def violations(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str = "") -> list[str]:
    """Where `value` breaks `schema` (a subset of JSON Schema 2020-12)."""
    unknown = set(schema) - KNOWN
    assert not unknown, f"validator does not know {unknown} at {at}"
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return violations(root["$defs"][name], value, root, at)
    found: list[str] = []
    if "type" in schema:
        wanted = TYPES[schema["type"]]
        is_bool = isinstance(value, bool)
        if not isinstance(value, wanted) or (is_bool and wanted is not bool):
            return [f"{at}: not {schema['type']}"]
    for keyword in ("oneOf", "anyOf"):
        if keyword in schema:
            matching = [s for s in schema[keyword] if not violations(s, value, root, at)]
            if not matching or (keyword == "oneOf" and len(matching) > 1):
                found.append(f"{at}: {keyword} matched {len(matching)}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in enum")
    if "minimum" in schema and value < schema["minimum"]:
        found.append(f"{at}: below minimum")
    if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
        found.append(f"{at}: not above the exclusive minimum")
    if "maximum" in schema and value > schema["maximum"]:
        found.append(f"{at}: above maximum")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{at}: {value!r} does not match pattern")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        found.append(f"{at}: too long")
    if isinstance(value, dict):
        found += _object(schema, value, root, at)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += violations(schema["items"], item, root, f"{at}[{i}]")
    return found


def _object(
    schema: dict[str, Any], value: dict[str, Any], root: dict[str, Any], at: str
) -> list[str]:
    found = [f"{at}: missing {key}" for key in schema.get("required", []) if key not in value]
    if len(value) < schema.get("minProperties", 0):
        found.append(f"{at}: too few properties")
    properties = schema.get("properties", {})
    for key, item in value.items():
        if "propertyNames" in schema:
            found += violations(schema["propertyNames"], key, root, f"{at}.{key}(name)")
        if key in properties:
            found += violations(properties[key], item, root, f"{at}.{key}")
        elif schema.get("additionalProperties") is False:
            found.append(f"{at}: unknown key {key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            found += violations(schema["additionalProperties"], item, root, f"{at}.{key}")
    return found


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def all_subschemas(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [s for item in node for s in all_subschemas(item)]
    if not isinstance(node, dict):
        return []
    found = [node]
    for key, value in node.items():
        if key in ("properties", "$defs"):
            found += [s for v in value.values() for s in all_subschemas(v)]
        elif key not in ANNOTATIONS and key != "enum":
            found += all_subschemas(value)
    return found


def test_schema_is_json_and_declares_draft_2020_12() -> None:
    schema = topology_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json.loads(json.dumps(schema)) == schema
    assert schema["type"] == "object"
    assert schema["required"] == ["name", "hosts"]
    assert set(schema["properties"]) == {"name", "networks", "hosts", "expect"}
    assert schema["additionalProperties"] is False


def test_schema_is_structurally_sound() -> None:
    schema = topology_schema()
    for sub in all_subschemas(schema):
        assert set(sub) <= KNOWN, set(sub) - KNOWN
        if "$ref" in sub:
            assert sub["$ref"].startswith("#/$defs/")
            assert sub["$ref"].removeprefix("#/$defs/") in schema["$defs"]
        if "type" in sub:
            assert sub["type"] in TYPES
        if "required" in sub:
            assert set(sub["required"]) <= set(sub["properties"])
        if "pattern" in sub:
            re.compile(sub["pattern"])
        if sub.get("type") == "object" and "properties" in sub:
            assert sub["additionalProperties"] is False  # unknown keys are errors
    assert set(schema["$defs"]) == {
        "Network",
        "Host",
        "Attachment",
        "Route",
        "Service",
        "Firewall",
        "Chain",
        "Rule",
        "Expectation",
        "Ssh",
        "Program",
        "Ready",
    }


def test_every_property_has_a_description_and_examples_are_valid() -> None:
    schema = topology_schema()
    for sub in all_subschemas(schema):
        for name, prop in sub.get("properties", {}).items():
            assert prop.get("description"), name
            for example in prop.get("examples", []):
                assert not violations(prop, example, schema), (name, example)


def test_schema_rules_are_the_loaders_constants() -> None:
    schema = topology_schema()
    hosts = schema["properties"]["hosts"]
    networks = schema["properties"]["networks"]
    assert hosts["propertyNames"] == {"pattern": NAME_PATTERN, "maxLength": HOST_NAME_MAX}
    assert networks["propertyNames"] == {"pattern": NAME_PATTERN, "maxLength": IFNAME_MAX}
    host = schema["$defs"]["Host"]
    assert host["properties"]["sysctls"]["propertyNames"]["enum"] == list(SYSCTLS)
    assert host["properties"]["backend"]["enum"] == list(BACKEND_NAMES)
    port = schema["$defs"]["Service"]["properties"]["port"]
    assert (port["minimum"], port["maximum"]) == (1, 65535)


def test_each_call_returns_a_fresh_copy() -> None:
    first = topology_schema()
    first["properties"].clear()
    assert topology_schema()["properties"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_topology_passes_the_schema(path: Path) -> None:
    schema = topology_schema()
    assert violations(schema, load_yaml(path), schema) == []


@pytest.mark.parametrize(
    "case",
    ["unknown_keys", "wrong_types", "missing_required", "missing_name_and_hosts", "hosts_empty"],
)
def test_structurally_bad_cases_fail_the_schema_too(case: str) -> None:
    schema = topology_schema()
    assert violations(schema, load_yaml(BAD / f"{case}.yaml"), schema)
    with pytest.raises(TopologyError):
        parse_topology((BAD / f"{case}.yaml").read_text(encoding="utf-8"))


def test_the_validator_catches_what_it_claims_to() -> None:
    schema = topology_schema()
    ok: dict[str, Any] = {"name": "x", "hosts": {"h1": {}}}
    assert violations(schema, ok, schema) == []
    assert violations(schema, {**ok, "hosts": {"H1": {}}}, schema)
    assert violations(schema, {**ok, "hosts": {"h1": {"forwarding": 1}}}, schema)
    service = {"proto": "tcp", "port": 0}
    assert violations(schema, {**ok, "hosts": {"h1": {"services": [service]}}}, schema)
    assert violations(schema, {**ok, "hosts": {"h1": {"networks": {"lan": 5}}}}, schema)
    program: dict[str, Any] = {"name": "web", "command": ["httpd", "-p", 80]}
    assert violations(schema, {**ok, "hosts": {"h1": {"run": [program]}}}, schema) == []
    for bad in (
        {"name": "web"},
        {"name": "Web", "command": "httpd"},
        {**program, "command": [True]},
        {**program, "env": {"1A": "x"}},
        {**program, "cwd": "srv"},
        {**program, "ready": {"listen": "tcp/80", "timeout": 0}},
        {**program, "ready": {"timeout": 5}},
    ):
        assert violations(schema, {**ok, "hosts": {"h1": {"run": [bad]}}}, schema), bad
