"""Faults for users' own tests: pull cables, partition hosts, lose and slow packets,
kill and restart a host's applications.

    lab.link("h1", "lan").down()            # ... and .up()
    lossy = lab.link("h1", "lan").loss(20)  # 20 % of frames, both directions
    lab.link("h2", "lan").rate("4mbit")     # token bucket, both directions
    lab.partition(["h1", "h2"], ["h3"])     # h1, h2 and h3 cannot reach each other's groups
    lab.heal()                              # every fault undone, newest first
    lab.hosts["h2"].kill_agents(); lab.hosts["h2"].restart()

Where each acts:

- `down()` sets the fabric end of the host's veth down: the cable is pulled. The host
  keeps its addresses and routes and sees NO-CARRIER; `up()` plugs it back and waits
  for the carrier.
- `loss(percent)` uses netem on both ends' egress where the kernel has sch_netem, else
  an nftables `numgen random` drop in a bridge table on the fabric port (both ways).
- `delay(ms)` needs netem (each direction gets `ms`); `rate(...)` is tbf on both ends.
- `partition(*groups)`: in every named host, an inet table dropping traffic to and from
  the other groups' addresses (so it holds across routers); unnamed hosts are untouched.

Every fault is written to the lab's `logs/faults.log` before it is applied, with its
undo; `fault.undo()` undoes one, `lab.heal()` all of them, and the lab's teardown undoes
what is left. A fault only adds (a table of its own, a root qdisc where there was none,
a link state), so undoing it restores exactly what was there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.core import _netns, naming
from harness.errors import (
    SEE_DOCTOR,
    BackendError,
    CleanupError,
    EnvironmentProblem,
    HarnessError,
    UsageError,
)
from harness.observe import _faultops as ops

if TYPE_CHECKING:
    from harness.lab import Lab, LabHost

CARRIER_TIMEOUT = 5.0
KILL_TIMEOUT = 10.0  # a killed agent is reaped in milliseconds; never wait forever
RATE_LATENCY_MS = 50  # tbf queue length, as time at the rate
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
Undo = Callable[[], None]


@dataclass(eq=False)
class Fault:
    """One fault in place. `undo()` removes it (idempotent)."""

    kind: str  # down, loss, delay, rate, partition, kill_agents
    target: str  # "h1:lan", "h1,h2 | h3", "h2"
    detail: str
    _undo: Undo = field(repr=False)
    _faults: Faults = field(repr=False)
    active: bool = True

    def undo(self) -> None:
        self._faults.undo(self)

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        """`with lab.partition(...):` — the fault lasts for the block."""
        self.undo()

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts this fault was applied to (host names hold no ':', ',' or ' ')."""
        parts = self.target.replace(" | ", ",").split(",")
        return tuple(part.split(":")[0] for part in parts)

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" + (f" ({self.detail})" if self.detail else "")


def parse_rate(rate: str | int) -> int:
    """Bits per second from 4000000, "4mbit", "512kbit" (tc's units, decimal)."""
    if isinstance(rate, int):
        bits = rate
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?bit)\s*", rate.lower())
        if match is None:
            raise UsageError(f"rate {rate!r}: write bits per second or e.g. '4mbit', '512kbit'")
        bits = int(float(match[1]) * RATE_UNITS[match[2]])
    if bits < 8000:
        raise UsageError(f"rate {rate!r} is below 8kbit; tbf cannot shape that slowly")
    return bits


