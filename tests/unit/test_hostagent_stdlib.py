"""The host agent ships alone: standard library only, Python 3.9 syntax, one zipapp file."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hostagent

PACKAGE = Path(hostagent.__file__).resolve().parent
SOURCES = sorted(PACKAGE.glob("*.py"))


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            assert node.module is not None
            names.add(node.module)
    return names


def test_the_package_has_the_expected_modules() -> None:
    names = {path.name for path in SOURCES}
    assert {"__init__.py", "__main__.py", "agent.py", "protocol.py", "ops.py", "net.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_imports_only_the_standard_library(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    outside = {
        name
        for name in imported_modules(tree)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in ("hostagent", "__future__")
    }
    assert outside == set()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_parses_as_python_3_9(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Match)]
    # PEP 604 unions are only safe where annotations stay strings
    first = next(n for n in tree.body if not isinstance(n, ast.Expr))
    assert isinstance(first, ast.ImportFrom)
    assert first.module == "__future__"
    assert [alias.name for alias in first.names] == ["annotations"]


def test_the_agent_does_not_import_the_controller() -> None:
    code = "import hostagent.agent, sys; print(sorted(m.split('.')[0] for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.replace("'", '"')))
    assert "hostagent" in loaded
    assert "harness" not in loaded


def test_build_zipapp_runs_alone(tmp_path: Path) -> None:
    built = hostagent.build_zipapp(tmp_path)
    assert built == tmp_path / hostagent.ZIPAPP_NAME
    assert built.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(built, os.X_OK)
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
    assert "__main__.py" in names
    assert "hostagent/agent.py" in names
    # ssh machines run the fork server behind hostagent.remote
    assert {"hostagent/forkserver.py", "hostagent/remote.py", "hostagent/frames.py"} <= names
    assert not [name for name in names if name.startswith("harness")]
    # -I -S: no site-packages, no current directory: only what the file carries.
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(built)],
        input=b'{"id": 1, "op": "info"}\n',
        capture_output=True,
        cwd=tmp_path,
        timeout=10,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    hello, reply = (json.loads(line) for line in proc.stdout.splitlines())
    assert hello["event"] == "hello"
    assert hello["agent"] == "netharness-hostagent"
    assert reply["result"]["pid"] == hello["pid"]


def test_build_zipapp_to_a_file_name_replaces_it(tmp_path: Path) -> None:
    target = tmp_path / "agent.pyz"
    target.write_text("old")
    assert hostagent.build_zipapp(target) == target
    assert zipfile.is_zipfile(target)
    assert [p.name for p in tmp_path.iterdir()] == ["agent.pyz"]  # no temporary left behind


def test_the_controller_sends_the_fork_server_no_more_fds_than_it_reads() -> None:
    from harness.backends import _forkserver
    from hostagent import forkserver

    assert _forkserver.MAX_FDS == forkserver.MAX_FDS


def test_owners_name_agents_as_the_fork_server_names_them() -> None:
    from hostagent import forkserver, owners

    assert forkserver.AGENT_COMM.decode() == owners.AGENT_COMM


WHERE_FROM = (
    "import sys; sys.path.insert(0, sys.argv[1]); import hostagent.agent as a; print(a.__file__)"
)


def test_a_zipapp_with_bytecode_is_imported_from_it_by_the_same_python(tmp_path: Path) -> None:
    built = hostagent.build_zipapp(tmp_path / "agent.pyz", bytecode=True)
    run = [sys.executable, "-I", "-c", WHERE_FROM, str(built)]
    found = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    assert found == f"{built}/hostagent/agent.pyc"  # nothing compiled at start


def test_another_python_takes_the_sources_of_a_zipapp_with_bytecode(tmp_path: Path) -> None:
    built = hostagent.build_zipapp(tmp_path / "agent.pyz", bytecode=True)
    other = tmp_path / "other.pyz"  # its bytecode as another version's: a magic not ours
    with zipfile.ZipFile(built) as source, zipfile.ZipFile(other, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(
                item, b"\0\0\r\n" + data[4:] if item.filename.endswith(".pyc") else data
            )
    run = [sys.executable, "-I", "-c", WHERE_FROM, str(other)]
    found = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    assert found == f"{other}/hostagent/agent.py"
