"""The README's topology examples are valid topologies (its Python runs in integration)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.topology import parse_topology

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_every_yaml_example_in_the_readme_is_a_valid_topology() -> None:
    examples = blocks("yaml")
    assert examples
    for text in examples:
        topology = parse_topology(text, "README.md")
        assert topology.hosts


def test_the_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text