class Faults:
    """The faults of one Lab object (an attached Lab undoes only its own)."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._active: list[Fault] = []
        self._lock = threading.RLock()
        self._count = 0
        self._netem: bool | None = None  # learnt on the first attempt

    # -- the verbs ---------------------------------------------------------------------

    def link(self, host: str, network: str) -> Link:
        return Link(self, self._host(host, needs_netns=True), network)

    def partition(self, *groups: Iterable[str]) -> Fault:
        """Cut every group off from the others (hosts in no group are unaffected)."""
        sets = [list(dict.fromkeys(g)) for g in groups]
        if len(sets) < 2 or not all(sets):
            raise UsageError("partition wants two or more non-empty groups of hosts")
        seen: dict[str, int] = {}
        for i, group in enumerate(sets):
            for name in group:
                self._host(name, needs_netns=True)
                if name in seen:
                    raise UsageError(f"host {name} is in two groups of the partition")
                seen[name] = i
        table = self._table_name()
        steps: list[tuple[Callable[[], None], Undo]] = []
        for i, group in enumerate(sets):
            others = [n for j, g in enumerate(sets) if j != i for n in g]
            script = _partition_script(table, [self._lab.hosts[n] for n in others])
            for name in group:
                path = self._lab.hosts[name].handle.netns_path
                steps.append(
                    (
                        functools.partial(ops.nft, path, script, host=name),
                        functools.partial(ops.nft, path, f"delete table inet {table}\n", name),
                    )
                )
        target = " | ".join(",".join(g) for g in sets)
        detail = f"nft table inet {table}"
        return self._apply("partition", target, detail, lambda: (_all(steps), detail))

    def kill_agents(self, host: str) -> int:
        """SIGKILL every agent this Lab started in `host`; `restart()` brings them back."""
        lab_host = self._host(host)
        killed: list[int] = []

        def apply() -> tuple[Undo, str]:
            killed.append(self._kill(lab_host))
            return functools.partial(self.restart, host), f"{killed[0]} agents"

        self._apply("kill_agents", host, "SIGKILL", apply)
        return killed[0]

    def restart(self, host: str) -> None:
        """The host's applications start over: agents killed, the host's agent and its
        topology services back; addresses, routes and rules are left as they are."""
        lab_host = self._host(host)
        if self._lab.attached:
            raise UsageError(
                f"host {host}: restart needs the lab's owner (its services live there); "
                "an attached lab can only kill_agents() it started"
            )
        lab_host.runtime.call(lab_host.runtime.restart(KILL_TIMEOUT))
        with self._lock:
            for fault in [f for f in self._active if f.kind == "kill_agents" and f.target == host]:
                fault.active = False
                self._active.remove(fault)
                self._record("undone", fault)

    def heal(self) -> None:
        """Undo every fault still in place, newest first; all are tried before an error."""
        self._undo_all(lambda f: True)

    def release(self) -> None:
        """At teardown: undo the network faults (killed agents stay dead)."""
        self._undo_all(lambda f: f.kind != "kill_agents")

    def affecting(self, host: str) -> list[Fault]:
        """Faults in place that were applied to `host` (for diagnostics)."""
        return [f for f in self.active if host in f.hosts]

    @property
    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._active)

    def undo(self, fault: Fault) -> None:
        with self._lock:
            if not fault.active:
                return
            fault._undo()
            if fault.active:  # restart() has already retired a kill_agents fault
                fault.active = False
                self._active.remove(fault)
                self._record("undone", fault)

    # -- machinery ---------------------------------------------------------------------

    def _undo_all(self, which: Callable[[Fault], bool]) -> None:
        failed: list[str] = []
        for fault in reversed(self.active):
            if not which(fault):
                continue
            try:
                self.undo(fault)
            except HarnessError as exc:
                failed.append(f"{fault}: {exc}")
        if failed:
            raise CleanupError(failed)

    def _host(self, name: str, needs_netns: bool = False) -> LabHost:
        if self._lab.state != "up":
            raise HarnessError(f"lab {self._lab.id} is not up")
        if name not in self._lab.hosts:
            raise UsageError(
                f"lab {self._lab.id} has no host {name!r} (hosts: {', '.join(self._lab.hosts)})"
            )
        host = self._lab.hosts[name]
        if needs_netns and not host.handle.netns_path:
            raise UsageError(
                f"host {name} runs on the {host.handle.backend} backend, outside this machine's "
                "namespaces: network faults act on netns and docker hosts only "
                "(kill_agents and restart work everywhere)"
            )
        return host

    def _table_name(self) -> str:
        with self._lock:
            self._count += 1
            return f"netharness_fault_{os.getpid()}_{self._count}"

    def _apply(
        self, kind: str, target: str, detail: str, apply: Callable[[], tuple[Undo, str]]
    ) -> Fault:
        """Record, then apply; `apply` returns its undo and what it actually did."""
        fault = Fault(kind, target, detail, lambda: None, self)
        with self._lock:
            self._record("applying", fault)
            try:
                fault._undo, fault.detail = apply()
            except BaseException:
                self._record("failed", fault)
                raise
            self._active.append(fault)
            self._record("applied", fault)
        return fault

    def _record(self, action: str, fault: Fault) -> None:
        line = {"time": time.time(), "action": action, "fault": fault.kind}
        line.update(target=fault.target, detail=fault.detail, pid=os.getpid())
        try:
            with open(self._lab.ledger_dir / "logs" / "faults.log", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        except OSError:
            pass  # the log is for people; a lab going down may have taken it already

    def _kill(self, host: LabHost) -> int:
        return host.runtime.call(host.runtime.kill_agents(KILL_TIMEOUT))

    def netem_available(self, try_it: Callable[[], None]) -> bool:
        """Run `try_it` (adds a netem qdisc); False if this kernel has no netem."""
        if self._netem is False:
            return False
        try:
            try_it()
        except BackendError as exc:
            if exc.code in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL):
                self._netem = False
                return False
            raise
        self._netem = True
        return True


class Link:
    """A host's attachment to a network, as a cable that faults can act on.

    Its two ends: the host's interface, and the veth peer in the lab's fabric namespace
    (found through the interface's peer index, so no name has to be guessed).
    """

    def __init__(self, faults: Faults, host: LabHost, network: str) -> None:
        try:
            interface = host.spec.interface(network)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        self._faults = faults
        self.host = host.name
        self.network = network
        self.ifname = interface.ifname
        self.name = f"{host.name}:{network}"
        self._host_path = host.handle.netns_path
        self._fabric_path = _netns.netns_path(naming.fabric_netns(faults._lab.id))
        self._port: int | None = None

    @property
    def faults(self) -> list[Fault]:
        """Faults in place on this link."""
        return [f for f in self._faults.active if f.target == self.name]

    def down(self) -> Fault:
        """Pull the cable: the fabric end goes down, the host sees no carrier."""
        for fault in self.faults:
            if fault.kind == "down":
                return fault

        def apply() -> tuple[Undo, str]:
            ops.set_link_state(self._fabric_path, self.port, "down")
            return self._plug_in, "fabric end down"

        return self._faults._apply("down", self.name, "fabric end down", apply)

    def up(self) -> None:
        """Plug the cable back in (undo `down()`); returns once the host has carrier."""
        for fault in self.faults:
            if fault.kind == "down":
                fault.undo()

    def clear(self) -> None:
        """Undo every fault on this link."""
        for fault in reversed(self.faults):
            fault.undo()

    def loss(self, percent: float) -> Fault:
        """Drop `percent` % of the frames crossing this link, each direction."""
        if not 0 < percent <= 100:
            raise UsageError(f"loss {percent!r}: give a percentage above 0, at most 100")

        def apply() -> tuple[Undo, str]:
            try:
                if self._faults.netem_available(lambda: self._netem(loss=percent)):
                    return self._qdisc_undo(), f"{percent:g} % (netem)"
            except BackendError as exc:
                if exc.code != errno.EEXIST:  # a rate fault holds the root qdisc: use nft
                    raise
            table = self._faults._table_name()
            port = ops.link_name(self._fabric_path, self.port)
            ops.nft(self._fabric_path, _loss_script(table, port, percent))
            drop = functools.partial(ops.nft, self._fabric_path, f"delete table bridge {table}\n")
            return drop, f"{percent:g} % (nft numgen, table bridge {table})"

        return self._faults._apply("loss", self.name, f"{percent:g} %", apply)

    def delay(self, ms: float, jitter_ms: float = 0.0) -> Fault:
        """Delay every frame by `ms` each way (netem; this kernel must have sch_netem)."""
        if ms <= 0 or jitter_ms < 0:
            raise UsageError(f"delay {ms!r} ms: give a positive delay (and jitter >= 0)")
        options = {"delay": int(ms * 1000), "jitter": int(jitter_ms * 1000)}
        detail = f"{ms:g} ms" + (f" ± {jitter_ms:g} ms" if jitter_ms else "") + " (netem)"

        def apply() -> tuple[Undo, str]:
            if not self._faults.netem_available(lambda: self._netem(**options)):
                raise EnvironmentProblem(
                    "delay needs netem, and this kernel has none (CONFIG_NET_SCH_NETEM); "
                    f"loss() and rate() work without it; {SEE_DOCTOR}"
                )
            return self._qdisc_undo(), detail

        return self._one_qdisc("delay", detail, apply)

    def rate(self, rate: str | int, burst: int | None = None) -> Fault:
        """Limit the link to `rate` (bits/s or "4mbit") each way with tbf."""
        bits = parse_rate(rate)
        size = burst or max(bits // 8 // 100, 16 * 1514)  # 10 ms at the rate, 16 frames min
        latency = f"{RATE_LATENCY_MS}ms"
        options: dict[str, Any] = {"rate": f"{bits}bit", "burst": size, "latency": latency}
        detail = f"{bits / 1e6:g} Mbit/s, burst {size} B (tbf)"

        def apply() -> tuple[Undo, str]:
            self._qdisc_both("tbf", options)
            return self._qdisc_undo(), detail

        return self._one_qdisc("rate", detail, apply)

    # -- helpers -------------------------------------------------------------------------

    def _one_qdisc(self, kind: str, detail: str, apply: Callable[[], tuple[Undo, str]]) -> Fault:
        """Apply a qdisc fault; a link holds one (its undo restores the kernel default)."""
        try:
            return self._faults._apply(kind, self.name, detail, apply)
        except BackendError as exc:
            if exc.code == errno.EEXIST:
                raise UsageError(
                    f"link {self.name} already has a qdisc (a rate or netem fault); undo it first"
                ) from None
            raise

    @property
    def port(self) -> int:
        """The fabric end's index in the fabric namespace."""
        if self._port is None:
            if not os.path.exists(self._fabric_path):
                raise UsageError(f"link {self.name}: the lab has no fabric here to act on")
            self._port = ops.peer_index(self._host_path, self.ifname, self.host)
        return self._port

    def _host_index(self) -> int:
        return ops.netlink(self._host_path, self.ifname, lambda i: ops.link_index(i, self.ifname))

    def _plug_in(self) -> None:
        ops.set_link_state(self._fabric_path, self.port, "up")
        if not ops.wait_operstate(self._host_path, self.ifname, "UP", CARRIER_TIMEOUT):
            raise BackendError(
                f"{self.ifname} has no carrier {CARRIER_TIMEOUT:g} s after the cable went back in",
                host=self.host,
            )
        for host in self._faults._lab.hosts.values():  # this host and its peers
            for interface in host.spec.interfaces:
                if interface.network == self.network:
                    ops.forget_unresolved_neighbours(
                        host.handle.netns_path, interface.ifname, host.name
                    )

    def _netem(self, **options: Any) -> None:
        self._qdisc_both("netem", options)

    def _qdisc_both(self, kind: str, options: dict[str, Any]) -> None:
        """The same root qdisc on both ends' egress: traffic to and from the host."""
        host_index = self._host_index()
        _all(
            [
                (
                    functools.partial(
                        ops.add_root_qdisc, self._fabric_path, self.port, kind, options
                    ),
                    functools.partial(ops.delete_root_qdisc, self._fabric_path, self.port),
                ),
                (
                    functools.partial(
                        ops.add_root_qdisc, self._host_path, host_index, kind, options, self.host
                    ),
                    functools.partial(ops.delete_root_qdisc, self._host_path, host_index),
                ),
            ]
        )

    def _qdisc_undo(self) -> Undo:
        host_index = self._host_index()
        return lambda: _all_undo(
            [
                functools.partial(ops.delete_root_qdisc, self._host_path, host_index, self.host),
                functools.partial(ops.delete_root_qdisc, self._fabric_path, self.port),
            ]
        )


def _all(steps: list[tuple[Callable[[], None], Undo]]) -> Undo:
    """Do each step; if one fails, undo those done and raise. Returns the undo of all."""
    done: list[Undo] = []
    try:
        for do, undo in steps:
            do()
            done.append(undo)
    except BaseException:
        with contextlib.suppress(CleanupError):  # the first error is the one to report
            _all_undo(list(reversed(done)))
        raise
    return lambda: _all_undo(list(reversed(done)))


def _all_undo(undos: list[Undo]) -> None:
    from pyroute2.netlink.exceptions import NetlinkError  # slow to import; faults only

    failed = []
    for undo in undos:
        try:
            undo()
        except (HarnessError, NetlinkError, OSError) as exc:
            failed.append(str(exc))
    if failed:
        raise CleanupError(failed)


def _partition_script(table: str, others: list[LabHost]) -> str:
    v4 = sorted({a.split("/")[0] for h in others for a in _addresses(h) if ":" not in a})
    v6 = sorted({a for h in others for a in _addresses(h) if ":" in a})
    chains = []
    for chain, direction in (("input", "saddr"), ("output", "daddr")):
        rules = [f"ip {direction} {{ {', '.join(v4)} }} drop"] if v4 else []
        rules += [f"ip6 {direction} {{ {', '.join(v6)} }} drop"] if v6 else []
        body = "\n".join(f"    {r}" for r in rules)
        chains.append(
            f"  chain {chain} {{\n    type filter hook {chain} priority -300; policy accept;\n"
            f"{body}\n  }}"
        )
    return f"table inet {table} {{\n" + "\n".join(chains) + "\n}\n"


def _addresses(host: LabHost) -> list[str]:
    return [a for addresses in host.addresses.values() for a in addresses]


def _loss_script(table: str, port: str, percent: float) -> str:
    # numgen draws 0..9999 per frame: a resolution of 0.01 %.
    threshold = round(percent * 100)
    return (
        f"table bridge {table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -300; policy accept;\n"
        f'    iifname "{port}" numgen random mod 10000 < {threshold} drop\n'
        f'    oifname "{port}" numgen random mod 10000 < {threshold} drop\n'
        "  }\n"
        "}\n"
    )
