"""The README's Python examples run as written, from the repository root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from harness import naming
from tests.integration.rootns import foreign_labs

ROOT = Path(__file__).resolve().parents[2]


def python_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "Lab.up" in b]


@pytest.mark.parametrize("code", python_examples())
def test_readme_python_example_runs(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    # Another run's labs on a shared machine are not this example's to clean.
    foreign = foreign_labs()
    left = [n for n in os.listdir("/run/netns") if n.startswith("nh-")]
    assert not [n for n in left if not any(naming.is_lab_netns(lab, n) for lab in foreign)]
