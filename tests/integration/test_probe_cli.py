"""`netharness check`, `probe` and `matrix`, and `pytest FILE.yaml`, as users run them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.topology import load_topology
from tests.integration.rootns import RootSnapshot, snapshot
from tests.support import netharness

ROOT = Path(__file__).resolve().parents[2]
STATES = ROOT / "tests" / "data" / "good" / "probe_states.yaml"


def changed(before: RootSnapshot, *outputs: str) -> list[str]:
    """What this test left in the root namespace. The machine is shared: other programs'
    labs come and go meanwhile, so namespaces and containers count only when they carry
    the id of a lab these outputs name, and nothing that went away counts."""
    ours = set(re.findall(r"\blab (\w+)", " ".join(outputs)))
    left = []
    for line in before.difference(snapshot()):
        if ": gone " in line:
            continue
        if line.startswith(("namespaces:", "containers:")) and not any(
            f"nh-{lab}" in line for lab in ours
        ):
            continue
        left.append(line)
    return left


def broken_copy(tmp_path: Path) -> Path:
    """probe_states.yaml with one rule changed: h3 now drops 80/tcp, expected open."""
    text = STATES.read_text()
    assert text.count("tcp dport 82 drop") == 2
    broken = text.replace("tcp dport 82 drop", "tcp dport { 80, 82 } drop", 2)
    path = tmp_path / "probe_states.yaml"
    path.write_text(broken)
    return path


def test_check_passes_then_fails_with_a_table_when_a_rule_breaks_an_expectation(
    tmp_path: Path,
) -> None:
    before = snapshot()
    good = netharness("check", str(STATES), "--timeout", "0.5", timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "expectations: " in good.stdout
    assert "0 failed" in good.stdout
    bad = netharness("check", str(broken_copy(tmp_path)), "--timeout", "0.5", "--retries", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    text = bad.stdout
    # Each of the four cells of 80/tcp (h3 and h2, v4 and v6) is marked in the grid ...
    assert text.count("✗ filtered (want open)") == 4, text
    # ... and listed with its line, reason, retries and the command that reproduces it.
    assert re.search(
        r"✗ line \d+: h1->h3:80/tcp \(10\.0\.1\.13\): expected open, observed filtered — "
        r"timeout 0\.5 s \(after 1 retry\)",
        text,
    ), text
    assert "reproduce: netharness probe LAB h1 h3:80/tcp\n" in text
    assert "reproduce: netharness probe LAB h1 h2:80/tcp -6" in text
    assert "4 failed" in text
    assert "Traceback" not in bad.stderr
    assert changed(before, good.stdout, bad.stdout) == []


def test_check_json_and_bad_input(tmp_path: Path) -> None:
    result = netharness(
        "check", str(broken_copy(tmp_path)), "--json", "--timeout", "0.3", "--retries", "0"
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    missed = [c for c in report["cells"] if not c["passed"]]
    assert {(c["target"], c["port"], c["family"]) for c in missed} == {
        ("h3", 80, 4),
        ("h3", 80, 6),
        ("h2", 80, 4),
        ("h2", 80, 6),
    }
    assert missed[0]["reproduce"].startswith(f"netharness probe {report['lab']} h1 ")
    plain = ROOT / "topologies" / "lan.yaml"
    nothing = netharness("check", str(plain))
    assert nothing.returncode == 2
    assert "has no `expect:` entries" in nothing.stderr
    missing = netharness("check", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


@pytest.fixture
def running_states() -> Iterator[str]:
    up = netharness("up", str(STATES), "--json", timeout=120)
    assert up.returncode == 0, up.stderr
    lab_id = json.loads(up.stdout)["id"]
    try:
        yield lab_id
    finally:
        netharness("down", lab_id)


def test_probe_and_matrix_on_a_running_lab(running_states: str) -> None:
    one = netharness("probe", running_states, "h1", "h2:83/tcp")
    assert one.returncode == 0, one.stderr
    assert "filtered (ICMP admin-prohibited from 10.0.1.1" in one.stdout
    six = netharness("probe", running_states, "h1", "[fd00:2::12]:54/udp", "--json")
    assert json.loads(six.stdout)["state"] == "closed"
    bad = netharness("probe", running_states, "h1", "h9:80/tcp")
    assert bad.returncode == 2
    assert "no host 'h9'" in bad.stderr
    table = netharness("matrix", running_states, "--ports", "80-82/tcp,53/udp", "--timeout", "0.3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["from", "to", "80/tcp", "81/tcp", "82/tcp", "53/udp"]
    h1_h3 = next(line.split() for line in lines if line.split()[:2] == ["h1", "h3"])
    assert h1_h3[2:] == ["open", "closed", "filtered", "open"]


def test_pytest_collects_expect_blocks_only_where_asked(pytester: pytest.Pytester) -> None:
    before = snapshot()
    (pytester.path / "states.yaml").write_text(STATES.read_text())
    (pytester.path / "broken.yaml").write_text(broken_copy(pytester.path).read_text())
    (pytester.path / "probe_states.yaml").unlink()
    (pytester.path / "ci.yaml").write_text("jobs: {build: {runs-on: x}}\nexpect: []\n")
    (pytester.path / "lan.yaml").write_text((ROOT / "topologies" / "lan.yaml").read_text())
    # The directory alone: no YAML is collected (nothing named, no pattern).
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", ".")
    result.assert_outcomes()
    # Named: one item per expectation, named after it.
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "states.yaml", "-v", "--netharness-retries", "0"
    )
    result.assert_outcomes(passed=44)
    result.stdout.fnmatch_lines(
        [
            "*states.yaml::h1->h3:80/tcp open PASSED*",
            "*states.yaml::h1->h2:57/udp IPv6 filtered PASSED*",
        ]
    )
    # By pattern, with the failure report of a broken rule; unrelated YAML still ignored.
    pytester.makeini("[pytest]\nnetharness_files = broken*.yaml\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", ".", "--netharness-retries", "0"
    )
    result.assert_outcomes(passed=40, failed=4)
    result.stdout.fnmatch_lines(
        [
            "*broken.yaml:*: h1->h3:80/tcp (IPv4 10.0.1.13)",
            "expected: open",
            "observed: filtered",
            "reason:   timeout 1 s (after 0 retries)",
            "reproduce: `netharness up *broken.yaml` then netharness probe LAB h1 h3:80/tcp",
        ]
    )
    assert changed(before, result.stdout.str()) == []


SHIPPED = ROOT / "topologies"
WEB_RULE = "- {allow: tcp, port: 443, from: clients, to: web}"


def test_check_passes_on_the_shipped_topologies_and_fails_when_fw_loses_a_rule(
    tmp_path: Path, backend: str
) -> None:
    before = snapshot()
    outputs = []
    for name in ("three-tier.yaml", "dmz.yaml"):
        result = netharness("check", str(SHIPPED / name), "--backend", backend, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert " 0 failed" in result.stdout
        outputs.append(result.stdout)
    text = (SHIPPED / "three-tier.yaml").read_text()
    assert text.count(WEB_RULE) == 1
    broken = tmp_path / "three-tier.yaml"
    broken.write_text(text.replace(WEB_RULE, WEB_RULE.replace("443", "8443")))
    result = netharness("check", str(broken), "--backend", backend, "--retries", "1", timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "✗ filtered (want open)" in result.stdout
    assert re.search(
        r"client1->web:443/tcp \([\d.]+\): expected open, observed filtered", result.stdout
    ), result.stdout
    assert "reproduce: netharness probe LAB client1 web:443/tcp" in result.stdout
    assert changed(before, *outputs, result.stdout) == []


def test_pytest_runs_the_three_tier_expect_block(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", str(SHIPPED / "three-tier.yaml"), "-q"
    )
    count = len(load_topology(SHIPPED / "three-tier.yaml").expectations)
    result.assert_outcomes(passed=count)
