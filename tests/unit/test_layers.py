"""The layers contract (pyproject.toml, `lint-imports`) holds, and fails when broken.

Each case copies the two packages and the contract to a temporary directory, adds one
import there, and runs import-linter on the copy as `make test` runs it on the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy(tmp_path: Path) -> Path:
    for package in ("harness", "hostagent"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=tree,
        env={**os.environ, "COLUMNS": "200"},  # one line per finding
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        # a cycle between two siblings: capture already imports diag
        ("harness/observe/diag.py", "import harness.observe.capture", "No cycles are allowed"),
        # a lower layer reaching up: the ledger asking the lab
        ("harness/core/ledger.py", "import harness.lab.teardown", "is not allowed to import"),
        # one suite borrowing from another instead of from _base
        (
            "harness/checks/suites/ports/_binds.py",
            "import harness.checks.suites.multiplexing",
            "ports is not allowed to import harness.checks.suites.multiplexing",
        ),
        # the agent, which runs in hosts without the controller installed
        ("hostagent/reaper.py", "import harness.errors", "is not allowed to import"),
    ],
)
def test_an_added_import_breaks_a_contract(
    tmp_path: Path, module: str, added: str, broken: str
) -> None:
    tree = _copy(tmp_path)
    with open(tree / module, "a", encoding="utf-8") as f:
        f.write(f"\n{added}  # injected by the test\n")
    result = _lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout
