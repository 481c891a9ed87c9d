"""netharness as a user installs it: built into an sdist and a wheel, installed with pip
into a venv outside this checkout, run from a directory the checkout is not importable
from. Shared by test_wheel.py and test_ci_recipes.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PROJECT = REPO / "examples" / "ci" / "project"
BUILD_TIMEOUT = 300  # seconds; pip reaches PyPI for the dependencies


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    expect: int | None = 0,
) -> subprocess.CompletedProcess[str]:
    """Run a command; with `expect`, fail showing its output unless it exits so."""
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if expect is not None and result.returncode != expect:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}, not {expect}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def build_dists(out: Path) -> tuple[Path, Path]:
    """`python -m build` of the checkout: the sdist, then the wheel built from that sdist
    (so the wheel proves the sdist is complete). Returns (sdist, wheel)."""
    run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        timeout=BUILD_TIMEOUT,
    )
    (sdist,) = out.glob("netharness-*.tar.gz")
    (wheel,) = out.glob("netharness-*.whl")
    return sdist, wheel


def user_env(bin_dir: Path | None = None) -> dict[str, str]:
    """This process's environment as a user's shell has it: no trace of this checkout's
    venv on PATH or in the Python variables; `bin_dir` first on PATH if given."""
    ours = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != ours]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(bin_dir), *path] if bin_dir else path)
    return env


def copy_project(dest: Path) -> Path:
    """The example user project (examples/ci/project) copied to `dest`."""
    shutil.copytree(EXAMPLE_PROJECT, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
