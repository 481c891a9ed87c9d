"""The backend registry loads a backend only when a lab uses it (harness/backends)."""

from __future__ import annotations

import subprocess
import sys


def test_a_namespace_labs_teardown_loads_no_other_backend() -> None:
    # Ctrl-C has 2 s for the whole teardown: importing paramiko for nothing costs 0.1 s
    # quiet and much more on a busy machine.
    code = (
        "import sys\n"
        "from harness.backends import clean_recorded\n"
        "entries = [{'kind': 'netns', 'name': '/run/netns/nh-abc123-h1'}]\n"
        "assert clean_recorded('abc123', entries) == []\n"
        "loaded = [m for m in ('paramiko', 'docker', 'harness.backends.ssh',\n"
        "                      'harness.backends.docker') if m in sys.modules]\n"
        "assert loaded == [], loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_kinds_of_every_backend_are_known_without_loading_it() -> None:
    from harness.backends import RECORDED_KINDS
    from harness.topology.model import BACKEND_NAMES

    assert tuple(RECORDED_KINDS) == BACKEND_NAMES
    assert RECORDED_KINDS["docker"] == ("container",)
