"""The docker backend's host image, made on this machine without a registry.

    netharness/host:<version>  =  mmdebstrap (this machine's apt sources) | docker import

The image is labelled with a hash of its recipe (suite, packages, options, apt sources):
an image whose label matches is reused, one whose label differs is stale and rebuilt.
The rootfs tarball streams from mmdebstrap straight into the engine; nothing is written
to disk on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness._version import __version__
from harness.errors import SEE_DOCTOR, EnvironmentProblem

IMAGE_REPOSITORY = "netharness/host"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
RECIPE_LABEL = "netharness.recipe"
# python3 is not netharness's (its agents run beside containers): it is there for the
# users' programs and commands (`python3 -m http.server`), and the harness image below.
PACKAGES = ("python3", "iproute2", "procps")
# The main process of a host that runs only what netharness and the topology start in
# it: a container runs its image's CMD, and this one waits for the lab's end.
HOST_CMD = ("sleep", "infinity")
# The image compose.yaml runs the harness itself in: what `make install` and `make test`
# need (the Makefile's APT_PACKAGES, make, a venv, git), so CI with only Docker can run it.
HARNESS_IMAGE = f"netharness/harness:{__version__}"
HARNESS_PACKAGES = (
    *PACKAGES,
    "make",
    "git",
    "ca-certificates",
    "netbase",  # /etc/protocols and /etc/services: nft resolves "tcp" through them
    "python3-venv",
    "python3-dev",
    "gcc",
    "nftables",
    "openssh-server",
    "mmdebstrap",
    "nmap",
    "tcpdump",
    "tshark",
    "graphviz",
)
# Documentation, man pages and translations are most of a minimal rootfs's size.
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
CHUNK = 1 << 20

Status = Literal["missing", "stale", "current"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the image's content; its hash is the image's label."""

    suite: str
    sources: tuple[tuple[str, str], ...]  # (path, text) of this machine's apt sources
    packages: tuple[str, ...] = PACKAGES
    excludes: tuple[str, ...] = EXCLUDES
    cmd: tuple[str, ...] = HOST_CMD

    @property
    def digest(self) -> str:
        data = json.dumps([self.suite, self.sources, self.packages, self.excludes, self.cmd])
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def command(self, mmdebstrap: str) -> list[str]:
        argv = [
            mmdebstrap,
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            "--include=" + ",".join(self.packages),
            *(f"--dpkgopt=path-exclude={pattern}" for pattern in self.excludes),
            self.suite,
            "-",  # the tarball on stdout
        ]
        return argv + [path for path, _ in self.sources]  # source files are mirrors too


def machine_recipe(packages: tuple[str, ...] = PACKAGES) -> Recipe:
    """The recipe for this machine: its Debian suite and its own apt sources."""
    suite = _os_release().get("VERSION_CODENAME")
    if not suite:
        raise EnvironmentProblem(
            "cannot tell this machine's Debian suite (no VERSION_CODENAME in /etc/os-release); "
            "netharness image build needs a Debian or Debian-based machine"
        )
    sources: list[tuple[str, str]] = []
    for place in APT_SOURCES:
        files = sorted(place.iterdir()) if place.is_dir() else [place]
        for path in files:
            if path.suffix not in (".list", ".sources") or not path.is_file():
                continue
            text = path.read_text(encoding="utf-8")
            lines = [line.strip() for line in text.splitlines()]
            if any(line and not line.startswith("#") for line in lines):
                sources.append((str(path), text))
    if not sources:
        raise EnvironmentProblem("this machine has no apt sources to build the host image from")
    return Recipe(suite=suite, sources=tuple(sources), packages=packages)


def _os_release() -> dict[str, str]:
    values = {}
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value.strip().strip('"')
    return values


