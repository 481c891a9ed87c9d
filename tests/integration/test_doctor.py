"""`netharness doctor` on this machine, and on machines missing a piece (PATH, root).

This machine's kernel has no sch_netem: the doctor must say so, with its fix and what it
costs, and still exit 0 (the default backend does not need it). A PATH without nft and
tcpdump stands in for a machine without those packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NOBODY = 65534
KEPT_TOOLS = ("ip", "ss", "dot", "mmdebstrap", "sshd", "busybox", "dnsmasq")


def doctor(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def findings(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in json.loads(result.stdout)["findings"]}


def test_this_machine_is_ready_and_lacks_netem() -> None:
    started = time.monotonic()
    result = doctor()
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert took < 3.0, f"doctor took {took:.1f} s"
    lines = result.stdout.splitlines()
    netem = next(line for line in lines if "sch_netem" in line and "refused" in line)
    assert netem.split()[0] == "MISSING"
    assert "ENOENT" in netem
    assert "netns backend (the default): ready" in result.stdout
    fix = result.stdout[result.stdout.index("to fix:") :]
    assert "sch_netem (optional): modprobe sch_netem" in fix
    assert "without it: delay faults (link.delay())" in fix
    for present in ("veth", "bridge", "vxlan", "nftables", "sch_tbf", "nft", "tcpdump"):
        line = next(line for line in lines if line.split()[1:2] == [present])
        assert line.split()[0] == "ok", line


def test_json_has_every_finding_with_its_fix() -> None:
    result = doctor("--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ready"] is True
    assert report["exit_code"] == 0
    assert report["backends"] == {"netns": True, "docker": True, "ssh": True}
    keys = {"group", "name", "status", "detail", "required", "cost", "fix", "ok"}
    assert all(set(f) == keys for f in report["findings"])
    found = findings(result)
    assert found["sch_netem"]["status"] == "missing"
    assert found["sch_netem"]["required"] is False
    assert found["root"]["status"] == "ok"
    assert found["host image"]["status"] == "ok"  # `make test` builds it
    assert found["net.ipv4.ip_unprivileged_port_start"]["detail"].startswith("1024 ")
    groups = {f["group"] for f in report["findings"]}
    assert groups == {"privileges", "kernel", "tools", "docker", "sysctls"}


def test_a_path_without_nft_and_tcpdump(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in KEPT_TOOLS:
        program = shutil.which(tool)
        assert program, f"{tool} should be installed here (make install)"
        (bin_dir / tool).symlink_to(program)
    env = {**os.environ, "PATH": str(bin_dir)}
    result = doctor(env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "netns backend (the default): NOT READY" in result.stdout
    fix = result.stdout[result.stdout.index("to fix:") :]
    assert "nft (needed): apt-get install nftables" in fix
    assert "tcpdump (optional): apt-get install tcpdump" in fix
    assert fix.index("nft (needed)") < fix.index("tcpdump (optional)")  # needs first
    found = findings(doctor("--json", env=env))
    assert found["nft"]["status"] == "missing"
    assert found["nftables"]["status"] == "untested"  # no nft to try it with
    assert found["ip"]["status"] == "ok"


def test_not_root_tries_the_kernel_in_a_user_namespace_of_its_own() -> None:
    # setpriv, as `sudo -u nobody` would; cwd and HOME where nobody may be.
    nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    result = subprocess.run(
        [*nobody, sys.executable, "-m", "harness", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
        env={**os.environ, "HOME": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    found = findings(result)
    assert found["root"]["status"] == "ok"
    assert "labs run rootless" in found["root"]["detail"]
    assert {found[k]["status"] for k in ("netns", "veth", "bridge", "nftables")} == {"ok"}
    assert found["user namespaces"]["status"] == "ok"  # max_user_namespaces > 0 here
