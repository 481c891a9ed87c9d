"""The fuzzer's corpus: inputs worth keeping, replayed through the same property checks.

Every `corpus/<name>.yaml` is loaded as a file (the bare name in messages) and, when it
is UTF-8, parsed as a string too; both go through `check_bytes` / `check_text` of
`test_fuzz_topology` (positions, messages, key paths, time, memory, purity, the model's
invariants) and must agree. A file named `valid_*.yaml` must load; every other one must
be refused. `<name>.expected` holds the exact messages of a case, one per line, as
`str(Problem)` prints them (see corpus/README.md). Print the messages of a case with
`.venv/bin/python -m tests.reliability.test_fuzz_corpus <name> ...`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import TopologyError
from harness.topology import load_topology
from tests.reliability.test_fuzz_topology import (
    check_bytes,
    check_text,
    creating_nothing,
    same_outcome,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))


@pytest.fixture(autouse=True)
def creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each case is a batch: no namespace appears, nothing in NETHARNESS_RUN_DIR."""
    monkeypatch.setenv("NETHARNESS_RUN_DIR", str(tmp_path / "run"))
    with creating_nothing(tmp_path / "run") as run_dir:
        yield run_dir


@pytest.mark.parametrize("case", CASES)
def test_corpus_case(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (CORPUS / f"{case}.yaml").read_bytes()
    monkeypatch.chdir(tmp_path)  # the file is loaded by its bare name, as in the messages
    loaded = check_bytes(raw, Path(f"{case}.yaml"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        parsed = check_text(text, tmp_path / "copy.yaml", filename=f"{case}.yaml")
        assert same_outcome(parsed, loaded)
    if case.startswith("valid_"):
        assert loaded.topology is not None, loaded.problems
    else:
        assert loaded.topology is None
    expected = CORPUS / f"{case}.expected"
    if expected.exists():
        lines = expected.read_text(encoding="utf-8").splitlines()
        assert [str(problem) for problem in loaded.problems] == lines


def test_the_corpus_is_complete() -> None:
    expectations = {p.stem for p in CORPUS.glob("*.expected")}
    assert expectations <= set(CASES), "an .expected file without its .yaml"
    assert len(CASES) >= 30
    assert len(expectations) >= 15
    assert sum(case.startswith("valid_") for case in CASES) >= 4
    assert {p.suffix for p in CORPUS.iterdir()} == {".yaml", ".expected", ".md"}


def messages(case: str) -> list[str]:
    """What loading a corpus case says, with the bare file name (for `.expected` files)."""
    try:
        load_topology(Path(f"{case}.yaml"))
    except TopologyError as exc:
        return [str(problem) for problem in exc.problems]
    return []


if __name__ == "__main__":  # pragma: no cover - a helper for writing .expected files
    import os

    os.chdir(CORPUS)
    for name in sys.argv[1:]:
        print(f"== {name}")
        print("\n".join(messages(name)) or "(loads)")
