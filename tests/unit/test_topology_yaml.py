"""Reading YAML: 1.2 scalars, positions, duplicates, aliases, files that cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import Problem, TopologyError
from harness.topology import load_topology, parse_topology
from harness.topology._paths import format_path
from harness.topology._yaml import compose

MINIMAL = "name: t\nhosts: {h1: {}}\n"


def problems(text: str) -> list[Problem]:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, filename="t.yaml")
    return caught.value.problems


def test_yaml_12_scalars_stay_text() -> None:
    doc, found = compose("a: no\nb: yes\nc: 22:22\nd: on\ne: 0x1F\nf: 1_000\ng: 017\nh: ~\n", "t")
    assert found == []
    assert doc is not None
    assert doc.data == {
        "a": "no",
        "b": "yes",
        "c": "22:22",
        "d": "on",
        "e": 31,
        "f": 1000,
        "g": 17,
        "h": None,
    }


def test_keys_are_always_the_text_written() -> None:
    doc, _ = compose("1: a\ntrue: b\nnull: c\n0x10: d\n", "t")
    assert doc is not None
    assert list(doc.data) == ["1", "true", "null", "0x10"]


def test_positions_of_keys_and_values_are_one_based() -> None:
    doc, _ = compose("name: t\nhosts:\n  h1:\n    networks: {lan: auto}\n  h2:\n", "t")
    assert doc is not None
    assert doc.key_pos(("hosts", "h1")) == (3, 3)
    assert doc.value_pos(("hosts", "h1", "networks", "lan")) == (4, 21)
    assert doc.key_pos(("hosts", "h1", "networks", "lan")) == (4, 16)
    assert doc.value_pos(("hosts", "h2")) == (5, 3)  # an empty value points at its key
    assert doc.value_pos(("hosts", "h1", "nope", 3)) == doc.value_pos(("hosts", "h1"))


def test_every_duplicate_key_is_reported_with_both_lines() -> None:
    found = problems("name: t\nname: u\nhosts:\n  h1: {}\n  h1: {}\n  h1: {}\n")
    assert [(p.line, p.column, p.path) for p in found] == [
        (2, 1, "name"),
        (5, 3, "hosts.h1"),
        (6, 3, "hosts.h1"),
    ]
    assert "first on line 4" in found[2].message


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("name: t\nhosts:\n\th1: {}\n", 3, 1, "tab"),
        ("name: t\nhosts: [h1\n", 3, 1, "not valid YAML"),
        ("name: t\nhosts: {h1: {}}\n---\nname: u\n", 3, 1, "another document"),
        ("name: t\nhosts: *nothing\n", 2, 8, "undefined alias"),
        ("name: 'a\x07b'\nhosts: {}\n", 1, 9, "not allowed"),
        ("name: t\n  hosts: {}\n", 2, 8, "not valid YAML"),
    ],
)
def test_syntax_errors_are_one_problem_with_a_position(
    text: str, line: int, column: int, words: str
) -> None:
    (problem,) = problems(text)
    assert (problem.line, problem.column) == (line, column)
    assert words in str(problem)
    assert problem.fix


def test_empty_and_comment_only_files() -> None:
    for text in ("", "\n\n", "# only a comment\n"):
        (problem,) = problems(text)
        assert problem.message == "the file is empty"


@pytest.mark.parametrize("text", ["just text\n", "- a\n- b\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    (problem,) = problems(text)
    assert "top level must be a mapping" in problem.message


def test_merged_keys_point_at_the_anchor_and_written_keys_win() -> None:
    text = """name: t
networks: {lan: {subnet: 10.0.1.0/24}}
hosts:
  h1: &base
    networks: {lan: 10.0.9.1}
    forwarding: 1
  h2:
    networks: {lan: 10.0.8.1}
    <<: *base
"""
    found = [(p.line, p.column, p.path) for p in problems(text)]
    assert found == [
        (5, 21, "hosts.h1.networks.lan"),
        (6, 17, "hosts.h1.forwarding"),
        (6, 17, "hosts.h2.forwarding"),  # merged from h1: reported where it is written
        (8, 21, "hosts.h2.networks.lan"),  # written in h2 itself: wins over the merge
    ]


def test_recursive_alias_and_alias_bombs_are_stopped() -> None:
    (problem,) = [p for p in problems("name: t\nhosts: &a {h1: *a}\n") if "itself" in p.message]
    assert problem.line == 2
    bomb = "name: t\nhosts: {}\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefg":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    found = problems(bomb)
    assert any("expands to more than" in p.message for p in found)


def test_unsupported_tags_are_reported() -> None:
    found = problems("name: t\nhosts: !!set {h1}\n")
    assert any("unsupported YAML tag" in p.message for p in found)


def test_yaml_11_directive_is_refused() -> None:
    (problem,) = problems("%YAML 1.1\n---\n" + MINIMAL)
    assert "%YAML 1.1" in problem.message


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_directive_after_a_byte_order_mark_is_refused_too(version: str) -> None:
    (problem,) = problems(f"\ufeff%YAML {version}\n---\n" + MINIMAL)
    assert f"%YAML {version}" in problem.message
    assert (problem.line, problem.column) == (1, 1)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TopologyError) as caught:
        load_topology(tmp_path / "missing.yaml")
    (problem,) = caught.value.problems
    assert problem.file == str(tmp_path / "missing.yaml")
    assert "cannot read the topology file" in problem.message
    with pytest.raises(TopologyError):
        load_topology(tmp_path)


def test_not_utf8_points_at_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: t\nhosts: {h\xe9: {}}\n")
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (2, 10)
    assert "0xe9" in problem.message


def test_utf8_bom_and_str_path_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_topology(str(path)).name == "t"


def test_path_formatting() -> None:
    assert format_path(("hosts", "h2", "routes", 0, "via")) == "hosts.h2.routes[0].via"
    assert format_path(("hosts", "h", "sysctls", "net.core.somaxconn")) == (
        'hosts.h.sysctls["net.core.somaxconn"]'
    )
    assert format_path(()) == ""


@pytest.mark.parametrize("depth", [30, 600])
def test_deep_nesting_is_a_problem_not_a_crash(depth: int) -> None:
    found = problems("name: t\nhosts: " + "[" * depth + "]" * depth + "\n")
    assert any("nested" in p.message for p in found)


def test_a_redefined_anchor_is_legal_and_raises_no_warning() -> None:
    topo = parse_topology("name: t\nhosts: {h1: &x {}, h2: &x {forwarding: true}, h3: *x}\n")
    assert topo.hosts["h3"].forwarding is True
