"""What each host of a lab had, in text: for a failing test's report and for CI to keep.

    print(lab.diagnostics())              # every host
    for title, text in sections(lab):     # one section per host, as the pytest plugin adds

Per host: links with their addresses and the routes (netlink, in the host's namespace),
TCP and UDP sockets with their states and owning processes (sock_diag and /proc,
as `netharness ps --all`), the nft ruleset (`nft list ruleset`
run by the lab's fork server inside the host's namespace, so images need no nft), the
tail of its agents' log, the user's processes with their logs' tails, and the pcaps that
recorded its links. Collecting never raises:
a part that cannot be read says why, because a report about a failure must not fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from harness.core import _netns
from harness.errors import HarnessError
from harness.observe import diag, sockets

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from harness.lab import Lab, LabHost

MAX_HOSTS = 40  # a failure report about 500 hosts helps nobody; name the rest
LOG_TAIL = 60  # lines of each agent log
PROCESS_TAIL = 20  # lines of each user's process's log
NFT_TIMEOUT = 10.0
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}


def iproute_in(netns_path: str) -> IPRoute:
    """A synchronous rtnetlink socket bound to a namespace; call on a thread of its own
    (setns is per thread, and pyroute2's sync socket runs an event loop of its own)."""
    from pyroute2 import IPRoute

    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _netns.entered(fd):
            return IPRoute()  # the socket keeps the namespace it was made in
    finally:
        os.close(fd)


def sections(lab: Lab, hosts: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(title, text) per host, at most MAX_HOSTS of them, then what was left out."""
    names = list(hosts) if hosts is not None else list(lab.hosts)
    shown, rest = names[:MAX_HOSTS], names[MAX_HOSTS:]
    result = [
        (f"netharness {lab.id} host {name}", host_text(lab, lab.hosts[name])) for name in shown
    ]
    if rest:
        result.append(
            (
                f"netharness {lab.id}",
                f"{len(rest)} more hosts not shown ({', '.join(rest[:10])}, ...); "
                "lab.diagnostics(hosts=[...]) gives any of them",
            )
        )
    return result


def text(lab: Lab, hosts: Iterable[str] | None = None) -> str:
    return "\n".join(f"===== {title} =====\n{body}" for title, body in sections(lab, hosts))


def host_text(lab: Lab, host: LabHost) -> str:
    local = bool(host.handle.netns_path)  # ssh hosts are machines of their own
    parts = [
        (
            "links and routes",
            (lambda: _links_and_routes(host.handle.netns_path))
            if local
            else (lambda: _on_machine(host, ["ip", "addr"]) + _on_machine(host, ["ip", "route"])),
        ),
        ("sockets", lambda: _sockets(host)),
        (
            "nft ruleset",
            (lambda: _nft_ruleset(host))
            if local
            else (lambda: _on_machine(host, ["nft", "list", "ruleset"])),
        ),
        (f"agents' log (last {LOG_TAIL} lines)", lambda: agent_log_tail(lab, host.name)),
        (f"your processes (last {PROCESS_TAIL} lines of each log)", lambda: _processes(lab, host)),
        ("pcaps", lambda: _pcaps(lab, host)),
        ("faults in place", lambda: _faults(lab, host)),
    ]
    return "\n".join(f"--- {title}\n{_safely(read)}" for title, read in parts)


def _safely(read: Callable[[], str]) -> str:
    try:
        return read().rstrip("\n") or "(none)"
    except (HarnessError, OSError, ValueError) as exc:
        return f"(unavailable: {exc})"


def _links_and_routes(netns_path: str) -> str:
    def dump() -> str:
        with iproute_in(netns_path) as ipr:
            links = {int(link["index"]): link for link in ipr.get_links()}
            addresses: dict[int, list[str]] = {}
            for addr in ipr.get_addr():
                text = f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}"
                addresses.setdefault(int(addr["index"]), []).append(text)
            routes = [r for family in _FAMILIES for r in ipr.get_routes(family=family, table=254)]
        names = {index: str(link.get("IFLA_IFNAME")) for index, link in links.items()}
        lines = []
        for index, link in links.items():
            state = str(link.get("IFLA_OPERSTATE", "?"))
            mac = link.get("IFLA_ADDRESS") or ""
            lines.append(
                f"{names[index]:<15} {state:<8} {mac:<18} {' '.join(addresses.get(index, []))}"
            )
        lines.append("routes:")
        for route in routes:
            lines.append("  " + _route_line(route, names))
        return "\n".join(lines)

    return diag._on_own_thread(dump)


def _route_line(route: Any, names: dict[int, str]) -> str:
    dst = route.get("RTA_DST")
    where = f"{dst}/{route['dst_len']}" if dst else "default"
    via = route.get("RTA_GATEWAY")
    oif = route.get("RTA_OIF")
    return " ".join(
        part
        for part in (
            where,
            f"via {via}" if via else "",
            f"dev {names.get(int(oif), oif)}" if oif is not None else "",
            f"src {route.get('RTA_PREFSRC')}" if route.get("RTA_PREFSRC") else "",
        )
        if part
    )


def _sockets(host: LabHost) -> str:
    """Every socket with its owning processes (as `netharness ps --all`); the kernel's
    view without owners if the host's agent cannot answer (a report must not fail)."""
    try:
        return sockets.text(sockets.table(host))
    except HarnessError as exc:
        unowned = f"(owners unavailable: {exc})"
    lines = [unowned]
    for proto in ("tcp", "udp"):
        for family in (4, 6):
            found = diag.sockets(host, proto, family)
            for s in sorted(found, key=lambda s: (s.state != "LISTEN", s.local, s.peer)):
                lines.append(
                    f"{proto}{family} {s.state:<12} {_endpoint(s.local):<28} "
                    f"{_endpoint(s.peer):<28} uid {s.uid} inode {s.inode}"
                )
    return "\n".join(lines)


def _endpoint(address: tuple[str, int]) -> str:
    host, port = address
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port if port else '*'}"


def _nft_ruleset(host: LabHost) -> str:
    nft = shutil.which("nft")
    if nft is None:
        return "(nft is not installed on the controller)"
    runtime = host.runtime
    result = runtime.call(
        runtime.run_command([nft, "list", "ruleset"], NFT_TIMEOUT, from_controller=True)
    )
    if result.returncode != 0:
        return f"(nft exited {result.returncode}: {result.stderr.strip()})"
    return result.stdout if result.stdout.strip() else "(empty ruleset)"


def _on_machine(host: LabHost, argv: list[str]) -> str:
    """A command's output from the machine itself (an ssh host), shown as it printed it."""
    result = host.run(argv, timeout=NFT_TIMEOUT)
    if result.returncode != 0:
        return f"({' '.join(argv)} exited {result.returncode}: {result.stderr.strip()})\n"
    return result.stdout


def agent_log_tail(lab: Lab, host: str, count: int = LOG_TAIL) -> str:
    """The last `count` lines of the log of `host`'s agents, headed by its path."""
    path = lab.ledger_dir / "logs" / f"{host}.agents.log"
    if not path.exists():
        return f"(no log at {path})"
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join([f"{path}:", *lines[-count:]])


def _processes(lab: Lab, host: LabHost) -> str:
    """Each user's process of the host: its state and its log's tail. Those another
    process started (an attached lab's owner) are known by their logs alone."""
    handles = host.processes
    directory = lab.ledger_dir / "logs" / host.name
    others = sorted(p for p in directory.glob("*.log") if p.stem not in handles)
    blocks = []
    for name, handle in handles.items():
        head = f"{name}: pid {handle.pid}, {handle.state}: {' '.join(handle.argv)}"
        blocks.append(_with_tail(head, handle.log_tail(PROCESS_TAIL)))
    for path in others:
        lines = path.read_text(errors="replace").splitlines()[-PROCESS_TAIL:]
        blocks.append(_with_tail(f"{path.stem}: started by another program", "\n".join(lines)))
    return "\n".join(blocks)


def _with_tail(head: str, log: str) -> str:
    return "\n".join([head, *(f"  | {line}" for line in log.splitlines())])


def _pcaps(lab: Lab, host: LabHost) -> str:
    networks = {i.network for i in host.spec.interfaces}
    ifnames = {i.ifname for i in host.spec.interfaces}
    lines = []
    for label, path in _captures(lab).items():
        name, colon, ifname = label.partition(":")
        if (not colon and name in networks) or (name == host.name and ifname in ifnames):
            lines.append(f"{label}: {path}")
    return "\n".join(lines)


def _captures(lab: Lab) -> dict[str, str]:
    """This Lab's captures and, for an attached lab, those its owner started."""
    try:
        info = json.loads((lab.ledger_dir / "lab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    known = {str(k): str(v) for k, v in (info.get("captures") or {}).items()}
    known.update({label: str(path) for label, path in lab.captures.items()})
    return known


def _faults(lab: Lab, host: LabHost) -> str:
    # A test that pulled a cable and then failed: the report should say so first-hand.
    return "\n".join(str(fault) for fault in lab.faults.affecting(host.name))
