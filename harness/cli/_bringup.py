"""The one option set of every command that brings a lab up from a topology file.

    @lab_options
    def suite(...): ...
        lab = bring_up(spec)          # inside the command: Lab.up with what was chosen

`up`, `suite` and `check` take the same switches (--backend, --build, --capture,
--capture-dir, --progress and the ssh host-key pair), so what works for one works for
all. The switches are kept in the click context rather than as parameters: a command
that brings a lab up needs no six more arguments it only passes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from harness.cli.ssh import backend_options, host_key_options

if TYPE_CHECKING:
    from harness.lab import Lab
    from harness.lab.progress import Callback
    from harness.topology import Topology

F = TypeVar("F", bound=Callable[..., Any])
_META = "netharness.bringup"


@dataclass(frozen=True)
class BringUp:
    """What the user chose for bringing a lab up."""

    backend: str | None = None
    build: bool = False
    capture: bool = False
    capture_dir: Path | None = None
    progress: bool | None = None


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_META, {})[param.name or ""] = value
    return value


_OPTIONS = (
    click.option(
        "--backend",
        default=None,
        expose_value=False,
        callback=_remember,
        help="Backend for every host (default: each host's own, netns); ssh hosts stay ssh.",
    ),
    click.option(
        "--build",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="Build the docker host image first if needed.",
    ),
    click.option(
        "--progress/--no-progress",
        default=None,
        expose_value=False,
        callback=_remember,
        help="Show progress of bring-up and teardown (default: for labs of 20 hosts or "
        "more); a bar on a terminal, plain lines otherwise.",
    ),
    click.option(
        "--capture",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="Record every network to a pcap.",
    ),
    click.option(
        "--capture-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        callback=_remember,
        help="Where pcaps go (default: the lab's ledger directory, removed with the lab).",
    ),
)


def lab_options(command: F) -> F:
    """Add the bring-up switches (and the ssh host-key pair) to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return host_key_options(command)


def chosen() -> BringUp:
    """The bring-up switches of the running click command."""
    ctx = click.get_current_context(silent=True)
    values = ctx.meta.get(_META, {}) if ctx is not None else {}
    return BringUp(**values)


@contextmanager
def progress_shown(hosts: int, lab: str | None = None) -> Iterator[Callback | None]:
    """The progress callback for a lab of `hosts` hosts (a new one, or the running `lab`),
    as the user chose. The process first goes where a rootless lab is: a progress bar's
    thread would keep the kernel from moving it."""
    from harness.lab import Lab
    from harness.lab.progress import shown

    Lab.prepare_process(lab)

    with shown(hosts, chosen().progress) as callback:
        yield callback


def bring_up(spec: Topology, progress: Callback | None = None) -> Lab:
    """`Lab.up(spec)` with the user's switches; the image first when --build asks."""
    from harness.lab import Lab

    options = chosen()
    if options.build:
        from harness.cli.image import build_image

        build_image()
    capture_dir = options.capture_dir.resolve() if options.capture_dir else None
    return Lab.up(
        spec,
        backend=options.backend,
        progress=progress,
        capture=options.capture,
        capture_dir=capture_dir,
        backend_options=backend_options(),
    )


def refuse_bringup_options(lab: str) -> None:
    """A running lab is already up: switches that shape a bring-up cannot apply to it."""
    from harness.errors import UsageError

    options = chosen()
    given = [
        flag
        for flag, value in (
            ("--backend", options.backend),
            ("--build", options.build),
            ("--capture", options.capture),
            ("--capture-dir", options.capture_dir),
        )
        if value
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} apply to a topology file brought up by this command, not "
            f"to the running lab {lab}; `netharness capture {lab} ...` records a running lab"
        )
