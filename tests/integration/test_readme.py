"""The README's Python examples run as written, from the repository root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.rootns import lab_namespaces

ROOT = Path(__file__).resolve().parents[2]


def python_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "Lab.up" in b]


@pytest.mark.parametrize("code", python_examples())
def test_readme_python_example_runs(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert not lab_namespaces()  # (another run's labs on a shared machine are not ours)
