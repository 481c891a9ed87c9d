"""Docker hosts of any local image: a python-less one, made here from Debian's busybox.

The image is `docker import`ed in this module from /bin/busybox (Debian's busybox-static,
which `make install` installs) and its applet links: no python, nothing of netharness's
inside. Its ENTRYPOINT records its ENV and WORKDIR in files its CMD, `busybox httpd`,
then serves; the tests read them over HTTP from a netns host's agent and with the
image's own wget from another container.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Lab
from harness.backends.docker import LAB_LABEL
from harness.errors import AgentError, ProcessFailed
from harness.topology import parse_topology
from tests.integration.rootns import snapshot
from tests.support import netharness

BUSYBOX = "/bin/busybox"
IMAGE = f"netharness-test/busybox:{os.getpid()}"
ENTRYPOINT = 'echo "$GREETING" > env.txt && pwd > cwd.txt && exec "$@"'
CHANGES = [
    "ENV GREETING=hello-from-env",
    "WORKDIR /www",
    f"ENTRYPOINT {json.dumps(['/bin/sh', '-c', ENTRYPOINT, 'entry'])}",
    'CMD ["httpd", "-f", "-p", "80"]',
]
SERVED = f"""\
name: anyimage
networks:
  lan: {{subnet: 10.0.1.0/24}}
hosts:
  client: {{networks: {{lan: 10.0.1.11}}}}
  web: {{networks: {{lan: 10.0.1.12}}, backend: docker, image: "{IMAGE}"}}
  alt:
    networks: {{lan: 10.0.1.13}}
    backend: docker
    image: "{IMAGE}"
    command: [httpd, -f, -p, "8080"]
"""
FAILING = (
    SERVED
    + f"""\
  bad:
    networks: {{lan: 10.0.1.14}}
    backend: docker
    image: "{IMAGE}"
    command: [sh, -c, "echo starting; echo 'no config here' >&2; exit 4"]
"""
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        pytest.fail(f"the docker backend's tests need a Docker engine: {exc}", pytrace=False)
    yield client
    client.close()


def busybox_rootfs() -> bytes:
    """A tar of /bin/busybox, a link for each of its applets, and an empty /www."""
    if not os.path.exists(BUSYBOX):
        pytest.fail(
            f"{BUSYBOX} is missing: apt-get install busybox-static (`make install` does)",
            pytrace=False,
        )
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory, mode in (("bin", 0o755), ("sbin", 0o755), ("usr", 0o755),
                                ("usr/bin", 0o755), ("usr/sbin", 0o755), ("www", 0o755),
                                ("tmp", 0o1777)):  # fmt: skip
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in applets:
            if applet != "bin/busybox":
                info = tarfile.TarInfo(applet)
                info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
                tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image(engine: Any) -> Iterator[str]:
    repository, tag = IMAGE.split(":")
    engine.api.import_image_from_data(
        busybox_rootfs(), repository=repository, tag=tag, changes=CHANGES
    )
    try:
        assert (
            "python3"
            not in subprocess.run(
                [BUSYBOX, "--list"], capture_output=True, text=True, check=True
            ).stdout
        )
        yield IMAGE
    finally:
        engine.images.remove(IMAGE, force=True)  # a failed test's container may use it


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[Lab]:
    with Lab.up(parse_topology(SERVED, "anyimage.yaml")) as lab:
        yield lab


def http_get(lab: Lab, host: str, port: int, path: str) -> str:
    """GET `path` from `host`:`port` through a new agent of the netns host `client`."""
    conn = lab.hosts["client"].agent().connect("tcp", lab.hosts[host].address(), port)
    conn.send(f"GET {path} HTTP/1.0\r\n\r\n")
    response = b""
    while chunk := conn.recv():
        response += chunk
    conn.close()
    return response.decode()


def test_a_python_less_image_serves_http_to_an_agent_of_a_netns_host(served: Lab) -> None:
    assert served.hosts["web"].run(["sh", "-c", "command -v python3"]).returncode != 0
    response = http_get(served, "web", 80, "/env.txt")
    assert response.split("\r\n")[0].endswith(" 200 OK"), response
    assert response.endswith("\r\n\r\nhello-from-env\n")  # the image's ENV
    assert http_get(served, "web", 80, "/cwd.txt").endswith("\r\n\r\n/www\n")  # its WORKDIR


def test_command_replaces_the_cmd_and_keeps_the_entrypoint(engine: Any, served: Lab) -> None:
    # alt's ENTRYPOINT still ran (it wrote env.txt), then `command:` instead of the CMD.
    assert http_get(served, "alt", 8080, "/env.txt").endswith("\r\n\r\nhello-from-env\n")
    with pytest.raises(AgentError) as refused:
        http_get(served, "alt", 80, "/env.txt")
    assert refused.value.errno == "ECONNREFUSED"
    main = {
        host: [
            " ".join(row[-1:])
            for row in engine.containers.get(f"nh-{served.id}-{host}").top()["Processes"]
        ]
        for host in ("web", "alt")
    }
    assert any(cmd.endswith("httpd -f -p 80") for cmd in main["web"]), main
    assert any(cmd.endswith("httpd -f -p 8080") for cmd in main["alt"]), main


def test_the_images_own_wget_in_one_container_reaches_another(served: Lab) -> None:
    fetched = served.hosts["alt"].run(["wget", "-q", "-O", "-", "http://10.0.1.12/env.txt"])
    assert (fetched.returncode, fetched.stdout) == (0, "hello-from-env\n"), fetched.stderr


def lab_processes(lab_id: str) -> list[str]:
    """Processes whose command line names the lab (its fork server, sentinel, agents)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if lab_id.encode() in cmdline:
                found.append(f"{entry.name}: {cmdline.decode(errors='replace')}")
    return found


