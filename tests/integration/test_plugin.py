"""The pytest plugin, tested the way its users run it: an inner pytest on real labs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.rootns import lab_namespaces, snapshot

LAN = Path(__file__).resolve().parents[2] / "topologies" / "lan.yaml"


def test_lab_fixture_brings_up_the_marked_topology(pytester: pytest.Pytester) -> None:
    before = snapshot()
    pytester.makepyfile(f"""
        import os
        import pytest

        @pytest.mark.topology({str(LAN)!r})
        def test_reach(lab):
            assert os.path.exists("/run/netns/" + lab.hosts["h1"].netns)
            server = lab.hosts["h2"].agent()
            port = server.listen("tcp").port
            conn = lab.hosts["h1"].agent().connect("tcp", lab.hosts["h2"].address("lan"), port)
            assert conn.request("x").pid == server.pid

        @pytest.mark.topology("lan.yaml")
        def test_relative_path(lab):
            assert set(lab.hosts) == {{"h1", "h2", "h3"}}
    """)
    (pytester.path / "lan.yaml").write_text(LAN.read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert before.difference(snapshot()) == []


def test_missing_marker_is_a_clear_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_no_marker(lab):
            pass
    """)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*mark the test with @pytest.mark.topology*"])


def test_keep_leaves_a_failed_tests_lab_up_and_says_how_to_enter(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.topology({str(LAN)!r})
        def test_fails(lab):
            assert False, "deliberate"

        @pytest.mark.topology({str(LAN)!r})
        def test_passes(lab):
            pass
    """)
    before = lab_namespaces()
    result = pytester.runpytest_subprocess("--netharness-keep")
    result.assert_outcomes(failed=1, passed=1)
    text = result.stdout.str()
    match = re.search(r"lab (\w+) kept .*netharness shell \1 <host>.*netharness down \1", text)
    assert match, text
    lab_id = match.group(1)
    try:
        kept = lab_namespaces() - before
        assert kept == {f"nh-{lab_id}"} | {f"nh-{lab_id}-{h}" for h in ("h1", "h2", "h3")}
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "harness", "down", lab_id],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert down.returncode == 0, down.stderr
    assert lab_namespaces() == before


# pytest-xdist with 8 workers: tests/reliability/test_parallel.py::test_xdist_with_eight_workers
