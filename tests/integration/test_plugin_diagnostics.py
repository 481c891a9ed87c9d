"""A failing test's report shows each host's state and the pcaps: terminal, JUnit, artifacts."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

TOPOLOGY = """
name: diagnosed
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
hosts:
  h1:
    networks: {lan: 10.0.1.11}
    routes: [{to: 10.9.0.0/16, via: 10.0.1.12}]
  h2:
    networks: {lan: 10.0.1.12}
    services: [{proto: tcp, port: 8080}]
    nft: |
      table inet diagnosed_filter {
        chain input { type filter hook input priority 0; tcp dport 9 reject with tcp reset; }
      }
"""

TESTS = """
import pytest
from harness.errors import AgentError

@pytest.mark.topology("diagnosed.yaml")
def test_fails(lab):
    with pytest.raises(AgentError):
        lab.hosts["h1"].agent().connect("tcp", "10.0.1.12", 9)
    lab.hosts["h1"].agent().connect("tcp", "10.0.1.12", 8080)
    assert False, "deliberate failure"

@pytest.mark.topology("diagnosed.yaml")
def test_passes(lab):
    pass
"""

HOST_SECTION = re.compile(r"netharness (\w{6}) host (h1|h2)")


def test_failure_report_terminal_junit_and_artifacts(pytester: pytest.Pytester) -> None:
    (pytester.path / "diagnosed.yaml").write_text(TOPOLOGY)
    pytester.makepyfile(test_inner=TESTS)
    artifacts = pytester.path / "ci-artifacts"
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--netharness-capture",
        f"--netharness-artifacts={artifacts}",
        f"--junitxml={junit}",
        "-n",
        "2",  # the sections travel from xdist workers with the failure itself
    )
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    sections = HOST_SECTION.findall(out)
    assert {host for _, host in sections} == {"h1", "h2"}, out
    lab_id = sections[0][0]
    failing = artifacts / "test_inner.py_test_fails"

    for text in (out, failure_text(junit), (failing / "diagnostics.txt").read_text()):
        # Addresses and routes, sockets with states, the ruleset, the agent log, the pcaps.
        assert "10.0.1.11/24" in text
        assert "10.9.0.0/16 via 10.0.1.12 dev lan" in text
        # proto, local, peer, state, then the owner: pid, user, command (`netharness ps`)
        assert re.search(r"tcp\s+0\.0\.0\.0:8080\s+0\.0\.0\.0:\*\s+LISTEN\s+\d+\s+root\s", text)
        assert re.search(r"tcp\s+10\.0\.1\.11:\d+\s+10\.0\.1\.12:8080\s+ESTABLISHED\s+\d+", text)
        assert "table inet diagnosed_filter" in text
        assert "tcp dport 9 reject with tcp reset" in text
        assert re.search(r"hostagent\[\d+\] started", text)
        assert f"lan: {failing / 'captures' / 'lan.pcap'}" in text

    assert f"diagnostics, logs and pcaps kept in {failing}" in out
    assert (failing / "logs" / "h2.agents.log").read_text().count("started") >= 1
    pcap = failing / "captures" / "lan.pcap"
    rst = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tcp.flags.reset == 1 && tcp.srcport == 9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(rst.stdout.splitlines()) == 1, rst.stdout
    passing = artifacts / "test_inner.py_test_passes"
    assert (passing / "captures" / "lan.pcap").exists()  # every test's pcaps are kept
    assert not (passing / "diagnostics.txt").exists()  # diagnostics only for failures
    assert not os.path.exists(f"/run/netns/nh-{lab_id}")


def failure_text(junit: Path) -> str:
    failures = ET.parse(junit).getroot().iter("failure")
    texts = [f.text or "" for f in failures]
    assert len(texts) == 1
    return texts[0]


def test_a_passing_run_adds_nothing(pytester: pytest.Pytester) -> None:
    (pytester.path / "diagnosed.yaml").write_text(TOPOLOGY)
    passing_only = TESTS[: TESTS.index("@pytest")] + TESTS[TESTS.rindex("@pytest") :]
    pytester.makepyfile(test_inner=passing_only)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1)
    assert not HOST_SECTION.search(result.stdout.str())


def test_failing_suite_checks_report_their_lab_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On CI pytest prints each failure's summary message whole; it must stay one line.
    monkeypatch.setenv("CI", "true")
    # One host: the multiplexing suite has no clients, so every check is an error.
    solo = TOPOLOGY.split("  h2:", maxsplit=1)[0].replace("name: diagnosed", "name: solo")
    (pytester.path / "solo.yaml").write_text(solo)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--netharness-suite=multiplexing", "solo.yaml"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 2, outcomes
    out = result.stdout.str()
    assert len(HOST_SECTION.findall(out)) == 1  # once for the file, not once per check
    assert out.count("--- links and routes") == 1
    assert "10.9.0.0/16 via 10.0.1.12 dev lan" in out
    summary = out[out.index("short test summary info") :]
    assert re.search(r"FAILED solo.yaml::multiplexing::\S+ - multiplexing/\S+: error\n", summary)
    assert not HOST_SECTION.search(summary)
