"""What this machine has for each backend and feature, and how to get what it lacks.

`examine()` looks at everything at once and quickly (well under two seconds): privileges
and user namespaces, kernel features tried for real in a throwaway network namespace
(_kernel_probe.py), the tools on PATH, the Docker engine and the host image, and the
sysctls that decide what labs can do. Each finding says what it found, what it costs
when missing, and the command that fixes it. The netns backend (the default) is ready
when every finding it needs is present; `netharness doctor` exits 0 then, 3 otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from harness.core import _kernel_probe
from harness.errors import HarnessError

Status = Literal["ok", "missing", "untested"]
DOCKER_TIMEOUT = 3  # seconds for the engine to answer a ping


@dataclass(frozen=True)
class Finding:
    """One thing a backend or feature needs, as this machine has it."""

    group: str  # privileges | kernel | tools | docker | sysctls
    name: str
    status: Status
    detail: str  # what was found, or why it is missing
    required: bool  # the netns backend (the default) needs it
    cost: str  # what does not work without it
    fix: str  # the command (or step) that provides it

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]

    @property
    def ready(self) -> bool:
        """Whether the default (netns) backend has everything it needs."""
        return all(f.ok for f in self.findings if f.required)

    @property
    def missing(self) -> tuple[Finding, ...]:
        """What was looked for and not found, the default backend's needs first."""
        found = [f for f in self.findings if f.status == "missing"]
        return tuple(sorted(found, key=lambda f: not f.required))

    def backends(self) -> dict[str, bool]:
        found = {f.name: f.ok for f in self.findings}
        return {
            "netns": self.ready,
            "docker": self.ready and found["docker engine"] and found["host image"],
            "ssh": found["root"],  # ssh hosts need only this side's netharness and a target sshd
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "exit_code": 0 if self.ready else 3,
            "backends": self.backends(),
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class Tool:
    program: str
    required: bool
    cost: str
    fix: str


TOOLS = (
    Tool(
        "nft",
        True,
        "host firewalls (`firewall:`, `nft:`), loss faults without netem, rulesets in diagnostics",
        "apt-get install nftables",
    ),
    Tool(
        "tcpdump",
        False,
        "packet captures (`capture: true`, --capture, --netharness-capture)",
        "apt-get install tcpdump",
    ),
    Tool(
        "dot",
        False,
        "`netharness graph` as svg or png (--format dot still works)",
        "apt-get install graphviz",
    ),
    Tool(
        "ip",
        False,
        "`ip netns exec nh-<lab>-<host> ...` by hand (netharness itself uses netlink)",
        "apt-get install iproute2",
    ),
    Tool(
        "ss",
        False,
        "`ss` by hand inside hosts (`netharness ps` needs no ss)",
        "apt-get install iproute2",
    ),
    Tool(
        "mmdebstrap",
        False,
        "`netharness image build`: the docker backend's host image",
        "apt-get install mmdebstrap",
    ),
    Tool(
        "sshd",
        False,
        "the ssh backend's own tests (a real sshd per test host); ssh hosts need sshd only "
        "on the machines they name",
        "apt-get install openssh-server",
    ),
    Tool(
        "busybox",
        False,
        "`make example-image`: the python-less image of topologies/own-software.yaml",
        "apt-get install busybox-static",
    ),
    Tool(
        "dnsmasq",
        False,
        "the dns host of topologies/own-software.yaml (a Debian server as a user's process)",
        "apt-get install dnsmasq-base",
    ),
)

# Kernel features: (required by the netns backend, what is lost without it, the fix).
KERNEL: dict[str, tuple[bool, str, str]] = {
    "netns": (True, "every lab: each host is a network namespace", "a kernel with CONFIG_NET_NS"),
    "veth": (True, "every lab: each host's link", "modprobe veth (CONFIG_VETH)"),
    "bridge": (True, "every lab: each network is a bridge", "modprobe bridge (CONFIG_BRIDGE)"),
    "nftables": (
        True,
        "host firewalls (`firewall:`, `nft:`) and loss faults without netem",
        "modprobe nf_tables (CONFIG_NF_TABLES)",
    ),
    "vxlan": (False, "networks that span machines (clusters)", "modprobe vxlan (CONFIG_VXLAN)"),
    "sch_tbf": (False, "rate faults (link.rate())", "modprobe sch_tbf (CONFIG_NET_SCH_TBF)"),
    "sch_netem": (
        False,
        "delay faults (link.delay()); loss faults fall back to nft",
        "modprobe sch_netem; on Ubuntu: apt-get install linux-modules-extra-$(uname -r); "
        "else a kernel built with CONFIG_NET_SCH_NETEM",
    ),
}

UNPRIVILEGED_PORT_START = "net.ipv4.ip_unprivileged_port_start"


def examine(path: str | None = None) -> Report:
    """Everything at once; `path` is the PATH to look for tools on (default: os.environ)."""
    programs = {t.program: shutil.which(t.program, path=path) for t in TOOLS}
    findings = [*_privileges(), *_tools(programs), *_kernel(programs["nft"]), *_docker()]
    return Report(tuple(findings))


def _privileges() -> list[Finding]:
    root = os.geteuid() == 0
    namespaces = _user_namespaces()
    if root:
        status: Status = "ok"
        detail = "running as root"
    else:
        status = namespaces.status
        detail = f"running as uid {os.geteuid()}: labs run rootless, in a user namespace" + (
            "" if status == "ok" else ", which this kernel refuses"
        )
    return [
        Finding(
            "privileges",
            "root",
            status,
            detail,
            True,
            "every lab: namespaces, links and firewalls are made as root (of a user "
            "namespace of netharness's own when not root: README 'Without root')",
            "run netharness as root (sudo), or allow unprivileged user namespaces",
        ),
        namespaces,
    ]


def _user_namespaces() -> Finding:
    count = _read_proc("user.max_user_namespaces")
    apparmor = _read_proc("kernel.apparmor_restrict_unprivileged_userns")
    clone = _read_proc("kernel.unprivileged_userns_clone")  # Debian's older switch
    problems = []
    fixes = []
    if count is None or count == "0":
        problems.append(f"user.max_user_namespaces = {count or 'absent'}")
        fixes.append("sysctl -w user.max_user_namespaces=15000")
    if apparmor == "1":
        problems.append("kernel.apparmor_restrict_unprivileged_userns = 1")
        fixes.append("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
    if clone == "0":
        problems.append("kernel.unprivileged_userns_clone = 0")
        fixes.append("sysctl -w kernel.unprivileged_userns_clone=1")
    detail = (
        "restricted: " + ", ".join(problems)
        if problems
        else f"usable (user.max_user_namespaces = {count})"
    )
    return Finding(
        "sysctls",
        "user namespaces",
        "missing" if problems else "ok",
        detail,
        False,
        "unprivileged user namespaces, which labs without root stand on",
        "; ".join(fixes) or "-",
    )


def _probe_rootless(nft: str | None) -> _kernel_probe.Probed:
    """The kernel probe as a rootless lab would meet it: in a child that entered a user
    namespace of its own (the probe's namespaces go with the child)."""
    from harness.core import userns

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one thread, so the kernel lets it move
        os.close(read_end)
        code = 1
        try:
            userns.enter()
            probed = _kernel_probe.probe(nft, (UNPRIVILEGED_PORT_START,))
            found = {k: [o.ok, o.detail] for k, o in probed.features.items()}
            os.write(write_end, json.dumps([found, probed.sysctls]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    if not text:
        return _kernel_probe.Probed()
    features, sysctls = json.loads(text)
    return _kernel_probe.Probed(
        {k: _kernel_probe.Outcome(ok, detail) for k, (ok, detail) in features.items()}, sysctls
    )


def _tools(programs: dict[str, str | None]) -> list[Finding]:
    return [
        Finding(
            "tools",
            tool.program,
            "ok" if programs[tool.program] else "missing",
            programs[tool.program] or "not on PATH",
            tool.required,
            tool.cost,
            tool.fix,
        )
        for tool in TOOLS
    ]


def _kernel(nft: str | None) -> list[Finding]:
    untested = "not tested: nft is missing" if nft is None else "not tested: no namespace"
    if os.geteuid() == 0:
        probed = _kernel_probe.probe(nft, (UNPRIVILEGED_PORT_START,))
    else:
        probed = _probe_rootless(nft)
        if not probed.features:
            untested = "not tested: no user namespace to try it in"
    findings = []
    for name, (required, cost, fix) in KERNEL.items():
        outcome = probed.features.get(name)
        status: Status = "untested" if outcome is None else "ok" if outcome.ok else "missing"
        detail = untested if outcome is None else outcome.detail
        findings.append(Finding("kernel", name, status, detail, required, cost, fix))
    findings.append(_port_start(probed.sysctls.get(UNPRIVILEGED_PORT_START)))
    return findings


def _port_start(value: str | None) -> Finding:
    # Per namespace: what the host's own setting is does not matter, a new one starts here.
    return Finding(
        "sysctls",
        UNPRIVILEGED_PORT_START,
        "untested" if value is None else "ok",
        "not read (needs root)" if value is None else f"{value} in a new namespace (a lab host)",
        False,
        "the ports suite's privileged-port checks (a host may set it in `sysctls:`)",
        "-",
    )


def _docker() -> list[Finding]:
    engine, detail, client = _engine()
    cost = "the docker backend (`backend: docker`, --backend docker)"
    fix = "apt-get install docker.io; systemctl start docker (or set DOCKER_HOST)"
    findings = [Finding("docker", "docker engine", engine, detail, False, cost, fix)]
    try:
        findings.append(_host_image(client))
    finally:
        if client is not None:
            client.close()
    return findings


def _engine() -> tuple[Status, str, Any]:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # a broken installation of the SDK
        return "missing", f"the docker SDK does not import: {exc}", None
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT)
        version = client.version().get("Version", "?")
    except (DockerException, OSError) as exc:
        return "missing", f"cannot reach the engine: {exc}", None
    return "ok", f"engine {version} answers", client


def _host_image(client: Any) -> Finding:
    from harness.core import image

    cost = "docker hosts without an `image:` of their own (the default host image)"
    fix = "netharness image build (in a checkout: make image)"
    name = image.DEFAULT_IMAGE
    if client is None:
        return Finding("docker", "host image", "untested", "no engine", False, cost, fix)
    try:
        state = image.status(client, image.machine_recipe(), name)
    except HarnessError as exc:
        return Finding("docker", "host image", "missing", str(exc), False, cost, fix)
    details = {
        "current": f"{name} is current",
        "stale": f"{name} is stale (its recipe changed); rebuild it",
        "missing": f"{name} is not built",
    }
    status: Status = "ok" if state == "current" else "missing"
    return Finding("docker", "host image", status, details[state], False, cost, fix)


def _read_proc(key: str) -> str | None:
    try:
        return Path("/proc/sys", *key.split(".")).read_text(encoding="utf-8").strip()
    except OSError:
        return None
