"""The three ways to run the suites: a topology file, a running lab, and pytest items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.checks.suites import SUITES, checks_of
from tests.integration.rootns import foreign_labs
from tests.support import ROOT, netharness

LAN = str(ROOT / "topologies" / "lan.yaml")
ALL_CHECKS = [(suite, check) for suite in SUITES for check in checks_of(suite)]


def test_every_suite_declares_its_checks() -> None:
    for suite in SUITES:
        names = checks_of(suite)
        assert names, f"suite {suite} declares no checks"
        assert len(set(names)) == len(names)


def test_suite_on_a_topology_file_brings_up_runs_and_tears_down(backend: str) -> None:
    # `suite` takes the bring-up switches `up` and `check` take (--backend among them)
    result = netharness("suite", "multiplexing", LAN, "--backend", backend, "--json", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert [c["check"] for c in report["checks"]] == list(checks_of("multiplexing"))
    listed = json.loads(netharness("ls", "--json").stdout)
    assert [lab["id"] for lab in listed if lab["id"] not in foreign_labs()] == []


def test_suite_all_on_a_running_lab_leaves_it_running(backend: str) -> None:
    up = json.loads(netharness("up", LAN, "--backend", backend, "--json").stdout)
    try:
        result = netharness(
            "suite", "all", up["id"], "--json", "--set", "five_tuple.connections=300", timeout=600
        )
        report = json.loads(result.stdout)
        failing = [c for c in report["checks"] if c["verdict"] != "pass"]
        assert result.returncode == 0, json.dumps(failing, indent=2)
        assert [(c["suite"], c["check"]) for c in report["checks"]] == ALL_CHECKS
        human = netharness("suite", "ports", up["id"], timeout=300)
        assert human.returncode == 0, human.stdout
        assert "passed, 0 failed, 0 errors" in human.stdout
        listed = json.loads(netharness("ls", "--json").stdout)
        # (other runs on a shared machine have labs of their own: look for ours)
        assert up["id"] in [lab["id"] for lab in listed if lab["alive"]]
    finally:
        netharness("down", up["id"])


def test_unknown_suites_and_options_are_usage_errors() -> None:
    unknown = netharness("suite", "nosuch", LAN)
    assert unknown.returncode == 2
    assert "unknown suite 'nosuch'" in unknown.stderr
    option = netharness("suite", "all", LAN, "--set", "ports.processes=5")
    assert option.returncode == 2  # multiplexing takes `processes`, ports does not
    assert "takes ports.processes" in option.stderr


def test_pytest_collects_each_check_as_an_item(pytester: pytest.Pytester) -> None:
    topology = pytester.path / "lan.yaml"
    topology.write_text(Path(LAN).read_text())
    (pytester.path / "unrelated.yaml").write_text("not: a topology\n")
    result = pytester.runpytest_subprocess(
        "--netharness-suite=multiplexing", str(topology), "-p", "no:cacheprovider", "-v"
    )
    result.assert_outcomes(passed=len(checks_of("multiplexing")))
    result.stdout.fnmatch_lines([f"*lan.yaml::multiplexing::{checks_of('multiplexing')[0]}*"])
    # without the option, topology files are not tests
    plain = pytester.runpytest_subprocess(str(pytester.path), "-p", "no:cacheprovider")
    assert plain.ret == pytest.ExitCode.NO_TESTS_COLLECTED