def test_a_container_that_exits_at_once_fails_the_lab_at_once_leaving_nothing(
    engine: Any, image: str
) -> None:
    before = snapshot()
    lab = Lab(parse_topology(FAILING, "failing.yaml"))
    started = time.monotonic()
    try:
        with pytest.raises(ProcessFailed) as failed:
            lab.start()
    finally:
        lab.down()  # a no-op after a failed start; a lab that came up must not stay
    assert time.monotonic() - started < 3
    message = str(failed.value)
    assert f"container nh-{lab.id}-bad exited with status 4" in message
    assert "no config here" in message  # the tail of its log
    assert (failed.value.host, failed.value.process, failed.value.exit_code) == ("bad", "main", 3)
    assert before.difference(snapshot()) == []  # containers, namespaces, links, rules
    filters = {"label": f"{LAB_LABEL}={lab.id}"}
    assert engine.containers.list(all=True, filters=filters) == []
    assert lab_processes(lab.id) == []


def test_up_of_a_failing_image_exits_3_and_a_good_one_goes_down_cleanly(
    engine: Any, image: str, tmp_path: Path
) -> None:
    failing = tmp_path / "failing.yaml"
    failing.write_text(FAILING)
    result = netharness("up", str(failing))
    assert result.returncode == 3, result.stderr
    assert "exited with status 4" in result.stderr
    assert "no config here" in result.stderr
    assert "Traceback" not in result.stderr
    good = tmp_path / "served.yaml"
    good.write_text(SERVED)
    up = netharness("up", str(good), "--json")
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["id"]
    try:
        fetched = netharness(
            "exec", lab, "alt", "--", "wget", "-q", "-O", "-", "http://10.0.1.12/cwd.txt"
        )
        assert (fetched.returncode, fetched.stdout) == (0, "/www\n"), fetched.stderr
    finally:
        assert netharness("down", lab).returncode == 0
    assert engine.containers.list(all=True, filters={"label": f"{LAB_LABEL}={lab}"}) == []
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"nh-{lab}")]
    assert lab_processes(lab) == []


MAIN_SERVICE = f"""\
name: mainservice
networks:
  lan: {{subnet: 10.0.1.0/24}}
hosts:
  client: {{networks: {{lan: 10.0.1.11}}}}
  web:
    networks: {{lan: 10.0.1.12}}
    backend: docker
    image: "{IMAGE}"
    command: [sh, -c, "sleep 0.3; exec httpd -f -p 8080"]
    services: [{{proto: tcp, port: 8080, process: main}}]
"""


def test_bring_up_waits_for_a_service_of_the_containers_main_process(image: str) -> None:
    # httpd listens 0.3 s after the container starts: the lab is up only once it does.
    with Lab.up(parse_topology(MAIN_SERVICE, "main.yaml")) as lab:
        assert http_get(lab, "web", 8080, "/env.txt").endswith("\r\n\r\nhello-from-env\n")


def test_a_main_process_that_ends_before_it_listens_fails_at_once(image: str) -> None:
    before = snapshot()
    text = MAIN_SERVICE.replace("exec httpd -f -p 8080", "echo bye >&2; exit 6")
    lab = Lab(parse_topology(text, "main.yaml"))
    started = time.monotonic()
    try:
        with pytest.raises(ProcessFailed) as failed:
            lab.start()
    finally:
        lab.down()
    assert time.monotonic() - started < 5  # not the 10 s listening timeout
    assert "exited with status 6" in str(failed.value)
    assert "bye" in str(failed.value)
    assert (failed.value.host, failed.value.process) == ("web", "main")
    assert before.difference(snapshot()) == []
