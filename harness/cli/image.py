"""`netharness image build`: the docker backend's host image, made locally."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console

from harness.core.image import (
    DEFAULT_IMAGE,
    HARNESS_IMAGE,
    HARNESS_PACKAGES,
    PACKAGES,
    Progress,
)


@click.group()
def image() -> None:
    """The docker backend's host image (no registry: made from Debian packages)."""


@image.command()
@click.option("--force", is_flag=True, help="Rebuild even if the image is up to date.")
@click.option(
    "--harness",
    is_flag=True,
    help=f"Make {HARNESS_IMAGE} instead: the harness itself, for compose.yaml.",
)
def build(force: bool, harness: bool) -> None:
    """Make the host image with mmdebstrap and docker import; reuse it while current."""
    if harness:
        build_image(force=force, tag=HARNESS_IMAGE, packages=HARNESS_PACKAGES)
    else:
        build_image(force=force)


def build_image(
    *, force: bool = False, tag: str = DEFAULT_IMAGE, packages: tuple[str, ...] = PACKAGES
) -> None:
    """Build (or reuse) the image, showing progress; also what `up --build` runs."""
    from harness.core import image as _image

    client = _image.engine()
    try:
        with _progress() as progress:
            _image.build(client, force=force, progress=progress, image=tag, packages=packages)
    finally:
        client.close()


@contextmanager
def _progress() -> Iterator[Progress]:
    """A spinner with the latest step on a terminal; plain lines otherwise (CI logs)."""
    console = Console(stderr=True, highlight=False)
    if not sys.stderr.isatty():

        def plain(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        yield plain
        return
    with console.status("building the host image") as status:

        def live(line: str) -> None:
            if line.startswith(("building", "built", "importing")) or "up to date" in line:
                console.print(line, markup=False)
            status.update(line)

        yield live
