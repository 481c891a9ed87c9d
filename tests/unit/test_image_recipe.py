"""The host image's recipe: what decides whether an image is current (no engine needed)."""

from __future__ import annotations

from harness.core.image import HARNESS_PACKAGES, PACKAGES, Recipe, machine_recipe

SOURCES = (("/etc/apt/sources.list.d/debian.sources", "Types: deb\nSuites: bookworm\n"),)


def test_the_digest_follows_everything_that_shapes_the_image() -> None:
    base = Recipe("bookworm", SOURCES)
    assert base.digest == Recipe("bookworm", SOURCES).digest
    assert len(base.digest) == 16
    changed = [
        Recipe("trixie", SOURCES),
        Recipe("bookworm", ((SOURCES[0][0], SOURCES[0][1] + "Components: main\n"),)),
        Recipe("bookworm", SOURCES, packages=(*PACKAGES, "curl")),
        Recipe("bookworm", SOURCES, excludes=()),
        Recipe("bookworm", SOURCES, cmd=("python3",)),  # the main process of its containers
    ]
    assert len({r.digest for r in changed} | {base.digest}) == 6


def test_the_command_builds_a_minimal_tarball_on_stdout_from_the_machines_sources() -> None:
    argv = Recipe("bookworm", SOURCES).command("/usr/bin/mmdebstrap")
    assert argv[:4] == ["/usr/bin/mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar"]
    assert "--include=python3,iproute2,procps" in argv
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert argv[-3:] == ["bookworm", "-", SOURCES[0][0]]  # the file is used as a mirror


def test_this_machines_recipe_and_the_harness_image_extend_the_host_image() -> None:
    recipe = machine_recipe()
    assert recipe.suite
    assert recipe.sources
    assert all(path.startswith("/etc/apt/") for path, _ in recipe.sources)
    assert set(PACKAGES) < set(HARNESS_PACKAGES)
    assert machine_recipe(HARNESS_PACKAGES).digest != recipe.digest
