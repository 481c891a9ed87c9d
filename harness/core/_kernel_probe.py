"""What the kernel can do, tried for real in a throwaway network namespace.

The namespace is anonymous: one thread unshares into it, tries each feature (create and
delete a veth, a bridge, a vxlan; a tbf and a netem qdisc on the veth; an nft table) and
returns to its own namespace. Nothing names or mounts it, so it is gone as soon as the
thread leaves it and its sockets close, even if this process is killed half-way. The
root namespace is never touched.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.core import _netns

if TYPE_CHECKING:  # pyroute2 is slow to import; only a probe that runs needs it
    from pyroute2 import IPRoute

NFT_TIMEOUT = 5.0
_PROBE_LINK, _PROBE_PEER = "nhdoc0", "nhdoc1"
_QDISC_HANDLE, _TC_H_ROOT = 0x10000, 0xFFFFFFFF
# A link, the attributes it is made with: what a lab (or a cluster's network) makes.
LINK_KINDS: dict[str, dict[str, Any]] = {
    "veth": {"peer": _PROBE_PEER},
    "bridge": {},
    "vxlan": {"vxlan_id": 4242, "vxlan_port": 4789},
}
# A root qdisc, the options link faults give it (observe/faults.py).
QDISCS: dict[str, dict[str, Any]] = {
    "sch_tbf": {"kind": "tbf", "rate": "1mbit", "burst": 16 * 1514, "latency": "50ms"},
    "sch_netem": {"kind": "netem", "delay": 1000},
}


@dataclass(frozen=True)
class Outcome:
    """One feature: present or not, and what the kernel (or nft) said."""

    ok: bool
    detail: str


@dataclass
class Probed:
    """What the probe found: each feature's outcome, and the per-namespace sysctls a new
    namespace (a lab's host) starts with."""

    features: dict[str, Outcome] = field(default_factory=dict)
    sysctls: dict[str, str | None] = field(default_factory=dict)


def probe(nft: str | None, sysctls: tuple[str, ...] = ()) -> Probed:
    """Try every kernel feature (keys: netns, each of LINK_KINDS and QDISCS, nftables) and
    read `sysctls` (net.*) in a new namespace.

    `nft` is the nft program to list a ruleset with, or None (nftables is then untested
    and absent from the result). Runs on a thread of its own, which unshares.
    """
    probed = Probed()
    failure: list[BaseException] = []

    def work() -> None:
        probed.sysctls.update({key: _read(key) for key in sysctls})
        _try_all(probed.features, nft)

    def run() -> None:
        try:
            _in_throwaway_namespace(work, probed.features)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="netharness-doctor-probe", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return probed


def _in_throwaway_namespace(work: Callable[[], None], results: dict[str, Outcome]) -> None:
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _netns._check(_netns._libc.unshare(_netns.CLONE_NEWNET), "unshare")
        except OSError as exc:
            results["netns"] = Outcome(False, f"unshare(CLONE_NEWNET) failed: {_why(exc)}")
            return
        try:
            results["netns"] = Outcome(True, "made a network namespace (removed again)")
            work()
        finally:
            _netns.setns(home)
    finally:
        os.close(home)


def _try_all(results: dict[str, Outcome], nft: str | None) -> None:
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        for kind, attributes in LINK_KINDS.items():
            results[kind] = _try_link(ipr, kind, attributes)
        results.update(_try_qdiscs(ipr))
    finally:
        ipr.close()
    if nft is not None:
        results["nftables"] = _try_nft(nft)


def _try_link(ipr: IPRoute, kind: str, attributes: dict[str, Any]) -> Outcome:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.link("add", ifname=_PROBE_LINK, kind=kind, **attributes)
        ipr.link("del", ifname=_PROBE_LINK)
    except NetlinkError as exc:
        return Outcome(False, f"the kernel refused a {kind} link: {_why(exc)}")
    return Outcome(True, f"made and deleted a {kind} link")


def _try_qdiscs(ipr: IPRoute) -> dict[str, Outcome]:
    from pyroute2.netlink.exceptions import NetlinkError

    outcomes: dict[str, Outcome] = {}
    try:
        ipr.link("add", ifname=_PROBE_LINK, kind="veth", peer=_PROBE_PEER)
    except NetlinkError as exc:
        reason = f"not tested: no veth to put it on ({_why(exc)})"
        return {name: Outcome(False, reason) for name in QDISCS}
    index = ipr.link_lookup(ifname=_PROBE_LINK)[0]
    for name, options in QDISCS.items():
        kind = options["kind"]
        arguments = {k: v for k, v in options.items() if k != "kind"}
        try:
            ipr.tc("add", kind, index, _QDISC_HANDLE, **arguments)
            ipr.tc("del", index=index, handle=_QDISC_HANDLE, parent=_TC_H_ROOT)
        except NetlinkError as exc:
            outcomes[name] = Outcome(False, f"the kernel refused a {kind} qdisc: {_why(exc)}")
        else:
            outcomes[name] = Outcome(True, f"added and removed a {kind} qdisc")
    return outcomes


def _try_nft(nft: str) -> Outcome:
    # A child forked by this thread starts in this thread's (throwaway) namespace.
    script = b"add table inet netharness_doctor\nlist ruleset\n"
    try:
        result = subprocess.run(
            [nft, "-f", "-"], input=script, capture_output=True, timeout=NFT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Outcome(False, f"{nft} did not run: {exc}")
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        return Outcome(False, f"nft failed (exit {result.returncode}): {' '.join(said[-2:])}")
    return Outcome(True, "made an nft table and listed the ruleset")


def _read(key: str) -> str | None:
    try:
        return _netns.read_sysctl(key)
    except OSError:
        return None


def _why(exc: BaseException) -> str:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({os.strerror(code)})"
    return str(exc)
