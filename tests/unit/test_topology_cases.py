"""Every invalid topology in tests/data/bad gives exactly the messages in its .expected file.

The messages name the file by its bare name (see tests/data/bad/README.md). Run this file
directly with case names to print the messages of new cases:
`.venv/bin/python tests/unit/test_topology_cases.py <case> ...`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.errors import TopologyError
from harness.topology import load_topology, parse_topology

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
CASES = sorted(p.stem for p in BAD.glob("*.yaml"))


def messages(case: str) -> list[str]:
    path = BAD / f"{case}.yaml"
    with pytest.raises(TopologyError) as caught:
        parse_topology(path.read_text(encoding="utf-8"), filename=path.name)
    return [str(problem) for problem in caught.value.problems]


def expected(case: str) -> list[str]:
    return (BAD / f"{case}.expected").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("case", CASES)
def test_bad_case_reports_exactly_the_expected_problems(case: str) -> None:
    assert messages(case) == expected(case)


def test_every_case_has_an_expected_file_and_there_are_enough() -> None:
    yamls = {p.stem for p in BAD.glob("*.yaml")}
    expectations = {p.stem for p in BAD.glob("*.expected")}
    assert yamls == expectations
    assert len(yamls) >= 25


def test_several_cases_report_many_problems_at_once() -> None:
    counts = {case: len(expected(case)) for case in CASES}
    assert sum(1 for n in counts.values() if n >= 5) >= 8, counts
    assert counts["many_problems"] >= 15


def test_error_message_is_every_problem_one_per_line() -> None:
    path = BAD / "many_problems.yaml"
    with pytest.raises(TopologyError) as caught:
        parse_topology(path.read_text(encoding="utf-8"), filename=path.name)
    assert str(caught.value).splitlines() == expected("many_problems")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("case", ["many_problems", "yaml_tab", "empty", "unknown_keys"])
def test_load_topology_reports_the_path_as_given(case: str) -> None:
    path = BAD / f"{case}.yaml"
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    lines = [str(problem) for problem in caught.value.problems]
    assert lines == [line.replace(path.name, str(path), 1) for line in expected(case)]
    assert all(problem.file == str(path) for problem in caught.value.problems)


def test_problem_positions_are_one_based_and_inside_the_file() -> None:
    for case in CASES:
        text = (BAD / f"{case}.yaml").read_text(encoding="utf-8")
        lines = text.splitlines() or [""]
        with pytest.raises(TopologyError) as caught:
            parse_topology(text, filename=f"{case}.yaml")
        for problem in caught.value.problems:
            assert 1 <= problem.line <= len(lines), (case, problem)
            assert 1 <= problem.column <= len(lines[problem.line - 1]) + 1, (case, problem)
            assert problem.message, (case, problem)
            assert problem.fix, (case, problem)


if __name__ == "__main__":  # pragma: no cover - a helper for writing new cases
    for name in sys.argv[1:]:
        try:
            source = BAD / f"{name}.yaml"
            parse_topology(source.read_text(encoding="utf-8"), filename=source.name)
        except TopologyError as exc:
            print(exc)
        else:
            print(f"{name}: no problems")
