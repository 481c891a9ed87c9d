"""The wheel works anywhere: built, pip-installed into a fresh venv outside the checkout
(dependencies from PyPI), and run from a user's directory: `--version`, `doctor`, `up`,
`check`, `suite all`, `down`, the agent zipapp, and pytest with the plugin's `lab`
fixture on a user's test file."""

from __future__ import annotations

import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from harness._version import __version__
from tests.integration.installed import BUILD_TIMEOUT, build_dists, copy_project, run, user_env

# Three hosts (the multiplexing suite wants two clients), a service, a firewall: nft runs
# through the installed fork server.
TOPOLOGY = """\
name: trio
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
hosts:
  h1:
    networks: {lan: {address: 10.0.1.11, address6: "fd00:1::11"}}
  h2:
    networks: {lan: {address: 10.0.1.12, address6: "fd00:1::12"}}
    services: [{proto: tcp, port: 8080}]
  h3:
    networks: {lan: {address: 10.0.1.13, address6: "fd00:1::13"}}
    firewall: {input: {policy: accept, rules: [{reject: tcp, port: 9}]}}
expect:
  - {from: h1, to: h2, proto: tcp, port: 8080, state: open}
  - {from: h1, to: h3, proto: tcp, port: 9, state: closed}
"""


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_dists(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venv(dists: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's venv (with its own pip, no system site-packages) holding the wheel."""
    root = tmp_path_factory.mktemp("user") / "venv"
    run([sys.executable, "-m", "venv", str(root)], env=user_env())
    python = str(root / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", str(dists[1]), "pytest"]
    run(install, env=user_env(root / "bin"), timeout=BUILD_TIMEOUT)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project directory: the example one, and a topology of three hosts."""
    copy_project(tmp_path / "project")
    (tmp_path / "project" / "trio.yaml").write_text(TOPOLOGY)
    return tmp_path / "project"


def test_the_wheel_and_the_sdist_carry_what_runs(dists: tuple[Path, Path]) -> None:
    sdist, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = f"netharness-{__version__}.dist-info"
        entry_points = archive.read(f"{meta}/entry_points.txt").decode()
        metadata = archive.read(f"{meta}/METADATA").decode()
    for needed in (
        "harness/py.typed",
        "hostagent/py.typed",
        "hostagent/forkserver.py",  # run as `python -m hostagent.forkserver`
        "hostagent/reaper.py",
        "hostagent/agent.py",  # packed into the zipapp at run time
        "harness/cli/doctor.py",
        "harness/core/_kernel_probe.py",
        "harness/pytest/plugin.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    assert "[pytest11]\nnetharness = harness.pytest.plugin" in entry_points
    assert "netharness = harness.cli._entry:main" in entry_points
    assert f"\nVersion: {__version__}\n" in metadata
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    for shipped in ("README.md", "docs/ci.md", "topologies/lan.yaml", "examples/ci/gitlab-ci.yml"):
        assert shipped in members, shipped


def test_installed_outside_the_checkout(venv: Path, project: Path) -> None:
    env = user_env(venv / "bin")
    where = run(
        ["python", "-c", "import harness, hostagent; print(harness.__file__, hostagent.__file__)"],
        cwd=project,
        env=env,
    )
    for path in where.stdout.split():
        assert Path(path).is_relative_to(venv), where.stdout  # not this checkout's copy
    version = run(["netharness", "--version"], cwd=project, env=env)
    assert version.stdout.strip() == f"netharness {__version__}"
    doctor = run(["netharness", "doctor", "--json"], cwd=project, env=env)
    assert json.loads(doctor.stdout)["backends"]["netns"] is True


def test_the_agent_zipapp_is_built_from_the_installed_package(venv: Path, project: Path) -> None:
    env = user_env(venv / "bin")
    build = "import pathlib, hostagent; print(hostagent.build_zipapp(pathlib.Path('.')))"
    made = Path(project, run(["python", "-c", build], cwd=project, env=env).stdout.strip())
    with zipfile.ZipFile(made) as archive:
        packed = set(archive.namelist())
    assert "hostagent/agent.py" in packed
    # ssh machines run the fork server behind hostagent/remote.py, from this zipapp
    assert {"hostagent/forkserver.py", "hostagent/remote.py"} <= packed
    # The agent greets, then exits at the end of its stdin.
    agent = run(["python3", str(made)], cwd=Path("/"), env=env, timeout=30)
    hello = json.loads(agent.stdout.splitlines()[0])
    assert hello["event"] == "hello"


def test_up_check_suite_down_from_the_installed_command(venv: Path, project: Path) -> None:
    env = user_env(venv / "bin")
    up = json.loads(run(["netharness", "up", "trio.yaml", "--json"], cwd=project, env=env).stdout)
    lab = up["id"]
    try:
        owner = Path(f"/proc/{up['owner_pid']}/cmdline").read_bytes().split(b"\0")
        assert owner[0].decode().startswith(str(venv)), owner  # the venv's python owns it
        check = json.loads(run(["netharness", "check", lab, "--json"], cwd=project, env=env).stdout)
        assert check["passed"] is True, check
        assert [c["observed"] for c in check["cells"]] == ["open", "closed"]
        suite = ["netharness", "suite", "all", lab, "--json", "--set", "five_tuple.connections=50"]
        report = json.loads(run(suite, cwd=project, env=env, timeout=300).stdout)
        verdicts = {c["verdict"] for c in report["checks"]}
        assert verdicts <= {"pass", "skip"}, report
        assert "pass" in verdicts
    finally:
        run(["netharness", "down", lab], cwd=project, env=env)
    gone = run(["netharness", "down", lab], cwd=project, env=env)
    assert "already" in gone.stdout + gone.stderr


def test_pytest_runs_a_users_tests_with_the_plugin(venv: Path, project: Path) -> None:
    env = user_env(venv / "bin")
    result = run(["python", "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=project, env=env)
    # The user's test_web.py, and the three items of topologies/web.yaml's `expect:`.
    assert "4 passed" in result.stdout, result.stdout
