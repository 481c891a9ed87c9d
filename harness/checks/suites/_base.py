"""What every suite shares: check records, a recorder, and the hosts that play each role.

A suite is a module with `NAME`, `CHECKS` (the names of the checks it always reports, in
order: pytest collects them before anything runs) and `run(lab, **options) -> list[Check]`
that returns exactly one record per name in CHECKS. A check that could not be carried out
is reported with verdict "error" and the reason, never left out. A check whose claim does
not apply to what was asked (a UDP check of a suite pointed at a TCP server of the
user's) is reported with verdict "skip" and why: neither passed nor failed, it makes no
run fail (as pytest's skips), and the report counts it apart.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from harness.errors import HarnessError, UsageError

if TYPE_CHECKING:
    from harness.core.agent import Agent
    from harness.lab import Lab, LabHost

Verdict = Literal["pass", "fail", "error", "skip"]
Endpoint = tuple[str, int]
T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E")


@dataclass(frozen=True)
class Check:
    """One claim, checked: what was expected, what was observed, and the evidence."""

    suite: str
    name: str
    verdict: Verdict
    expected: str
    observed: str
    evidence: Mapping[str, Any] = field(default_factory=dict)  # JSON-able: tuples, pids, errnos
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def failed(self) -> bool:
        """Failed or could not be carried out: what makes a run fail (a skip does not)."""
        return self.verdict in ("fail", "error")

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "check": self.name,
            "verdict": self.verdict,
            "expected": self.expected,
            "observed": self.observed,
            "evidence": dict(self.evidence),
            "seconds": round(self.seconds, 4),
        }


class Recorder:
    """Collects a suite's checks; `check()` is a context manager that times the check and
    turns an unexpected exception into an "error" record instead of losing the others.

        rec = Recorder("multiplexing", CHECKS)
        with rec.check("udp-one-socket-serves-all", expected="...") as c:
            ...
            c.observe(ok=all_good, observed="...", evidence={...})
        return rec.results()
    """

    def __init__(self, suite: str, names: Sequence[str]) -> None:
        self.suite = suite
        self.names = tuple(names)
        self._records: dict[str, Check] = {}

    @contextlib.contextmanager
    def check(self, name: str, *, expected: str) -> Iterator[Observation]:
        if name not in self.names:
            raise ValueError(f"{self.suite}: {name!r} is not one of its CHECKS")
        observation = Observation()
        started = time.perf_counter()
        try:
            yield observation
        except (HarnessError, OSError, TimeoutError, AssertionError, ValueError) as exc:
            observation.error(f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3))
        seconds = time.perf_counter() - started
        self._records[name] = Check(
            self.suite,
            name,
            observation.verdict,
            expected,
            observation.observed,
            observation.evidence,
            seconds,
        )

    def results(self) -> list[Check]:
        """One record per declared check, in declared order; missing ones are errors."""
        return [
            self._records.get(name)
            or Check(self.suite, name, "error", "", "the suite ended before this check ran")
            for name in self.names
        ]


class Observation:
    """What a check saw; `observe` sets the verdict from `ok`."""

    def __init__(self) -> None:
        self.verdict: Verdict = "error"
        self.observed = "no observation was recorded"
        self.evidence: dict[str, Any] = {}

    def observe(
        self, *, ok: bool, observed: str, evidence: Mapping[str, Any] | None = None
    ) -> None:
        self.verdict = "pass" if ok else "fail"
        self.observed = observed
        self.evidence = dict(evidence or {})

    def skip(self, observed: str) -> None:
        """The claim does not apply here: `observed` says why, e.g. "not measured: ..."."""
        self.verdict = "skip"
        self.observed = observed

    def error(self, observed: str, detail: str = "") -> None:
        self.verdict = "error"
        self.observed = observed
        if detail:
            self.evidence = {**self.evidence, "traceback": detail}


def all_errors(suite: str, expected: Mapping[str, str], reason: str) -> list[Check]:
    """Every check of a suite (names and expectations in order) as an error with `reason`:
    what a suite returns when it could not gather any evidence."""
    return [Check(suite, name, "error", text, reason) for name, text in expected.items()]


@dataclass(frozen=True)
class Roles:
    """Which hosts play which part: one server, and the clients that talk to it."""

    server: str
    clients: tuple[str, ...]


def pick_roles(
    lab: Lab, server: str | None = None, clients: Sequence[str] | None = None, min_clients: int = 1
) -> Roles:
    """Sensible defaults: the last host that does not forward is the server, every other
    host (routers included) a client. Explicit choices are checked against the lab."""
    names = list(lab.hosts)
    for name in [server, *(clients or ())]:
        if name is not None and name not in lab.hosts:
            raise HarnessError(f"no host {name!r} in lab {lab.id} (hosts: {', '.join(names)})")
    if server is None:
        end_hosts = [n for n in names if not lab.hosts[n].spec.forwarding] or names
        server = end_hosts[-1]
    chosen = tuple(clients) if clients else tuple(n for n in names if n != server)
    if len(chosen) < min_clients:
        raise HarnessError(
            f"this suite needs {min_clients} client host(s) besides the server {server}; "
            f"lab {lab.id} has {len(chosen)}"
        )
    return Roles(server, chosen)


def target_address(client: LabHost, server: LabHost, family: int = 4) -> str:
    """The server's address a client should use: on a shared network if there is one."""
    mine = {i.network for i in client.spec.interfaces}
    for interface in server.spec.interfaces:
        if interface.network in mine:
            address = interface.address if family == 4 else interface.address6
            if address is not None:
                return str(address.ip)
    return server.address(family=family)