def engine() -> Any:
    """A docker SDK client, or EnvironmentProblem (exit 3) saying why there is none."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as exc:
        raise EnvironmentProblem(
            f"cannot reach the Docker engine ({exc}); start it (systemctl start docker) or "
            f"set DOCKER_HOST, or leave the docker backend out; {SEE_DOCTOR}"
        ) from None
    return client


def status(client: Any, recipe: Recipe, image: str = DEFAULT_IMAGE) -> Status:
    from docker.errors import ImageNotFound

    try:
        found = client.images.get(image)
    except ImageNotFound:
        return "missing"
    labels = found.attrs.get("Config", {}).get("Labels") or {}
    return "current" if labels.get(RECIPE_LABEL) == recipe.digest else "stale"


def build(
    client: Any,
    *,
    force: bool = False,
    progress: Progress = print,
    image: str = DEFAULT_IMAGE,
    packages: tuple[str, ...] = PACKAGES,
) -> bool:
    """Make `image` unless an up-to-date one exists (or `force`); True if it was built."""
    from docker.errors import DockerException

    recipe = machine_recipe(packages)
    state = status(client, recipe, image)
    if state == "current" and not force:
        progress(f"{image} is up to date (recipe {recipe.digest})")
        return False
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise EnvironmentProblem(
            f"netharness image build needs mmdebstrap: apt-get install mmdebstrap; {SEE_DOCTOR}"
        )
    replaced = None if state == "missing" else client.images.get(image).id
    why = {"missing": "not built yet", "stale": "its recipe changed"}.get(state, "forced")
    progress(f"building {image} ({why}): Debian {recipe.suite} with {', '.join(recipe.packages)}")
    repository, _, tag = image.rpartition(":")
    # Imported under a temporary tag, renamed only once mmdebstrap has succeeded: a
    # truncated rootfs must never carry the real name and a current label.
    building = f"{repository}:building-{os.getpid()}"
    try:
        with _rootfs_stream(recipe.command(mmdebstrap), progress) as stream:
            changes = [f"LABEL {RECIPE_LABEL}={recipe.digest}", f"CMD {json.dumps(recipe.cmd)}"]
            try:
                client.api.import_image(
                    src=stream,
                    repository=repository,
                    tag=building.rpartition(":")[2],
                    changes=changes,
                    stream_src=True,
                )
            except DockerException as exc:
                raise EnvironmentProblem(f"docker import of {image} failed: {exc}") from None
        client.images.get(building).tag(repository, tag)
    finally:
        with contextlib.suppress(DockerException):
            client.images.remove(building)  # only the temporary name, if it exists
    if status(client, recipe, image) != "current":
        raise EnvironmentProblem(f"docker import did not produce {image}; see the output above")
    built = client.images.get(image)
    if replaced is not None and replaced != built.id:
        # The image it replaces has no name left: ours to remove, unless a container
        # still uses it (then the engine refuses and it stays).
        with contextlib.suppress(DockerException):
            client.images.remove(replaced)
    size = built.attrs.get("Size", 0)
    progress(f"built {image}: {size / 1e6:.0f} MB (recipe {recipe.digest})")
    return True


@contextlib.contextmanager
def _rootfs_stream(argv: list[str], progress: Progress) -> Iterator[Iterator[bytes]]:
    """mmdebstrap's tarball as chunks; its log lines go to `progress`; fails if it does."""
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    assert process.stderr is not None
    errors: list[str] = []

    def log(stderr: Any) -> None:
        for raw in stderr:
            line = raw.decode(errors="replace").rstrip()
            errors.append(line)
            if line.startswith("I: "):
                progress(line[3:])

    logger = threading.Thread(target=log, args=(process.stderr,), daemon=True)
    logger.start()
    sent = [0]

    def chunks() -> Iterator[bytes]:
        assert process.stdout is not None
        while chunk := process.stdout.read(CHUNK):
            sent[0] += len(chunk)
            if sent[0] // (50 * CHUNK) != (sent[0] - len(chunk)) // (50 * CHUNK):
                progress(f"importing: {sent[0] / 1e6:.0f} MB")
            yield chunk

    try:
        yield chunks()
        code = process.wait()
        logger.join()
        if code != 0:
            tail = "\n".join(errors[-10:])
            raise EnvironmentProblem(f"mmdebstrap failed (exit {code}):\n{tail}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def require(client: Any, image: str) -> None:
    """EnvironmentProblem (exit 3) naming the fix if `image` is not on this machine."""
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
    except ImageNotFound:
        if image == DEFAULT_IMAGE:
            fix = (
                f"build it with `netharness image build` (or `netharness up --build`); {SEE_DOCTOR}"
            )
        else:
            fix = "build or load it (docker build / docker load); netharness pulls nothing"
        raise EnvironmentProblem(f"image {image} is not on this machine; {fix}") from None
