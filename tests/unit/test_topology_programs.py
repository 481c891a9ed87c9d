"""The user's processes in the model: `run:` programs, a docker host's `command:`, a
service's `process:` and an expectation's `owner:` (messages of bad files: tests/data/bad)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest

from harness.errors import TopologyError
from harness.topology import Program, Ready, Service, Topology, load_topology, parse_topology

GOOD = Path(__file__).resolve().parents[1] / "data" / "good"


def parse(hosts: str, expect: str = "") -> Topology:
    text = f"name: t\nnetworks: {{lan: {{subnet: 10.0.1.0/24}}}}\nhosts:\n{hosts}{expect}"
    return parse_topology(text, filename="t.yaml")


def program(entry: str, host: str = "") -> Program:
    (only,) = parse(f"  h1:\n    {host}run: [{entry}]\n").hosts["h1"].run
    return only


def problems(hosts: str, expect: str = "") -> list[tuple[str, str]]:
    with pytest.raises(TopologyError) as caught:
        parse(hosts, expect)
    return [(p.path, p.message) for p in caught.value.problems]


def test_the_example_file_resolves_every_key() -> None:
    topo = load_topology(GOOD / "programs.yaml")
    api, web = topo.hosts["api"], topo.hosts["web"]
    echo, dns, quoted = api.run
    assert echo == Program(
        "echo",
        ("python3", "-m", "http.server", "8080"),
        user="nobody",
        ready=(Ready("tcp", 8080),),
    )
    assert dns.argv == ("dnsmasq", "--keep-in-foreground", "--port", "53", "--conf-file=/dev/null")
    assert (dns.user, dns.cwd, dns.ready_timeout) == ("0", "/", 2.5)
    assert dict(dns.env) == {"LANG": "C.UTF-8", "WORKERS": "4"}
    assert dns.ready == (Ready("udp", 53), Ready("tcp", 53))
    assert quoted.argv == ("sh", "-c", 'echo "a b" > /tmp/out; sleep 1000')
    assert api.program("dns") is dns
    assert api.command is None
    assert web.command == ("httpd", "-f", "-p", "80")
    assert [p.name for p in web.run] == ["sidecar"]
    assert api.services == (
        Service("tcp", 8080, None, "echo"),
        Service("udp", 53, None, "dns"),
        Service("tcp", 9000, None),
    )
    assert web.services == (Service("tcp", 80, None, "main"),)
    owners = {(e.target, e.port): e.owner for e in topo.expectations}
    assert owners == {
        ("api", 8080): "echo",
        ("api", 53): "dns",
        ("web", 80): "main",
        ("api", 9999): None,
        ("web", 9999): None,
    }


def test_defaults_of_a_program() -> None:
    only = program("{name: web, command: httpd}")
    assert only == Program("web", ("httpd",))
    assert (only.user, only.cwd, only.ready, only.ready_timeout) == (None, None, (), 10.0)
    assert dict(only.env) == {}
    assert parse("  h1: {}\n").hosts["h1"].run == ()
    assert parse("  h1: {backend: docker}\n").hosts["h1"].command is None


@pytest.mark.parametrize(
    "line",
    [
        "httpd -f -p 80",
        "  spaced   out  ",
        "sh -c 'echo hello; exit 3'",
        'printf "%s\\n" "a b" c',
        "echo it\\'s",
        "find /tmp -name '*.log' -exec rm {} \\;",
        "grep -E 'a|b' /etc/hosts",
        "echo '$HOME' \\$HOME",
        "python3 -c 'import sys; print(sys.argv)' x#y",
        "echo ''",
    ],
)
def test_a_command_line_is_split_as_shlex_splits_it(line: str) -> None:
    quoted = line.replace("\\", "\\\\").replace('"', '\\"')
    assert program(f'{{name: p, command: "{quoted}"}}').argv == tuple(shlex.split(line))


def test_a_command_list_is_taken_word_for_word_numbers_as_decimal_digits() -> None:
    words = "[sh, -c, 'a; b | c', '', 80, 0x50, '0x50', ' spaced ']"
    assert program(f"{{name: p, command: {words}}}").argv == (
        "sh",
        "-c",
        "a; b | c",
        "",
        "80",
        "80",
        "0x50",
        " spaced ",
    )


def test_user_env_cwd_and_ready() -> None:
    only = program(
        "{name: p, command: x, user: 65534, cwd: /srv/www, env: {A: '1', B: 2, C: ''},"
        " ready: {listen: [tcp/1, udp/65535], timeout: 60}}"
    )
    assert only.user == "65534"
    assert only.cwd == "/srv/www"
    assert only.env == {"A": "1", "B": "2", "C": ""}
    assert isinstance(only.env, MappingProxyType)
    assert only.ready == (Ready("tcp", 1), Ready("udp", 65535))
    assert only.ready_timeout == 60.0
    assert isinstance(only.ready_timeout, float)
    assert program("{name: p, command: x, user: www-data}").user == "www-data"
    assert program("{name: p, command: x, ready: {listen: udp/53}}").ready == (Ready("udp", 53),)


def test_programs_keep_the_order_of_the_file_and_are_frozen() -> None:
    names = ["zeta", "alpha", "mid"]
    entries = ", ".join(f"{{name: {n}, command: x}}" for n in names)
    host = parse(f"  h1:\n    run: [{entries}]\n").hosts["h1"]
    assert [p.name for p in host.run] == names
    with pytest.raises(KeyError, match="runs no program 'beta'"):
        host.program("beta")
    with pytest.raises(dataclasses.FrozenInstanceError):
        host.run[0].name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        host.run[0].env["A"] = "1"  # type: ignore[index]


def test_the_same_program_name_on_two_hosts_is_fine() -> None:
    topo = parse("  a: {run: [{name: web, command: x}]}\n  b: {run: [{name: web, command: y}]}\n")
    assert topo.hosts["a"].program("web").argv == ("x",)
    assert topo.hosts["b"].program("web").argv == ("y",)


def test_main_is_a_process_of_docker_hosts_only() -> None:
    docker = "  h1: {backend: docker, services: [{proto: tcp, port: 80, process: main}]}\n"
    assert parse(docker).hosts["h1"].services[0].process == "main"
    netns = docker.replace("docker", "netns")
    assert problems(netns) == [
        (
            "hosts.h1.services[0].process",
            "main is a docker host's own main process, and h1 is not a docker host",
        )
    ]


def test_command_needs_a_docker_host_as_the_file_says() -> None:
    # `--backend docker` may run a netns host as a container, but `command:` (like
    # `image:`) is a promise about the host written in the file.
    assert problems("  h1: {command: httpd}\n") == [
        (
            "hosts.h1.command",
            "command replaces a docker image's CMD, and this host's backend is netns",
        )
    ]


def test_owner_must_be_a_process_of_every_target() -> None:
    hosts = (
        "  c: {networks: {lan: auto}}\n"
        "  a: {networks: {lan: auto}, run: [{name: web, command: x}]}\n"
        "  b: {networks: {lan: auto}, backend: docker}\n"
    )
    good = "expect:\n  - {from: c, to: a, proto: tcp, port: 80, state: open, owner: web}\n"
    (cell,) = parse(hosts, good).expectations
    assert (cell.target, cell.owner) == ("a", "web")
    both = "expect:\n  - {from: c, to: [a, b], proto: tcp, port: 80, state: open, owner: web}\n"
    assert problems(hosts, both) == [("expect[0].owner", "b runs no program 'web'")]


def test_every_problem_of_programs_is_reported_at_once() -> None:
    found = problems(
        "  h1:\n"
        "    run:\n"
        "      - {name: main, command: x}\n"
        "      - {name: a, command: 'x \"y', user: 'u:g'}\n"
        "      - {name: b, command: [], cwd: rel, ready: {listen: 80}}\n"
        "    services: [{proto: tcp, port: 1, process: c}]\n"
    )
    assert [path for path, _ in found] == [
        "hosts.h1.run[0].name",
        "hosts.h1.run[1].command",
        "hosts.h1.run[1].user",
        "hosts.h1.run[2].command",
        "hosts.h1.run[2].cwd",
        "hosts.h1.run[2].ready.listen",
        "hosts.h1.services[0].process",
    ]


def test_a_program_cut_for_its_shape_is_still_known_by_name() -> None:
    found = problems(
        "  h1:\n"
        "    run: [{name: web, command: x, colour: blue}, {name: db}]\n"
        "    services:\n"
        "      - {proto: tcp, port: 80, process: web}\n"
        "      - {proto: tcp, port: 5432, process: db}\n"
    )
    assert found == [
        ("hosts.h1.run[0].colour", "unknown key 'colour'"),
        ("hosts.h1.run[1].command", "missing required key 'command'"),
    ]


def test_validate_on_the_command_line_reports_every_new_problem_with_exit_2(
    tmp_path: Path,
) -> None:
    bad = GOOD.parent / "bad"
    cases = ["run", "run_ready", "run_ssh", "command", "process", "owner"]
    files = [str(bad / f"{case}.yaml") for case in cases]
    result = subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(GOOD / "programs.yaml"), *files],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, NETHARNESS_RUN_DIR=str(tmp_path)),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "programs.yaml: ok" in result.stdout
    for case, path in zip(cases, files, strict=True):
        shown = [line for line in result.stderr.splitlines() if line.startswith(path + ":")]
        expected = (bad / f"{case}.expected").read_text(encoding="utf-8").splitlines()
        assert shown == [line.replace(f"{case}.yaml", path, 1) for line in expected]