def gathered(
    gather: Callable[[], E],
    evaluate: Callable[[E], list[Check]],
    not_run: Callable[[str], list[Check]],
) -> list[Check]:
    """A suite's run: gather the evidence, then judge it. A usage error goes up to the
    caller; any other failure to gather makes every check an error that names it."""
    try:
        evidence = gather()
    except UsageError:
        raise
    except HarnessError as exc:
        return not_run(f"could not run: {exc}")
    return evaluate(evidence)


# ---- driving agents ----------------------------------------------------------------------


def parallel(fn: Callable[[T], R], items: Iterable[T], workers: int = 32) -> list[R]:
    """`fn` over `items` on a few threads (agents are driven from any thread), in order."""
    todo = list(items)
    if len(todo) <= 1:
        return [fn(item) for item in todo]
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(todo))) as pool:
        return list(pool.map(fn, todo))


def endpoint(value: Any) -> Endpoint:
    return (str(value[0]), int(value[1]))


def show(endpoint: Endpoint | None) -> str:
    if endpoint is None:
        return "-"
    address, port = endpoint
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Reply:
    """One echo as the client received it: `sent` is the tagged message it answered."""

    sent: str
    pid: int
    sock: int
    local: Endpoint  # the flow as the server saw it
    peer: Endpoint
    data: str
    rtt: float
    tries: int = 1


@dataclass(frozen=True)
class Flow:
    """One client socket: where it went, the four-tuple the client saw, what came back."""

    host: str
    pid: int  # the client process
    proto: str
    tag: str
    target: Endpoint
    local: Endpoint | None
    peer: Endpoint | None
    replies: tuple[Reply, ...]
    lost: tuple[str, ...] = ()
    error: str | None = None


def exchange(
    agent: Agent,
    flows: Sequence[Mapping[str, Any]],
    *,
    messages: int = 1,
    timeout: float = 10.0,
    retries: int = 2,
    linger0: bool = False,
) -> list[Flow]:
    """Run the agent's `exchange` op: open every flow at once, send `messages` tagged
    messages on each, and return what each flow saw and got back."""
    result = agent.request(
        "exchange",
        flows=[dict(f) for f in flows],
        messages=messages,
        timeout=timeout,
        retries=retries,
        linger0=linger0,
    )
    pid = int(result["pid"])
    out = []
    for raw in result["flows"]:
        error = raw.get("error")
        out.append(
            Flow(
                host=agent.host,
                pid=pid,
                proto=str(raw["proto"]),
                tag=str(raw["tag"]),
                target=endpoint(raw["target"]),
                local=endpoint(raw["local"]) if raw.get("local") else None,
                peer=endpoint(raw["peer"]) if raw.get("peer") else None,
                replies=tuple(_reply(echo) for echo in raw["echoes"]),
                lost=tuple(str(tag) for tag in raw.get("lost", ())),
                error=(
                    f"{error.get('errno') or 'error'}: {error.get('message')}"
                    if isinstance(error, dict)
                    else None
                ),
            )
        )
    return out


def _reply(echo: Mapping[str, Any]) -> Reply:
    reply = echo["reply"]
    return Reply(
        sent=str(echo["sent"]),
        pid=int(reply["pid"]),
        sock=int(reply["sock"]),
        local=endpoint(reply["local"]),
        peer=endpoint(reply["peer"]),
        data=str(reply["data"]),
        rtt=float(echo["rtt"]),
        tries=int(echo.get("tries", 1)),
    )
