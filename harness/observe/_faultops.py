"""The kernel work behind faults: netlink (pyroute2) and nftables inside a lab namespace.

Each call opens its own rtnetlink socket bound to the namespace (a socket keeps the
namespace it was made in) and runs `nft` from this process with the calling thread
inside the namespace (a child inherits the thread's namespace), so it works for every
backend that gives a namespace path, whatever tools the host itself has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from harness.core import _netns
from harness.errors import SEE_DOCTOR, BackendError, EnvironmentProblem

if TYPE_CHECKING:  # pyroute2 is imported when a fault needs it: it is slow to import
    from pyroute2 import IPRoute

T = TypeVar("T")
TC_H_ROOT = 0xFFFFFFFF  # linux/pkt_sched.h
NFT_TIMEOUT = 30.0
QDISC_HANDLE = 0x10000  # "1:", the root qdisc a fault adds (tbf or netem)


@contextlib.contextmanager
def _entered(path: str) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BackendError(f"namespace {path} is gone (is the lab still up?)") from None
    try:
        with _netns.entered(fd):
            yield
    finally:
        os.close(fd)


def netlink(path: str, what: str, work: Callable[[IPRoute], T], host: str | None = None) -> T:
    """Run `work` with an rtnetlink socket in namespace `path`; errors become BackendError."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with _entered(path):
        ipr = IPRoute()
    try:
        return work(ipr)
    except NetlinkError as exc:
        raise BackendError(f"{what}: {exc}", host=host, code=exc.code) from exc
    finally:
        ipr.close()


def nft(path: str, script: str, host: str | None = None) -> None:
    """Apply an nftables script inside namespace `path` (atomically, as one transaction)."""
    program = shutil.which("nft")
    if program is None:
        raise EnvironmentProblem(
            "this fault uses nftables but nft is not installed; `apt-get install nftables`; "
            + SEE_DOCTOR
        )
    with _entered(path):
        result = subprocess.run(
            [program, "-f", "-"],
            input=script.encode(),
            capture_output=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise BackendError(f"nft refused a fault's rules: {message}", host=host)


def nft_ruleset(path: str) -> str:
    program = shutil.which("nft") or "nft"
    with _entered(path):
        result = subprocess.run(
            [program, "list", "ruleset"], capture_output=True, timeout=NFT_TIMEOUT, check=False
        )
    return result.stdout.decode(errors="replace")


def link_index(ipr: IPRoute, ifname: str) -> int:
    """The index of the link named `ifname` in the socket's namespace."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise BackendError(f"no link {ifname!r} in this namespace")
    return int(found[0])


def peer_index(path: str, ifname: str, host: str | None = None) -> int:
    """The index, in the peer's namespace (the fabric), of veth `ifname`'s other end."""

    def work(ipr: IPRoute) -> int:
        (link,) = ipr.get_links(link_index(ipr, ifname))
        peer = link.get_attr("IFLA_LINK")
        if not peer:
            raise BackendError(f"{ifname} is not a veth with a peer", host=host)
        return int(peer)

    return netlink(path, f"peer of {ifname}", work, host=host)


def set_link_state(path: str, index: int, state: str) -> None:
    netlink(
        path, f"set link {index} {state}", lambda ipr: ipr.link("set", index=index, state=state)
    )


def link_name(path: str, index: int) -> str:
    def work(ipr: IPRoute) -> str:
        (link,) = ipr.get_links(index)
        return str(link.get_attr("IFLA_IFNAME"))

    return netlink(path, f"name of link {index}", work)


def operstate(path: str, ifname: str) -> str:
    def work(ipr: IPRoute) -> str:
        (link,) = ipr.get_links(link_index(ipr, ifname))
        return str(link.get_attr("IFLA_OPERSTATE"))

    return netlink(path, f"state of {ifname}", work)


def wait_operstate(path: str, ifname: str, want: str, timeout: float) -> bool:
    """Wait for the kernel's link watch to report `want` (it may lag about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        if operstate(path, ifname) == want:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20


def forget_unresolved_neighbours(path: str, ifname: str, host: str | None = None) -> None:
    """Delete neighbour entries of `ifname` still resolving or failed.

    While a cable is out, ARP/ND for peers fails; an entry that gives up just after the
    cable is back fails the packets queued on it (EHOSTUNREACH). Forgetting them makes
    the next packet resolve afresh, as before the fault.
    """

    def work(ipr: IPRoute) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        index = link_index(ipr, ifname)
        for entry in ipr.get_neighbours(ifindex=index):
            if entry["state"] & (NUD_INCOMPLETE | NUD_FAILED):
                with contextlib.suppress(NetlinkError):  # it may have resolved meanwhile
                    ipr.neigh(
                        "del",
                        dst=entry.get_attr("NDA_DST"),
                        ifindex=index,
                        family=entry["family"],
                    )

    netlink(path, f"neighbours of {ifname}", work, host=host)


def add_root_qdisc(
    path: str, index: int, kind: str, options: dict[str, Any], host: str | None = None
) -> None:
    """Add a root qdisc; fails (EEXIST) if the link already has one, so that deleting
    ours later restores exactly what was there: the kernel's default."""
    netlink(
        path,
        f"{kind} on link {index}",
        lambda ipr: ipr.tc("add", kind, index, QDISC_HANDLE, **options),
        host=host,
    )


def delete_root_qdisc(path: str, index: int, host: str | None = None) -> None:
    netlink(
        path,
        f"remove qdisc of link {index}",
        lambda ipr: ipr.tc("del", index=index, handle=QDISC_HANDLE, parent=TC_H_ROOT),
        host=host,
    )


def namespace_state(path: str) -> dict[str, Any]:
    """What faults may change in a namespace: links, addresses, routes, qdiscs, nft rules.

    Comparable with ==: a fault undone leaves the same state it found.
    """

    def work(ipr: IPRoute) -> dict[str, Any]:
        # Flags carry IFF_UP and IFF_LOWER_UP (carrier). Operstate is left out: the kernel
        # derives it, and a bridge reports UNKNOWN until a port first changes, UP after.
        links = sorted(
            (
                str(link.get_attr("IFLA_IFNAME")),
                int(link["flags"]),
                link.get_attr("IFLA_MTU"),
                link.get_attr("IFLA_MASTER"),
            )
            for link in ipr.get_links()
        )
        addresses = sorted(
            (int(a["index"]), str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"]))
            for a in ipr.get_addr()
        )
        routes = sorted(
            (
                int(r["family"]),
                int(r["table"]),
                str(r.get_attr("RTA_DST")),
                int(r["dst_len"]),
                str(r.get_attr("RTA_GATEWAY")),
                r.get_attr("RTA_OIF"),
                int(r["flags"]),
            )
            for r in ipr.get_routes()
        )
        qdiscs = sorted(
            (int(q["index"]), str(q.get_attr("TCA_KIND")), int(q["handle"]), int(q["parent"]))
            for q in ipr.get_qdiscs()
        )
        return {"links": links, "addresses": addresses, "routes": routes, "qdiscs": qdiscs}

    state = netlink(path, "read state", work)
    state["nft"] = nft_ruleset(path)
    return state
