"""~/.ssh/config as the ssh backend reads it: aliases, what the topology overrides, hops."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core._ssh import Endpoint, resolve
from harness.errors import BackendError
from harness.topology import SshTarget

CONFIG = """\
Host web
    HostName 10.0.77.12
    User deploy
    Port 2222
    IdentityFile {key}

Host inner
    HostName 10.0.9.9
    ProxyJump ops@bastion:2200,web

Host bastion
    HostName 198.18.0.1
    User jumper

Host *
    User fallback
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    key = tmp_path / "id_web"
    key.write_text("not really a key")
    path = tmp_path / "config"
    path.write_text(CONFIG.format(key=key))
    return str(path)


def test_an_alias_takes_the_configs_hostname_user_port_and_key(config: str) -> None:
    hops, target = resolve(SshTarget("web"), config)
    key = str(Path(config).parent / "id_web")
    assert hops == []
    assert target == Endpoint("10.0.77.12", 2222, "deploy", (key,), look_for_keys=True)
    assert target.name == "[10.0.77.12]:2222"  # how known_hosts names it


def test_what_the_topology_says_wins_over_the_config(config: str, tmp_path: Path) -> None:
    own = tmp_path / "own_key"
    _, target = resolve(SshTarget("web", port=2022, user="root", key=str(own)), config)
    assert (target.port, target.user, target.key_files) == (2022, "root", (str(own),))
    assert target.look_for_keys is False  # a key given: only that one, as `ssh -i`


def test_proxyjump_hops_in_order_each_with_its_own_config(config: str) -> None:
    hops, target = resolve(SshTarget("inner"), config)
    assert [(h.address, h.port, h.user) for h in hops] == [
        ("198.18.0.1", 2200, "ops"),  # ops@bastion:2200: the hop's own HostName
        ("10.0.77.12", 2222, "deploy"),
    ]
    assert (target.address, target.port, target.user) == ("10.0.9.9", 22, "fallback")


def test_no_config_file_means_the_address_as_written(tmp_path: Path) -> None:
    hops, target = resolve(SshTarget("10.0.1.5", user="root"), str(tmp_path / "none"))
    assert (hops, target.address, target.port, target.user) == ([], "10.0.1.5", 22, "root")
    assert resolve(SshTarget("10.0.1.5"), None)[1].look_for_keys is True


def test_a_broken_config_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("Host a\n    ProxyCommand\n")
    with pytest.raises(BackendError, match="cannot read the ssh config"):
        resolve(SshTarget("a"), str(path))
