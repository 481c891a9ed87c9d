"""The ports suite: who may bind which port, and what happens when ports run out.

    from harness.checks.suites import ports
    checks = ports.run(lab, server="h3")

Every bind is made by a real process (a host agent) in a lab host and reported with its
pid, address, port, socket options and the kernel's answer (`bound` or the errno name).
Expectations are Linux's documented behaviour (socket(7), ip(7), ipv6(7), tcp(7)).

Some checks need a host configured for them, and take it from the lab when there is one:

- `unprivileged-port-start-lowered` needs a host whose `net.ipv4.ip_unprivileged_port_start`
  is below 1024 (option `lowered_host`; by default the first such host);
- the `ephemeral-*` checks need a host whose `net.ipv4.ip_local_port_range` spans at most
  64 ports (option `ephemeral_host`; by default the first such host).

On a lab without one they report verdict "error" naming the sysctl to add, e.g.

    hosts:
      h1:
        sysctls:
          net.ipv4.ip_local_port_range: "40000 40009"
          net.ipv4.ip_unprivileged_port_start: 80

`privileged-port-eacces` runs on `privileged_host` (default: the server, or the first host
that has privileged ports) and binds `privileged_port` (default: the highest privileged
port, ip_unprivileged_port_start - 1).

The checks that count TIME_WAIT sockets (`reuseaddr-time-wait` on the server,
`ephemeral-*` on the client) set `net.ipv4.tcp_rfc1337 = 1` there for their duration, as
they set a small ip_local_port_range: otherwise a RST (drawn by a FIN sent again because
its ACK was late, as on a loaded machine) ends a TIME_WAIT early. Existing machines keep
their settings.

`service-port-in-use` checks the services of the user's processes (`process:` in the
topology, or `service="web:8080/tcp"`): a second bind of the service's address and port
gets EADDRINUSE, and a SO_REUSEPORT bind as the socket's own uid gets in exactly when the
service's socket set SO_REUSEPORT (read from the socket itself; see `ports/_services.py`
for what is inferred). Without such a service it is reported "skip".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from harness.checks.suites._base import Check, Recorder, all_errors, pick_roles
from harness.checks.suites._service import real_service
from harness.errors import HarnessError, UsageError

if TYPE_CHECKING:
    from harness.lab import Lab

from harness.checks.suites.ports._binds import (
    _lowered,
    _port_zero,
    _privileged,
    _reuseaddr_time_wait,
    _reuseport_needs_option,
    _reuseport_shares,
    _second_bind,
    _tcp_udp_same_port,
    _v6_wildcard,
    _wildcard_vs_specific,
)
from harness.checks.suites.ports._context import (
    CHECKS,
    EXPECTED,
    NAME,
    Bind,
    Judgement,
    _Context,
    _NotApplicable,
    _Options,
    _selected,
    _small_range,
    _time_wait_kept,
    _Unavailable,
)
from harness.checks.suites.ports._ephemeral import _ephemeral
from harness.checks.suites.ports._services import _service_binds


def run(  # noqa: PLR0913 - keyword-only options: the suite's API (--set)
    lab: Lab,
    *,
    server: str | None = None,
    clients: Sequence[str] | None = None,
    connections: int = 32,
    privileged_host: str | None = None,
    privileged_port: int | None = None,
    lowered_host: str | None = None,
    ephemeral_host: str | None = None,
    user: str = "nobody",
    only: Sequence[str] | str | None = None,
    service: str | None = None,
) -> list[Check]:
    """Run the ports checks on `lab`. `server` binds (default: pick_roles); the first of
    `clients` with a full ephemeral range connects; `connections` is M of the SO_REUSEPORT
    check; `user` is the unprivileged user; `only` names the checks to carry out (the
    others are reported as not run; the ephemeral-* checks after the first need it as
    their set-up, so it runs with them); `service` ("web:8080/tcp") names the real
    service `service-port-in-use` checks (default: the topology's `process:` services)."""
    selected = _selected(only)
    if not isinstance(connections, int) or connections < 2:
        raise UsageError(f"ports: connections must be an integer >= 2, not {connections!r}")
    if privileged_port is not None and (
        not isinstance(privileged_port, int) or not 1 <= privileged_port <= 65535
    ):
        raise UsageError("ports: privileged_port must be a port from 1 to 65535")
    rec = Recorder(NAME, CHECKS)
    try:
        roles = pick_roles(lab, server, clients, min_clients=1)
        for name in (privileged_host, lowered_host, ephemeral_host):
            if name is not None and name not in lab.hosts:
                raise HarnessError(f"no host {name!r} in lab {lab.id}")
        ctx = _Context(lab, roles, user)
    except HarnessError as exc:
        return all_errors(NAME, EXPECTED, f"could not run: {exc}")
    if service is not None:
        try:  # a service= that names nothing listening is the caller's mistake: exit 2
            real_service(lab, service, suite="ports")
        except UsageError:
            ctx.close()
            raise
    options = _Options(connections, privileged_host, privileged_port, lowered_host, service)
    try:
        for name, judge in _JUDGES:
            with rec.check(name, expected=EXPECTED[name]) as check:
                if name not in selected:
                    check.error(f"not run: left out by only={sorted(selected)}")
                    continue
                try:
                    with ctx.scope():
                        ok, observed, evidence = judge(ctx, options)
                except _Unavailable as exc:
                    check.error(str(exc))
                    continue
                except _NotApplicable as exc:
                    check.skip(str(exc))
                    continue
                check.observe(ok=ok, observed=observed, evidence=evidence)
        with _small_range(ctx, ephemeral_host) as host, _time_wait_kept(ctx, host):
            _ephemeral(ctx, rec, host, selected)
    finally:
        ctx.close()
    return rec.results()


_JUDGES: tuple[tuple[str, Callable[[_Context, _Options], Judgement]], ...] = (
    ("second-bind-tcp", _second_bind("tcp")),
    ("second-bind-udp", _second_bind("udp")),
    ("tcp-udp-same-port", _tcp_udp_same_port),
    ("wildcard-vs-specific", _wildcard_vs_specific(reuseaddr=False)),
    ("wildcard-vs-specific-reuseaddr", _wildcard_vs_specific(reuseaddr=True)),
    ("v6-wildcard-dual-stack", _v6_wildcard(v6only=False)),
    ("v6only-coexists", _v6_wildcard(v6only=True)),
    ("reuseaddr-time-wait", _reuseaddr_time_wait),
    ("reuseport-shares-connections", _reuseport_shares),
    ("reuseport-needs-option", _reuseport_needs_option),
    ("privileged-port-eacces", _privileged),
    ("unprivileged-port-start-lowered", _lowered),
    ("port-zero-in-range", _port_zero),
    ("service-port-in-use", _service_binds),
)


__all__ = [
    "Bind",
    "CHECKS",
    "EXPECTED",
    "NAME",
    "run",
]
