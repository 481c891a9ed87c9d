from __future__ import annotations

import os

import pytest

# Backends the integration tests run on, once each; `NETHARNESS_BACKENDS=netns` leaves the
# docker backend out explicitly (its tests fail, never skip, when it has no engine).
BACKENDS = [b for b in os.environ.get("NETHARNESS_BACKENDS", "netns,docker").split(",") if b]


@pytest.fixture(autouse=True)
def _needs_root(needs_root: None) -> None:
    """Every integration test runs real namespaces."""


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend a parametrized test builds its lab on (pass it to `Lab.up`).

    Module-scoped, so module-scoped labs can take it and are built once per backend."""
    name = str(request.param)
    if name == "docker":
        docker_ready()
    return name


def docker_ready() -> None:
    """Fail (not skip) with the reason when the docker backend cannot run here."""
    from harness.core.image import DEFAULT_IMAGE, engine, require
    from harness.errors import EnvironmentProblem

    try:
        client = engine()
        try:
            require(client, DEFAULT_IMAGE)
        finally:
            client.close()
    except EnvironmentProblem as exc:
        pytest.fail(
            f"docker backend: {exc} (NETHARNESS_BACKENDS=netns leaves it out)", pytrace=False
        )
