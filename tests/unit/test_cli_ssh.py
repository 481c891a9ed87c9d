"""The host-key switches: opt-ins that reach the ssh backend, and nothing by default."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from harness.cli.ssh import backend_options, host_key_options
from harness.core._ssh import SshOptions
from harness.errors import UsageError
from tests.support import netharness


@click.command()
@host_key_options
def show() -> None:
    click.echo(repr(backend_options()))


def run(*args: str) -> str:
    result = CliRunner().invoke(show, list(args), catch_exceptions=False)
    assert result.exit_code == 0
    return result.output.strip()


def test_by_default_nothing_is_trusted_or_saved() -> None:
    assert run() == "{}"


def test_trusting_and_saving_are_separate_opt_ins() -> None:
    assert run("--trust-new-host-keys") == repr(
        {"ssh_options": SshOptions(trust_new_host_keys=True)}
    )
    both = SshOptions(trust_new_host_keys=True, save_host_keys=True)
    assert run("--trust-new-host-keys", "--save-host-keys") == repr({"ssh_options": both})


def test_saving_without_trusting_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="give both"):
        CliRunner().invoke(show, ["--save-host-keys"], catch_exceptions=False)


def test_up_refuses_a_missing_known_hosts_file_before_connecting_anywhere() -> None:
    # ssh-example.yaml names `known_hosts` beside it, which the repository does not have:
    # the machines (real addresses) are never contacted.
    result = netharness("up", "topologies/ssh-example.yaml")
    assert result.returncode == 3
    assert "host alpha: known_hosts file " in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
