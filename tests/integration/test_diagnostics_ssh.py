"""Diagnostics of ssh hosts: machines of their own, read through the ssh backend."""

from __future__ import annotations

import re
from pathlib import Path

from harness import Lab
from tests.integration.sshd import ADDRESSES, SshdLab


def test_an_ssh_hosts_diagnostics_come_from_the_machine(tmp_path: Path) -> None:
    with (
        SshdLab(tmp_path) as sshd,
        Lab.up(sshd.topology(), backend_options={"ssh_options": sshd.options()}) as lab,
    ):
        text = lab.diagnostics(hosts=["b"])
    assert "host b" in text
    assert f"inet {ADDRESSES['b']}/" in text  # `ip addr` as the machine printed it
    listener = rf"tcp +{re.escape(ADDRESSES['b'])}:22 +0\.0\.0\.0:\* +LISTEN +\d+ "
    assert re.search(listener, text)  # sock_diag and /proc on the machine: sshd owns it
    assert "--- nft ruleset" in text
    assert "unavailable" not in text.split("--- agents' log")[0]
