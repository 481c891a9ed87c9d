"""Rootless labs, as a real unprivileged user made for this module and removed after it.

The user runs the command line on the shipped topologies, a pytest file of its own with
the plugin, and this project's own tests of the lab, suites, probes/check, the plugin and
reliability (`ROOTLESS_TESTS`); the restricted case must exit 3 naming the setting. Around
it all, root's view must not change: the root namespace (links, addresses, routes,
/run/netns, sysctls, nft), /run/netharness, mounts, users; and the user must leave no
process and no ledger behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rootns import snapshot
from tests.rootless.user import User, throwaway_user

# This project's tests the user runs: the lab, suites, probes/check, the pytest plugin,
# captures, faults, firewalls, diagnostics, and reliability (SIGKILL at random points,
# Ctrl-C, parallel labs, scoped clean). The ports suite's own tests expect its checks as
# a second user to pass, which rootless they cannot (README "Without root"); what it does
# rootless is tested here.
ROOTLESS_TESTS = [
    "tests/integration/test_lab.py",
    "tests/integration/test_suite_multiplexing.py",
    "tests/integration/test_suite_five_tuple.py",
    "tests/integration/test_probe.py",
    "tests/integration/test_probe_cli.py",
    "tests/integration/test_plugin.py",
    "tests/integration/test_capture.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_firewall.py",
    "tests/integration/test_diag.py",
    "tests/reliability/test_reaping.py",
    "tests/reliability/test_interrupt.py",
    "tests/reliability/test_parallel.py",
    "tests/reliability/test_scoped_clean.py",
]
ROOTLESS_TESTS_TIMEOUT = 600.0


def _root_view() -> dict[str, object]:
    def lines(path: str) -> list[str]:
        return sorted(Path(path).read_text().splitlines())

    try:
        ledgers = sorted(os.listdir("/run/netharness/labs"))
    except FileNotFoundError:
        ledgers = []
    mounts = [" ".join(line.split()[3:5]) for line in lines("/proc/self/mountinfo")]
    return {
        "network": snapshot(),
        "ledgers in /run/netharness": ledgers,
        "mounts": sorted(mounts),
        "users": lines("/etc/passwd"),
        "groups": lines("/etc/group"),
    }


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    before = _root_view()
    with throwaway_user() as made:
        yield made
        left = made.processes_after(1.0)  # the namespaces' bound: gone within a second
        ledgers = sorted(Path(f"/tmp/netharness-{made.uid}/labs").glob("*"))
    after = _root_view()
    assert left == {}, f"the user left processes running: {left}"
    assert ledgers == [], f"the user left ledgers: {ledgers}"
    network = before.pop("network").difference(after.pop("network"))  # type: ignore[attr-defined]
    assert network == [], f"the rootless run changed the root namespace: {network}"
    assert before == after, "the rootless run changed what root sees"


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("topology", ["lan", "routed", "three-tier"])
def test_up_exec_suite_check_down_as_an_ordinary_user(user: User, topology: str) -> None:
    path = f"topologies/{topology}.yaml"
    up = user.netharness("up", path, "--json")
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)
    lab_id, hosts = lab["id"], lab["hosts"]
    try:
        assert not any(lab_id in name for name in os.listdir("/run/netns")), "in root's /run"
        listed = _json(user.netharness("ls", "--json"))
        assert [(r["id"], r["alive"]) for r in listed] == [(lab_id, True)]
        host = sorted(hosts)[0]
        address = next(iter(hosts[host].values()))[0]
        shown = user.netharness("exec", lab_id, host, "ip", "-br", "addr")
        assert shown.returncode == 0, shown.stderr
        assert address in shown.stdout
        suites = user.netharness("suite", "multiplexing", lab_id, "--json")
        checks = _json(suites)["checks"]
        verdicts = {c["verdict"] for c in checks}
        if topology == "three-tier":  # its firewall drops what the suite tries: as root
            assert "pass" in verdicts
        else:
            assert verdicts == {"pass"}, suites.stdout
        if topology == "three-tier":
            check = user.netharness("check", lab_id)
            assert check.returncode == 0, check.stdout + check.stderr
            assert re.search(r"\d+ expectations: \d+ passed, 0 failed", check.stdout)
    finally:
        down = user.netharness("down", lab_id)
    assert down.returncode == 0, down.stderr
    assert _json(user.netharness("ls", "--json")) == []


def test_suites_as_an_ordinary_user_skip_only_what_needs_other_users(user: User) -> None:
    result = user.netharness("suite", "all", "topologies/lan.yaml", "--json")
    checks = _json(result)["checks"]
    not_passed = {c["check"]: c for c in checks if c["verdict"] != "pass"}
    assert set(not_passed) == {
        "reuseport-needs-option",
        "privileged-port-eacces",
        "unprivileged-port-start-lowered",
        "service-port-in-use",  # no service of a user's process in lan.yaml: as root
    }, result.stdout
    assert {c["verdict"] for c in not_passed.values()} == {"skip"}
    assert "rootless lab runs nothing as user" in not_passed["privileged-port-eacces"]["observed"]


USER_TEST = """
import pytest

@pytest.mark.topology("{root}/topologies/lan.yaml")
def test_h1_reaches_h2(lab):
    server = lab.hosts["h2"].agent()
    listener = server.listen("tcp", port=0)
    conn = lab.hosts["h1"].agent().connect("tcp", lab.hosts["h2"].address(), listener.port)
    assert conn.request("hi").pid == server.pid
"""


def test_a_users_own_pytest_file_runs_its_lab(user: User) -> None:
    test_file = user.home / "test_mine.py"
    test_file.write_text(USER_TEST.format(root=user.checkout))
    os.chown(test_file, user.uid, user.gid)
    result = user.run(
        str(user.python), "-m", "pytest", "-p", "no:cacheprovider", "-q",
        "--rootdir", str(user.home), str(test_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_this_projects_lab_suite_probe_plugin_and_reliability_tests_pass(user: User) -> None:
    result = user.run(
        str(user.python), "-m", "pytest", "-p", "no:cacheprovider", "-q", *ROOTLESS_TESTS,
        timeout=ROOTLESS_TESTS_TIMEOUT, env={"NETHARNESS_BACKENDS": "netns"},
    )  # fmt: skip
    tail = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed, tail
    assert int(passed.group(1)) >= 100, tail
    assert not re.search(r"\d+ (failed|error|skipped)", result.stdout), tail


def test_without_user_namespaces_it_exits_3_naming_the_sysctl(user: User) -> None:
    # A user namespace of the user's whose limit allows just one more: the one its
    # second `unshare` makes, so netharness, inside that one, is refused its own.
    nested = (
        "echo 1 > /proc/sys/user/max_user_namespaces && exec unshare --user "
        f"--map-user={user.uid} --map-group={user.gid} {user.python} -m harness up "
        "topologies/lan.yaml"
    )
    result = user.run("unshare", "--user", "--map-root-user", "sh", "-c", nested)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "user.max_user_namespaces" in result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(f"/tmp/netharness-{user.uid}/labs").exists() or not any(
        Path(f"/tmp/netharness-{user.uid}/labs").iterdir()
    )


def test_docker_hosts_are_refused_with_the_reason(user: User) -> None:
    result = user.netharness("up", "topologies/lan.yaml", "--backend", "docker")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "docker hosts need root" in result.stderr
    assert "Traceback" not in result.stderr
