"""The ssh backend's host-key switches, for the command line and for pytest.

    netharness check topologies/ssh-example.yaml --trust-new-host-keys --save-host-keys
    pytest --netharness-trust-new-host-keys ...

Both are explicit opt-ins: by default an unknown host key is refused (before any
authentication) and known_hosts is never written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    import pytest

F = TypeVar("F", bound=Callable[..., Any])
_META = "netharness.ssh"
TRUST_HELP = (
    "ssh hosts: accept a host key that is not in known_hosts yet (a changed key is still "
    "refused). Off by default."
)
SAVE_HELP = "ssh hosts: append the keys accepted by --trust-new-host-keys to known_hosts."


def host_key_options(command: F) -> F:
    """Add --trust-new-host-keys and --save-host-keys to a click command; read them back
    with `backend_options()` inside it."""

    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        ctx.meta.setdefault(_META, {})[param.name or ""] = value

    for name, text in (("save_host_keys", SAVE_HELP), ("trust_new_host_keys", TRUST_HELP)):
        command = click.option(
            "--" + name.replace("_", "-"),
            name,
            is_flag=True,
            expose_value=False,
            callback=remember,
            help=text,
        )(command)
    return command


def backend_options() -> dict[str, Any]:
    """Lab.up's backend_options for the current click command's switches."""
    ctx = click.get_current_context(silent=True)
    chosen = ctx.meta.get(_META, {}) if ctx is not None else {}
    return _options(bool(chosen.get("trust_new_host_keys")), bool(chosen.get("save_host_keys")))


def add_pytest_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--netharness-trust-new-host-keys", action="store_true", default=False, help=TRUST_HELP
    )
    group.addoption(
        "--netharness-save-host-keys", action="store_true", default=False, help=SAVE_HELP
    )


def pytest_backend_options(config: pytest.Config) -> dict[str, Any]:
    """Lab.up's backend_options for pytest's switches."""
    return _options(
        bool(config.getoption("netharness_trust_new_host_keys")),
        bool(config.getoption("netharness_save_host_keys")),
    )


def _options(trust: bool, save: bool) -> dict[str, Any]:
    if save and not trust:
        from harness.errors import UsageError

        raise UsageError("--save-host-keys saves the keys --trust-new-host-keys accepts; give both")
    if not trust:
        return {}
    from harness.core._ssh import SshOptions

    return {"ssh_options": SshOptions(trust_new_host_keys=True, save_host_keys=save)}
