"""examples/ci/: the GitHub Actions workflow and the GitLab CI job for a user's repository.

Both validate against their published schemas (check-jsonschema ships them; checked with
no network at all), and both run here, step by step as their CI would run them, in a copy
of the example user project with one failing test added: pip installs the wheel of this
checkout (NETHARNESS_SPEC, dependencies from PyPI), `netharness doctor` passes, pytest
fails on that test with a JUnit report, and the artifacts the recipe keeps on failure hold
that test's diagnostics and pcaps.

Two steps do not run as written: the apt-get step (the packages it names must already be
installed here, which is checked instead of touching the machine's apt state), and
GitHub's `uses:` actions (checkout, setup-python, upload-artifact), whose inputs are
checked instead. `sudo` runs its command as is: these tests already run as root.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.integration.installed import (
    BUILD_TIMEOUT,
    REPO,
    build_dists,
    copy_project,
    run,
    user_env,
)

CI = REPO / "examples" / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"
CHECK_JSONSCHEMA = str(Path(sys.prefix) / "bin" / "check-jsonschema")
STEP_TIMEOUT = BUILD_TIMEOUT
FAILING_TEST = """\
import pytest


@pytest.mark.topology("../topologies/web.yaml")
def test_a_missing_page(lab):
    conn = lab.hosts["client"].agent().connect("tcp", lab.hosts["web"].address("lan"), 8080)
    conn.send("GET /no-such-page HTTP/1.0\\r\\n\\r\\n")
    assert conn.recv().startswith(b"HTTP/1.0 200")  # it is a 404: this test fails
"""
FAILING_ID = "tests_test_fails.py_test_a_missing_page"  # its --netharness-artifacts dir


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def offline(argv: list[str]) -> list[str]:
    """`argv` in a network namespace of its own with no way out (anonymous, so it goes
    with the process): proof the schemas come with check-jsonschema."""
    return ["unshare", "--net", *argv]


@pytest.mark.parametrize(
    ("recipe", "schema"),
    [(GITHUB, "vendor.github-workflows"), (GITLAB, "vendor.gitlab-ci")],
)
def test_the_recipes_validate_against_their_published_schemas(
    recipe: Path, schema: str, tmp_path: Path
) -> None:
    checked = run(offline([CHECK_JSONSCHEMA, "--builtin-schema", schema, str(recipe)]))
    assert "ok -- validation done" in checked.stdout
    # The schema has teeth: a job whose steps/script is not a list is refused.
    broken = tmp_path / recipe.name
    text = recipe.read_text()
    broken.write_text(re.sub(r"(?m)^( +)(steps|script):$", r"\1\2: 3\n\1x_was:", text, count=1))
    assert broken.read_text() != text
    refused = run(offline([CHECK_JSONSCHEMA, "--builtin-schema", schema, str(broken)]), expect=1)
    assert "Schema validation errors" in refused.stdout + refused.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dists(tmp_path_factory.mktemp("dist"))[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example user project with a failing test added; `sudo` on PATH as root's."""
    root = copy_project(tmp_path / "project")
    (root / "tests" / "test_fails.py").write_text(FAILING_TEST)
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shims / "sudo").chmod(0o755)
    return root


def shell(line: str, project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One step's script, as the CI runs it: bash, stop at the first failing command."""
    return subprocess.run(
        ["bash", "-e", "-c", line],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )


def check_apt(line: str) -> None:
    """The packages an apt-get step installs are installed here (it is not re-run)."""
    words = shlex.split(line.split("install", 1)[1].split(">", maxsplit=1)[0])
    packages = [w for w in words if not w.startswith("-")]
    assert packages, line
    for package in packages:
        status = run(["dpkg-query", "-W", "-f=${Status}", package], expect=None).stdout
        assert status.endswith("ok installed"), f"{package}: `make install` installs it"


def recipe_env(project: Path, wheel: Path, variables: dict[str, str]) -> dict[str, str]:
    env = {**user_env(project.parent / "shims"), **variables}
    env["NETHARNESS_SPEC"] = str(wheel)  # this checkout's wheel, not a release
    return env


def run_lines(lines: list[str], project: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run each line in order until one fails; (its index or len(lines), its output)."""
    for index, line in enumerate(lines):
        if "apt-get" in line:
            check_apt(line)
            continue
        result = shell(line, project, env)
        if result.returncode != 0:
            return index, result.stdout + result.stderr
    return len(lines), ""


def assert_failure_kept(project: Path, junit: Path, artifacts: Path) -> None:
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("failures"), suite.get("tests")) == ("1", "5")  # 4 pass, 1 fails
    failed = artifacts / FAILING_ID
    diagnostics = (failed / "diagnostics.txt").read_text()
    assert "host web" in diagnostics
    assert list((failed / "captures").glob("*.pcap")), sorted(failed.rglob("*"))
    assert (failed / "logs").is_dir()


def test_the_github_workflow_runs_here(project: Path, wheel: Path) -> None:
    workflow = load(GITHUB)
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    uses = [step["uses"].split("@")[0] for step in steps if "uses" in step]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    env = recipe_env(project, wheel, workflow["env"])
    lines = [step["run"] for step in steps if "run" in step]
    stopped, output = run_lines(lines, project, env)
    assert "pytest" in lines[stopped], f"stopped at {lines[stopped]!r}:\n{output}"
    assert "1 failed, 4 passed" in output, output
    kept = [s for s in steps if s.get("if") == "failure()"]
    assert [s["uses"].split("@")[0] for s in kept] == ["actions/upload-artifact"]
    artifacts = kept[0]["with"]["path"].replace(
        "${{ env.NETHARNESS_ARTIFACTS }}", env["NETHARNESS_ARTIFACTS"]
    )
    junit = next(s for s in steps if s.get("with", {}).get("name") == "junit")
    assert_failure_kept(project, project / junit["with"]["path"], project / artifacts)


def test_the_gitlab_job_runs_here(project: Path, wheel: Path) -> None:
    recipe = load(GITLAB)
    job = recipe["network-tests"]
    env = recipe_env(project, wheel, recipe["variables"])
    stopped, output = run_lines(job["script"], project, env)
    assert "pytest" in job["script"][stopped], f"stopped at {job['script'][stopped]!r}:\n{output}"
    assert "1 failed, 4 passed" in output, output
    after = {**env, "CI_JOB_STATUS": "failed"}
    assert run_lines(job["after_script"], project, after)[0] == len(job["after_script"])
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"
    variable = "$NETHARNESS_ARTIFACTS"  # GitLab expands variables in artifact paths
    paths = [p.replace(variable, env["NETHARNESS_ARTIFACTS"]) for p in artifacts["paths"]]
    assert artifacts["reports"]["junit"] in paths
    for path in paths:
        assert (project / path).exists(), path
    kept = [p for p in paths if p.rstrip("/") == env["NETHARNESS_ARTIFACTS"]]
    assert_failure_kept(project, project / artifacts["reports"]["junit"], project / kept[0])
    # On success the after_script drops the pcaps: a passing job keeps only its report.
    succeeded = {**env, "CI_JOB_STATUS": "success"}
    run_lines(job["after_script"], project, succeeded)
    assert not (project / kept[0]).exists()
