"""Fuzzed topologies: whatever the loader is given, it answers a `Topology` or a `TopologyError`.

The guarantee, checked over thousands of generated inputs (`check_text`, `check_bytes`):

- `parse_topology(text, filename)` and `load_topology(path)` (on the same text written to a
  file) either return a `Topology` or raise `harness.errors.TopologyError`; nothing else
  escapes, no warning either (pytest turns warnings into errors).
- Every `Problem` names the file, has a 1-based line and column that lie inside the input
  (line <= number of line breaks + 1, as YAML 1.2 counts them: CRLF, CR or LF;
  column <= length of that line + 1, in characters), a message and a fix that print on
  one line (no control characters), and a well-formed key path. The key path is empty
  only for problems with the file as a whole, or with its top-level value itself, which
  has no key to name. `WHOLE_DOCUMENT` lists them exactly: the file cannot be read, is
  not UTF-8, has a `%YAML` directive other than 1.2, is not valid YAML (syntax error, a
  tab, a forbidden character, nesting beyond the parser's limit of 100, two documents),
  is empty, or its top level is not a mapping; or the top-level value has a tag, is a
  lone surrogate escape, has a key that is a list or mapping, merges (`<<:`) something
  that is not a mapping or itself, merges too deeply, or expands too far through aliases.
- Each call takes less than `TIME_LIMIT` (1 s) of CPU time (and `WALL_LIMIT` of elapsed
  time, which only a call that waits instead of computing would reach), and allocates
  at most `MEMORY_LIMIT` (64 MiB) at its peak (tracemalloc; see `measure`). The inputs
  are at most ~64 KiB of text: the loader's work is linear in the text except where
  aliases and merges expand it, and the loader caps those. Measured here: ordinary
  inputs peak below 1 MiB, an 800-host file near 8 MiB, the capped alias and merge
  bombs near 36 MiB; 64 MiB leaves room for another allocator or Python version
  without hiding a blow-up (an uncapped bomb needs gigabytes).
- The loader is pure: during each call an audit hook sees no file opened for writing, no
  directory made, nothing removed or renamed, no process, no socket, no foreign code;
  after each batch, no namespace appeared in /run/netns and nothing in NETHARNESS_RUN_DIR.
- A valid result satisfies the model's invariants, checked here independently of the
  loader (`check_topology`): names within their rules, subnets in the lab ranges, unscoped
  and disjoint, every address inside its network's subnet and neither its network nor its
  broadcast address, no address twice, gateways on a connected subnet and not the host's
  own, one route per destination, services and sysctls within their rules.
- The two entry points agree: for UTF-8 text the file gives the same problems (or the
  same topology) as the string; a call run again (to time it) gives the same answer.

Inputs come from six strategies: mutated files (the shipped topologies, tests/data and
the examples of docs/topology.md), generated near-valid topologies, random YAML
structures with anchors, aliases and tags, light YAML edge cases (directives, documents,
tags, BOMs, NULs, CR, odd numbers), heavy ones (alias and merge bombs, merge chains, deep
nesting, huge numbers, long strings, many hosts), and raw bytes (invalid UTF-8, BOMs,
UTF-16). Twenty generated bad inputs also go through the real command line
(`validate` and `up`): exit code 2, every problem's file:line:col on stderr, no
traceback, nothing created.

By default that is about 2,300 inputs, each loaded as a string and as a file, in about
a minute; `NETHARNESS_SOAK=1` runs ten times as many, with a fresh random seed each time
(a failure prints a `@reproduce_failure` blob to replay it). Inputs worth keeping go to
`tests/reliability/corpus/` (see its README), which `test_fuzz_corpus.py` replays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ipaddress
import os
import re
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness.errors import Problem, TopologyError
from harness.topology import BACKEND_NAMES, SYSCTLS, Topology, load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("NETHARNESS_SOAK") == "1"
SCALE = 10 if SOAK else 1

TIME_LIMIT = 1.0  # seconds per call
WALL_LIMIT = 5 * TIME_LIMIT  # the same, as elapsed time on a busy machine
MEMORY_LIMIT = 64 * 2**20  # bytes allocated at the peak of one call (tracemalloc)
NETNS_DIR = Path("/run/netns")

# -- running the loader -----------------------------------------------------------------

#: What the loader must never do while it runs (audit events, see sys.addaudithook).
FORBIDDEN_EVENTS = frozenset(
    {
        "os.mkdir",
        "os.rename",
        "os.remove",
        "os.rmdir",
        "os.symlink",
        "os.link",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.utime",
        "os.putenv",
        "os.unsetenv",
        "os.system",
        "os.exec",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.kill",
        "os.killpg",
        "subprocess.Popen",
        "socket.bind",
        "socket.connect",
        "socket.sendto",
        "shutil.copyfile",
        "shutil.move",
        "shutil.rmtree",
        "tempfile.mkstemp",
        "tempfile.mkdtemp",
        "ctypes.dlopen",
        "ctypes.call_function",
    }
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Guard:
    """Records forbidden audit events while `active`; installed once per process."""

    installed = False
    active = False
    seen: list[str] = []  # noqa: RUF012 - one process-wide recorder

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if not cls.active:
            return
        if event == "open":
            mode = args[1] if len(args) > 1 else None
            flags = args[2] if len(args) > 2 else 0
            writes = isinstance(mode, str) and any(c in mode for c in "wax+")
            if writes or (isinstance(flags, int) and flags & _WRITE_FLAGS):
                cls.seen.append(f"open {args[0]!r} mode={mode!r} flags={flags}")
        elif event in FORBIDDEN_EVENTS:
            cls.seen.append(f"{event} {args!r}"[:300])

    @classmethod
    def install(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one call of the loader gave, and what it cost."""

    topology: Topology | None
    problems: tuple[Problem, ...]
    seconds: float  # wall-clock time
    cpu: float  # CPU time of this process
    peak: int  # bytes allocated at the peak of the call (0 unless traced)


def measure(call: Callable[[], Topology], *, memory: bool = True) -> Outcome:
    """Run one loader call: only Topology or TopologyError, in time, in memory, purely.

    With `memory`, the call runs traced first (tracemalloc) for its peak allocation.
    Tracing slows Python down three to four times, so a traced call that was fast enough
    proves the time limit too; otherwise the call runs again untraced, and every run must
    give the same answer. The time limit holds for CPU and wall-clock time, in one of
    three untraced tries: a virtual machine can stall a process for a second now and
    then (and charge it the CPU time). The garbage collector waits until a call is over:
    its pauses depend on everything else in this process, not on the input.
    """
    first = _run(call, traced=memory)
    if memory:
        assert first.peak < MEMORY_LIMIT, f"one call allocated {first.peak / 2**20:.1f} MiB"
    timed = first
    tries = 0
    while (timed.seconds >= WALL_LIMIT or timed.cpu >= TIME_LIMIT) and tries < 3:
        timed = _run(call, traced=False)  # only an input that is slow every time is slow
        tries += 1
        assert timed.problems == first.problems, "the same input gave other problems"
        assert timed.topology == first.topology, "the same input gave another topology"
    assert timed.cpu < TIME_LIMIT, f"one call took {timed.cpu:.2f} s of CPU time"
    # CPU time is the input's cost; wall time only has to rule out waiting (I/O, sleeps),
    # with room for a machine whose other cores' work stretches every call.
    assert timed.seconds < WALL_LIMIT, f"one call took {timed.seconds:.2f} s"
    return dataclasses.replace(timed, peak=first.peak)


def _run(call: Callable[[], Topology], *, traced: bool) -> Outcome:
    start_tracing = traced and not tracemalloc.is_tracing()
    if start_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    collecting = gc.isenabled()
    gc.disable()
    _Guard.seen.clear()
    _Guard.active = True
    cpu = time.process_time()
    start = time.perf_counter()
    topology: Topology | None = None
    error: TopologyError | None = None
    try:
        topology = call()
    except TopologyError as exc:
        error = exc
    finally:
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        _Guard.active = False
        if collecting:
            gc.enable()
        _, peak = tracemalloc.get_traced_memory()
        if start_tracing:
            tracemalloc.stop()
    assert not _Guard.seen, f"the loader had side effects: {_Guard.seen}"
    problems: tuple[Problem, ...] = ()
    if error is not None:
        problems = tuple(error.problems)
        assert str(error).split("\n") == [str(p) for p in problems], "one problem per line"
        assert error.exit_code == 2
        assert problems
    else:
        assert topology is not None
    return Outcome(topology, problems, seconds, cpu, peak - before if traced else 0)


# -- the properties ---------------------------------------------------------------------

_BREAK = re.compile("\r\n|[\r\n]")  # YAML 1.2 line breaks (NEL, LS and PS are not)

#: The only problems that may have an empty key path (see the module docstring).
WHOLE_DOCUMENT = tuple(
    re.compile(pattern)
    for pattern in (
        r"cannot read the topology file: ",
        r"byte 0x[0-9a-f]{2} is not UTF-8 text\Z",
        r"%YAML \S+ directive: topologies are read as YAML 1\.2\Z",
        r"not valid YAML: ",
        r"a tab character cannot be used here\Z",
        r"character .* is not allowed in YAML ",
        r"the document is nested far too deeply\Z",
        r"the file is empty\Z",
        r"the top level must be a mapping with name, networks and hosts, got ",
        # the top-level value itself (it has no key to name):
        r"unsupported YAML tag ",
        r"a key must be plain text, not a list or mapping\Z",
        r"`<<:` merges only mappings\Z",
        r"merges \(`<<:`\) are nested too deeply\Z",
        r"an alias refers to itself\Z",
        r"the document expands to more than \d+ values through aliases\Z",
        r"'.*' has an escape of half a UTF-16 pair, which is no character\Z",
    )
)
_QUOTED = r'\["(?:[^"\\]|\\.)*"\]'
_PATH = re.compile(
    rf"(?:[A-Za-z0-9_-]+|\[\d+\]|{_QUOTED})(?:\.[A-Za-z0-9_-]+|\[\d+\]|{_QUOTED})*\Z"
)


def lines_of(text: str) -> list[str]:
    """The lines of `text` as YAML counts them; one more than there are line breaks."""
    return _BREAK.split(text)


def check_problems(problems: tuple[Problem, ...], filename: str, lines: list[str]) -> None:
    """Every problem: this file, a position inside it, a message, a fix, a key path."""
    assert problems
    assert list(problems) == sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path))
    assert len(set(problems)) == len(problems), "a problem is reported twice"
    for problem in problems:
        assert problem.file == filename, problem
        assert type(problem.line) is int, problem
        assert type(problem.column) is int, problem
        assert 1 <= problem.line <= len(lines), (problem, len(lines))
        assert 1 <= problem.column <= len(lines[problem.line - 1]) + 1, (
            problem,
            lines[problem.line - 1][:200],
        )
        assert problem.message.strip(), problem
        assert problem.fix.strip(), problem
        assert str(problem).isprintable(), problem  # user text is escaped: one line each
        assert "Traceback" not in str(problem)
        assert "pydantic" not in str(problem).lower(), problem
        if problem.path:
            assert _PATH.match(problem.path), problem
        else:
            assert any(p.match(problem.message) for p in WHOLE_DOCUMENT), problem


_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
_LAB_RANGES = {
    4: (IPv4Network("10.0.0.0/8"), IPv4Network("198.18.0.0/15")),
    6: (IPv6Network("fd00::/8"), IPv6Network("2001:db8::/32")),
}


def check_topology(topology: Topology, source: str) -> None:
    """The model's invariants, checked without the loader's own helpers."""
    assert type(topology) is Topology
    assert topology.source == source
    assert _NAME.match(topology.name), topology.name
    assert len(topology.name) <= 40, topology.name
    assert isinstance(topology.networks, MappingProxyType)
    assert isinstance(topology.hosts, MappingProxyType)
    assert len(topology.hosts) >= 1
    placed: list[IPv4Network | IPv6Network] = []
    for name, net in topology.networks.items():
        assert net.name == name
        assert _NAME.match(name), name
        assert len(name) <= 15, name
        assert name not in ("lo", "all", "default")
        assert net.subnet is not None or net.subnet6 is not None, name
        assert net.subnet is None or type(net.subnet) is IPv4Network
        assert net.subnet6 is None or type(net.subnet6) is IPv6Network
        for subnet in (net.subnet, net.subnet6):
            if subnet is None:
                continue
            inside = any(subnet.subnet_of(r) for r in _LAB_RANGES[subnet.version])  # type: ignore[arg-type]
            assert inside, subnet
            assert "%" not in str(subnet), subnet  # no scope (%eth0) on a subnet
            assert subnet.prefixlen <= (30 if subnet.version == 4 else 127), subnet
            for other in placed:
                assert other.version != subnet.version or not subnet.overlaps(other), subnet
            placed.append(subnet)
    everywhere: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for name, host in topology.hosts.items():
        assert host.name == name
        assert _NAME.match(name), name
        assert len(name) <= 40, name
        assert host.backend in BACKEND_NAMES
        assert type(host.forwarding) is bool
        own: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        connected: list[IPv4Network | IPv6Network] = []
        ifnames: set[str] = set()
        networks: set[str] = set()
        for interface in host.interfaces:
            net = topology.networks[interface.network]
            assert interface.network not in networks
            networks.add(interface.network)
            assert host.interface(interface.network) is interface
            ifname = interface.ifname
            assert _NAME.match(ifname), ifname
            assert len(ifname) <= 15, ifname
            assert ifname not in ("lo", "all", "default"), ifname
            assert ifname not in ifnames, ifname
            ifnames.add(ifname)
            pairs = ((interface.address, net.subnet), (interface.address6, net.subnet6))
            for address, subnet in pairs:
                assert (address is None) == (subnet is None), (name, interface)
                if address is None or subnet is None:
                    continue
                assert address.version == subnet.version
                assert "%" not in str(address), address
                assert address.network == subnet, (address, subnet)
                assert address.ip != subnet.network_address, address
                assert subnet.version == 6 or address.ip != subnet.broadcast_address, address
                assert address.ip not in everywhere, f"{address.ip} twice"
                everywhere.add(address.ip)
                own.add(address.ip)
                connected.append(subnet)
        with pytest.raises(KeyError):
            host.interface("no such network, ever")
        destinations: set[IPv4Network | IPv6Network] = set()
        for route in host.routes:
            assert route.to.version == route.via.version, route
            assert "%" not in str(route.to), route
            assert "%" not in str(route.via), route
            assert route.to not in destinations, route
            destinations.add(route.to)
            assert route.to not in connected, route
            on = [s for s in connected if s.version == route.via.version and route.via in s]
            assert on, f"gateway {route.via} of {name} is not on a connected subnet"
            assert route.via not in own, route
            assert route.via != on[0].network_address, route
            assert on[0].version == 6 or route.via != on[0].broadcast_address, route
        _check_programs(host)
        binds: set[tuple[str, int, str]] = set()
        for service in host.services:
            assert service.proto in ("tcp", "udp")
            assert type(service.port) is int
            assert 1 <= service.port <= 65535
            wildcard = service.address is None
            if not wildcard:
                assert service.address is not None
                bound = ipaddress.ip_address(service.address)
                assert str(bound) == service.address
                assert bound.is_unspecified or bound in own, service
            for bind in ["0.0.0.0", "::"] if wildcard else [str(service.address)]:
                key = (service.proto, service.port, bind)
                assert key not in binds, service
                binds.add(key)
        assert isinstance(host.sysctls, MappingProxyType)
        for key, value in host.sysctls.items():
            assert key in SYSCTLS, key
            assert type(value) is str, (key, value)
            assert value, key
            assert value == value.strip(), (key, value)
        ports = host.sysctls.get("net.ipv4.ip_local_port_range", "32768 60999").split()
        low, high = int(ports[0]), int(ports[1])
        assert 1 <= low <= high <= 65535
        assert int(host.sysctls.get("net.ipv4.ip_unprivileged_port_start", "1024")) <= low
    for cell in topology.expectations:
        if cell.owner is not None:
            target = topology.hosts[cell.target]
            assert cell.state == "open", cell
            docker = cell.owner == "main" and target.backend == "docker"
            assert docker or cell.owner in [p.name for p in target.run], cell


def _check_programs(host: Any) -> None:
    """A host's `run:`, `command:` and the process names its services give."""
    names = [program.name for program in host.run]
    assert len(set(names)) == len(names), names
    assert host.backend != "ssh" or not host.run, host.name
    assert host.command is None or (host.backend == "docker" and host.command[0]), host.name
    for program in host.run:
        assert _NAME.match(program.name), program
        assert program.name != "main", program
        assert len(program.name) <= 40, program
        assert type(program.argv) is tuple, program
        assert program.argv, program
        assert program.argv[0], program
        assert all(type(word) is str and "\0" not in word for word in program.argv), program
        assert all(type(v) is str for v in program.env.values()), program
        assert program.cwd is None or program.cwd.startswith("/"), program
        assert 0 < program.ready_timeout <= 3600, program
        assert len(set(program.ready)) == len(program.ready), program
        for ready in program.ready:
            assert ready.proto in ("tcp", "udp"), program
            assert 1 <= ready.port <= 65535, program
    for service in host.services:
        if service.process is not None:
            docker = service.process == "main" and host.backend == "docker"
            assert docker or service.process in names, service


def same_outcome(first: Outcome, second: Outcome) -> bool:
    """The string and the file gave the same answer (file names aside)."""
    if first.topology is not None and second.topology is not None:
        return dataclasses.replace(first.topology, source=second.topology.source) == (
            second.topology
        )
    strip = [(p.line, p.column, p.path, p.message, p.fix) for p in first.problems]
    return strip == [(p.line, p.column, p.path, p.message, p.fix) for p in second.problems]


def check_bytes(raw: bytes, path: Path, *, memory: bool = True) -> Outcome:
    """Write `raw` to `path`, load it, check every property; what the file gave."""
    path.write_bytes(raw)
    outcome = measure(lambda: load_topology(path), memory=memory)
    text = raw.decode("utf-8", "replace")
    if outcome.topology is not None:
        check_topology(outcome.topology, str(path))
    else:
        check_problems(outcome.problems, str(path), lines_of(text))
    return outcome


def check_text(text: str, path: Path, filename: str = "fuzz.yaml") -> Outcome:
    """Check `text` through parse_topology and, written as UTF-8, through load_topology."""
    outcome = measure(lambda: parse_topology(text, filename))
    if outcome.topology is not None:
        check_topology(outcome.topology, filename)
    else:
        check_problems(outcome.problems, filename, lines_of(text))
    # the file costs what the string does, plus its bytes: its memory is not traced again
    from_file = check_bytes(text.encode("utf-8", "surrogatepass"), path, memory=False)
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert same_outcome(outcome, from_file), (outcome.problems[:3], from_file.problems[:3])
    return outcome


def classify(outcome: Outcome) -> str:
    """A label for statistics: valid, or the kind of the first problem."""
    if outcome.topology is not None:
        return "valid"
    first = outcome.problems[0].message
    if not outcome.problems[0].path:
        return "document"
    if first.startswith(("unknown key", "missing required", "expected ", "duplicate key")):
        return "structure"
    return "semantic"


# -- fixtures ---------------------------------------------------------------------------


def _netns() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def new_namespaces(before: set[str], run_dir: Path, patience: float = 10.0) -> set[str]:
    """Namespaces made since `before` that are not another run's.

    Other tests on this machine (other xdist workers, other checkouts) make labs while
    this runs: a namespace that goes away within `patience` seconds, or whose lab has a
    process of another run inside (one with another NETHARNESS_RUN_DIR), is theirs. A
    namespace that a loader or a refused command made would stay, empty or ours.
    """
    suspects = _netns() - before
    deadline = time.monotonic() + patience
    while suspects and time.monotonic() < deadline:
        time.sleep(0.5)
        suspects &= _netns()
    foreign = _labs_of_other_runs(suspects, run_dir)
    return {name for name in suspects if _lab_id(name) not in foreign}


def _lab_id(namespace: str) -> str:
    return "-".join(namespace.split("-")[:2])  # nh-<lab>-<host> and nh-<lab>: nh-<lab>


def _labs_of_other_runs(namespaces: set[str], run_dir: Path) -> set[str]:
    inodes: dict[int, str] = {}
    for name in namespaces:
        with contextlib.suppress(OSError):
            inodes[os.stat(NETNS_DIR / name).st_ino] = name
    ours = f"NETHARNESS_RUN_DIR={run_dir}".encode()
    labs: set[str] = set()
    for proc in Path("/proc").iterdir() if inodes else []:
        try:
            inside = inodes.get(os.stat(proc / "ns" / "net").st_ino)
            if inside is not None and ours not in (proc / "environ").read_bytes().split(b"\0"):
                labs.add(_lab_id(inside))
        except OSError:  # not a process, or gone
            continue
    return labs


@contextlib.contextmanager
def creating_nothing(run_dir: Path) -> Iterator[Path]:
    """Around a batch: no namespace appears, nothing in `run_dir` (NETHARNESS_RUN_DIR)."""
    _Guard.install()
    run_dir.mkdir(exist_ok=True)
    before = _netns()
    yield run_dir
    assert list(run_dir.iterdir()) == []
    assert not new_namespaces(before, run_dir)


@pytest.fixture(autouse=True)
def creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test is a batch: see `creating_nothing`."""
    monkeypatch.setenv("NETHARNESS_RUN_DIR", str(tmp_path / "run"))
    with creating_nothing(tmp_path / "run") as run_dir:
        yield run_dir


def fuzz(examples: int) -> settings:
    """Reproducible by default (fixed seed, no database); soak: 10x, a new seed each run."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=not SOAK,
        database=None,
        print_blob=SOAK,
        # no explain phase: it traces every line (sys.settrace), which slows the loader
        # down a hundredfold and would fail the time limit for nothing
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- seeds and tokens -------------------------------------------------------------------


def _seeds() -> list[str]:
    files = sorted((ROOT / "tests" / "data" / "good").glob("*.yaml"))
    files += sorted((ROOT / "topologies").glob("*.yaml"))
    files += sorted((ROOT / "tests" / "data" / "bad").glob("*.yaml"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    docs = (ROOT / "docs" / "topology.md").read_text(encoding="utf-8")
    texts += re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
    return texts


SEEDS = _seeds()

#: Scalars and fragments that have tripped YAML loaders, or sit on a rule's boundary.
TOKENS = [
    *("", "~", "null", "Null", "NULL", "true", "false", "True", "yes", "no", "on", "off"),
    *("y", "n", "0", "-0", "+1", "1", "-1", "65535", "65536", "2147483647", "2147483648"),
    *("0x1F", "0X1f", "0o17", "0O17", "017", "0b101", "1_000", "1__0", "0x_1", "+0x1F"),
    *("-0x1", "1e3", "1E+3", "1.5", ".5", "5.", ".inf", "-.inf", "+.INF", ".nan", ".NaN"),
    *("1e999", "-1e999", "99999999999999999999999", "0x" + "F" * 40, "22:22", "1:30:00"),
    *("2001-12-14", "2001-12-14t21:59:43.10-05:00", "!!str", "!!int", "!!binary", "!foo"),
    *("!<tag:yaml.org,2002:str>", "!!set", "!!omap", "!!merge", "!!python/object:os.system"),
    *("&a", "*a", "&b", "*b", "&a {}", "*undefined", "<<", "<<: *a", "? ", "- ", "-", "|"),
    *(">", "|-", ">+", "'", '"', "''", '""', "'a''b'", '"\\x00"', '"\\ud800"', '"\\e[31m"'),
    *('"\\N"', '"\\_"', '"\\L"', '"\\P"', "{", "}", "[", "]", "{}", "[]", ",", ":", ": "),
    *("#", " #", "%", "@", "`", "---", "...", "\t", "\x00", "\x07", "\x1b", "\ufeff"),
    *(
        "\u2028",
        "\u2029",
        "\x85",
        "\r",
        "\r\n",
        "é",
        "h\u0308",
        "ß",
        "İ",
        "\U0001d518",
        "\U0001f600",
    ),
    *(
        "\uff2c\uff21\uff2e",
        "\uff481",
        "\u200b",
        "\u202e",
        "lan\u00a0",
        "LAN",
        "lo",
        "all",
        "default",
        "auto",
    ),
    *("netns", "docker", "tcp", "udp", "sctp", "TCP", "a" * 16, "a" * 41, "h" * 300),
    *("10.0.1.0/24", "10.0.1.5/24", "10.0.1.5", "10.0.1.0", "10.0.1.255", "10.0.1.1"),
    *("10.0.0.0/8", "10.0.1.128/25", "198.18.0.0/15", "198.18.0.0/30", "198.18.0.0/31"),
    *("192.168.1.0/24", "8.8.8.8", "0.0.0.0", "0.0.0.0/0", "255.255.255.255", "10.0.1.0/33"),
    *("10.0.1.0/255.255.255.0", "10.0.1.0/0.0.0.255", "10.0.1.0/-1", "10.0.1.0/", "/24"),
    *("10.0.1.01", "010.0.1.1", "10.0.1", "10.1", "167772417", "1.2.3.4.5", "10.0.1.1%eth0"),
    *('"fd00:1::/64"', '"fd00:1::1"', '"fd00:1::"', '"::"', '"::/0"', '"fd00:1::1/64"'),
    *('"fe80::1"', '"fe80::1%eth0"', '"fd00::%1/64"', '"::ffff:10.0.1.1"', '"2001:db8::/126"'),
    *('"fd00:1::/127"', '"fd00:1::/128"', '"fd00:1:::1"', '"fd00:1::1::1"', "fd00:1::1"),
    *("net.ipv4.ip_local_port_range", "net.core.somaxconn", "net.ipv4.ip_forward"),
    *('"40000 40009"', '"1 65535"', '"0 10"', '"50000 40000"', '"40000"', '"a b"', '" 1  2 "'),
    *("net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_tw_reuse", "net.ipv6.icmp.ratelimit"),
    *("name", "networks", "hosts", "subnet", "subnet6", "address", "address6", "ifname"),
    *("routes", "to", "via", "forwarding", "sysctls", "backend", "services", "proto", "port"),
    *("run", "command", "user", "env", "cwd", "ready", "listen", "timeout", "process", "owner"),
    *("main", "tcp/8080", "udp/53", "TCP/80", "tcp/0", "8080", "'a b", '"x', "a\\", "a|b"),
    *("sh -c 'echo hi'", "$HOME", "PORT=80 srv", "/srv", "srv", "nobody", "65534", "a:b"),
]
#: Characters for random text: YAML indicators, whitespace, breaks, odd unicode.
ALPHABET = st.sampled_from(
    [
        *"abcz019 -_.:/,#&*!|>'\"%@`{}[]?<=~\\\t\n\r",
        *("\x00", "\x85", "\u2028", "\ufeff", "é", "\u0308", "\U0001d518", "\x1b", "\x7f"),
        "\ud800",
    ]
)
TEXT = st.text(ALPHABET, max_size=12)
TOKEN = st.one_of(st.sampled_from(TOKENS), TEXT)

_TOKEN_SPAN = re.compile(r"[^\s:{}\[\],#]+")


# -- strategy: mutated files ------------------------------------------------------------


def _insert(draw: st.DrawFn, text: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(TOKEN) + text[at:]


def _delete(draw: st.DrawFn, text: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + text[at + draw(st.integers(1, 40)) :]


def _replace_token(draw: st.DrawFn, text: str) -> str:
    spans = [m.span() for m in _TOKEN_SPAN.finditer(text)]
    if not spans:
        return _insert(draw, text)
    start, end = draw(st.sampled_from(spans))
    return text[:start] + draw(TOKEN) + text[end:]


def _line_edit(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    j = draw(st.integers(0, len(lines) - 1))
    line = lines[i]
    how = draw(st.sampled_from(["delete", "duplicate", "move", "indent", "dedent", "tab"]))
    if how == "delete":
        del lines[i]
    elif how == "duplicate":
        lines.insert(j, line)
    elif how == "move":
        del lines[i]
        lines.insert(j, line)
    elif how == "indent":
        lines[i] = " " * draw(st.integers(1, 6)) + line
    elif how == "dedent":
        lines[i] = line.lstrip(" ")
    else:
        lines[i] = "\t" + line.lstrip(" ")
    return "\n".join(lines)


def _splice(draw: st.DrawFn, text: str) -> str:
    other = draw(st.sampled_from(SEEDS)).split("\n")
    start = draw(st.integers(0, len(other) - 1))
    chunk = "\n".join(other[start : start + draw(st.integers(1, 6))])
    lines = text.split("\n")
    at = draw(st.integers(0, len(lines)))
    return "\n".join([*lines[:at], chunk, *lines[at:]])


def _whole(draw: st.DrawFn, text: str) -> str:
    how = draw(
        st.sampled_from(
            ["crlf", "cr", "nel", "bom", "bom-inside", "truncate", "document", "directive"]
        )
    )
    if how == "crlf":
        return text.replace("\n", "\r\n")
    if how == "cr":
        return text.replace("\n", "\r")
    if how == "nel":
        return text.replace("\n", draw(st.sampled_from(["\x85", "\u2028", "\u2029"])))
    if how == "bom":
        return "\ufeff" + text
    if how == "bom-inside":
        return _insert_exact(draw, text, "\ufeff")
    if how == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if how == "document":
        return (
            draw(st.sampled_from(["---\n", "--- ", "...\n", ""]))
            + text
            + draw(st.sampled_from(["\n---\n", "\n...\n", "\n--- x\n", "\n...\n---\n" + text]))
        )
    version = draw(st.sampled_from(["1.2", "1.1", "1.0", "2.0", "1.2.3", ""]))
    return f"%YAML {version}\n---\n{text}"


def _insert_exact(draw: st.DrawFn, text: str, piece: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + piece + text[at:]


MUTATIONS = [_insert, _delete, _replace_token, _replace_token, _line_edit, _splice, _whole]


@st.composite
def mutated_files(draw: st.DrawFn) -> str:
    """A shipped topology, a good or bad test file or a docs example, mutated 1-4 times."""
    text: str = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


# -- strategy: near-valid generated topologies ------------------------------------------

NET_NAMES = ["lan", "wan", "dmz", "a", "b", "net-1", "x_y", "lo", "LAN", "1net", "n" * 16]
HOST_NAMES = ["h1", "h2", "h3", "r1", "web", "db-1", "H1", "h.1", "x" * 41, "default"]
# the tidy pools hold disjoint subnets; the odd ones overlap them or break a rule
SUBNETS4 = ["10.0.1.0/24", "10.0.2.0/24", "198.18.0.0/30", "10.0.3.0/29", "10.200.0.0/16"]
SUBNETS4_ODD = ["10.0.1.128/25", "10.0.0.0/8", "198.18.0.0/31", "10.0.1.5/24", "192.168.1.0/24"]
SUBNETS6 = ["fd00:1::/64", "fd00:2::/64", "2001:db8::/126", "fd00:3::/120"]
SUBNETS6_ODD = ["fd00:1::/127", "fd00:1::/128", "fe80::/64", "fd00:1::1/64", "10.0.9.0/24"]
SYSCTL_VALUES: dict[str, list[Any]] = {
    "net.ipv4.ip_local_port_range": ["40000 40009", "1024 65535", " 50000   50001 "],
    "net.ipv4.ip_unprivileged_port_start": [0, 80, 1024, "443"],
    "net.ipv4.tcp_fin_timeout": [1, 30, 3600],
    "net.ipv4.tcp_tw_reuse": [0, 1, 2],
    "net.ipv4.tcp_rfc1337": [0, 1],
    "net.ipv4.tcp_syn_retries": [1, 127],
    "net.core.somaxconn": [0, 4096, 2**31 - 1],
}


def _near(draw: st.DrawFn, subnets: list[str], tidy: bool = False) -> str:
    """An address near the start (or, untidy, the end) of one of `subnets`."""
    text = draw(st.sampled_from(subnets or ["10.0.1.0/24"]))
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text
    if tidy:
        return str(net.network_address + draw(st.integers(1, min(6, net.num_addresses - 2))))
    offset = draw(st.integers(-2, 4))
    base = net.broadcast_address if draw(st.booleans()) else net.network_address
    try:
        return str(base + offset)
    except ipaddress.AddressValueError:
        return str(base)


@st.composite
def near_valid_topologies(draw: st.DrawFn) -> Any:
    """Topologies as data: tidy ones pick sensible values (most are valid), others not."""
    tidy = draw(st.booleans())
    networks: dict[str, Any] = {}
    names = draw(
        st.lists(st.sampled_from(NET_NAMES[:7] if tidy else NET_NAMES), min_size=tidy, max_size=3)
    )
    free4 = draw(st.permutations(SUBNETS4 if tidy else SUBNETS4 + SUBNETS4_ODD))
    free6 = draw(st.permutations(SUBNETS6 if tidy else SUBNETS6 + SUBNETS6_ODD))
    for i, name in enumerate(names):
        net: dict[str, Any] = {}
        if draw(st.booleans()):
            net["subnet"] = free4[i]
        if draw(st.booleans()) or not net:
            net["subnet6"] = free6[i]
        if not tidy and draw(st.integers(0, 9)) == 0:
            net[draw(st.sampled_from(["subnets", "vlan", "subnet"]))] = draw(TOKEN)
        networks[name] = net
    hosts: dict[str, Any] = {}
    host_names = HOST_NAMES[:6] if tidy else HOST_NAMES
    for name in draw(st.lists(st.sampled_from(host_names), min_size=1, max_size=4)):
        hosts[name] = _host(draw, tidy, networks)
    top_names = ["t", "lab-1", "x_y"] if tidy else ["t", "Lab", "x" * 41, "9", ""]
    top: dict[str, Any] = {"name": draw(st.sampled_from(top_names))}
    if draw(st.booleans()) or networks:
        top["networks"] = networks
    top["hosts"] = hosts
    return top


def _host(draw: st.DrawFn, tidy: bool, networks: dict[str, Any]) -> dict[str, Any]:
    host: dict[str, Any] = {}
    attach: dict[str, Any] = {}
    connected: dict[int, list[str]] = {4: [], 6: []}
    choices = list(networks) if tidy else [*networks, "ghost"]
    for net_name in draw(st.lists(st.sampled_from(choices), max_size=3)) if choices else []:
        net = networks.get(net_name, {})
        v4 = [net["subnet"]] if "subnet" in net else ([] if tidy else SUBNETS4)
        v6 = [net["subnet6"]] if "subnet6" in net else ([] if tidy else SUBNETS6)
        connected[4] += v4
        connected[6] += v6
        kinds = ["auto", "none", "map"] + ["v4"] * bool(v4) + ["v6"] * bool(v6)
        kind = draw(st.sampled_from(kinds))
        if kind in ("auto", "none"):
            attach[net_name] = "auto" if kind == "auto" else None
        elif kind in ("v4", "v6"):
            attach[net_name] = _near(draw, v4 if kind == "v4" else v6, tidy)
        else:
            spelled: dict[str, Any] = {}
            if v4 and draw(st.booleans()):
                spelled["address"] = _near(draw, v4, tidy)
            if v6 and draw(st.booleans()):
                spelled["address6"] = _near(draw, v6, tidy)
            if draw(st.booleans()):
                spelled["ifname"] = draw(st.sampled_from(["eth0", "eth1", "lan", "lo"]))
            attach[net_name] = spelled
    if draw(st.booleans()) or attach:
        host["networks"] = attach
    routes = []
    families = [f for f in (4, 6) if connected[f]] if tidy else [4, 6]
    chosen = draw(st.lists(st.sampled_from(families), max_size=2, unique=tidy)) if families else []
    for family in chosen:
        via = _near(draw, connected[family], tidy)
        if tidy:
            far = {4: ["default", "10.9.0.0/16", "198.18.1.0/24"], 6: ["default", "fd00:9::/64"]}
            to = draw(st.sampled_from(far[family]))
        else:
            to = draw(st.sampled_from(["default", *SUBNETS4, *SUBNETS6, "10.0.1.5/24", "::/0"]))
        routes.append({"to": to, "via": via})
    if routes:
        host["routes"] = routes
    if draw(st.integers(0, 3)) == 0:
        host["forwarding"] = draw(st.sampled_from([True, False] if tidy else [True, "yes", 1]))
    if draw(st.integers(0, 3)) == 0:
        host["sysctls"] = _sysctls(draw, tidy)
    programs: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        host["run"] = _programs(draw, tidy)
        programs = [p["name"] for p in host["run"] if isinstance(p.get("name"), str)]
    if draw(st.integers(0, 5)) == 0:
        host["backend"] = "docker"
        if draw(st.booleans()):
            host["command"] = draw(st.sampled_from(COMMANDS if tidy else COMMANDS + BAD_COMMANDS))
    if draw(st.integers(0, 3)) == 0:
        host["services"] = _services(draw, tidy, connected[4] + connected[6])
        names = [*programs, "main"] if tidy else [*programs, "main", "ghost", "Main"]
        for service in host["services"] if programs or not tidy else []:
            if draw(st.booleans()):
                service["process"] = draw(st.sampled_from(names))
    if not tidy and draw(st.integers(0, 5)) == 0:
        host[draw(st.sampled_from(["backend", "fowarding", "route"]))] = draw(TOKEN)
    return host


def _sysctls(draw: st.DrawFn, tidy: bool) -> dict[str, Any]:
    keys = list(SYSCTL_VALUES) if tidy else [*SYSCTLS, "net.ipv4.ip_forward", "kernel.panic"]
    chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))
    untidy: list[Any] = [-1, 3601, 2**31, "50000 40000", "1 2 3", True, None, 1.5, "٣", 0]
    return {
        key: draw(st.sampled_from(SYSCTL_VALUES.get(key, [1]) + ([] if tidy else untidy)))
        for key in chosen
    }


COMMANDS: list[Any] = ["srv", "httpd -f -p 80", "sh -c 'echo \"a b\"'", ["a", "-p", 80]]
BAD_COMMANDS: list[Any] = ["", [], "a 'b", "a \\", "a | b", "X=1 a", [True], 5, ["", "x"]]


def _programs(draw: st.DrawFn, tidy: bool) -> list[Any]:
    names = ["web", "db", "dns", "a-1"] if tidy else ["web", "main", "Web", "", "x" * 41]
    programs = []
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=tidy)):
        entry: dict[str, Any] = {"name": name}
        entry["command"] = draw(st.sampled_from(COMMANDS if tidy else COMMANDS + BAD_COMMANDS))
        if draw(st.integers(0, 3)) == 0:
            entry["user"] = draw(st.sampled_from(["nobody", 0] if tidy else ["a:b", -1, "x y"]))
        if draw(st.integers(0, 3)) == 0:
            entry["env"] = {"A": "1", "B": 2} if tidy else {"1A": "x", "B": True, "C": None}
        if draw(st.integers(0, 3)) == 0:
            entry["cwd"] = "/srv" if tidy else draw(st.sampled_from(["srv", "", 5]))
        if draw(st.integers(0, 2)) == 0:
            listen = ["tcp/80", ["udp/53", "tcp/53"]] if tidy else [8080, "TCP/80", [], "tcp/0"]
            ready: dict[str, Any] = {"listen": draw(st.sampled_from(listen))}
            if draw(st.booleans()):
                ready["timeout"] = draw(st.sampled_from([1, 2.5] if tidy else [0, -1, "5", 1e9]))
            entry["ready"] = ready
        programs.append(entry)
    return programs


def _services(draw: st.DrawFn, tidy: bool, subnets: list[str]) -> list[Any]:
    services = []
    ports = [22, 80, 443, 1, 65535] if tidy else [0, 65536, "80", 443, 2**70]
    for port in draw(st.lists(st.sampled_from(ports), min_size=1, max_size=3, unique=tidy)):
        service: dict[str, Any] = {
            "proto": draw(st.sampled_from(["tcp", "udp"] if tidy else ["tcp", "udp", "sctp"])),
            "port": port,
        }
        if draw(st.booleans()):
            bind = ["0.0.0.0", "::"] if tidy else ["0.0.0.0", "::", _near(draw, subnets)]
            service["address"] = draw(st.sampled_from(bind))
        services.append(service)
    return services


# -- emitting data as YAML --------------------------------------------------------------

_PLAIN_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./ -]*\Z")


def _quoted(draw: st.DrawFn, text: str) -> str:
    if draw(st.booleans()) and "\n" not in text and all(c.isprintable() for c in text):
        return "'" + text.replace("'", "''") + "'"
    out = ""
    for c in text:
        if c in '"\\':
            out += "\\" + c
        elif c.isprintable() and c != "\ufeff" and not ("\ud800" <= c <= "\udfff"):
            out += c
        elif ord(c) < 0x100:
            out += f"\\x{ord(c):02x}"
        elif ord(c) < 0x10000:
            out += f"\\u{ord(c):04x}"
        else:
            out += f"\\U{ord(c):08x}"
    return f'"{out}"'


def _scalar(draw: st.DrawFn, value: Any) -> str:
    if value is None:
        return draw(st.sampled_from(["", "~", "null"]))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return draw(st.sampled_from([str(value), hex(value) if value >= 0 else str(value)]))
    if isinstance(value, float):
        special = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}
        return special.get(repr(value), repr(value))
    text = str(value)
    if _PLAIN_SAFE.match(text) and not text.endswith(" ") and draw(st.booleans()):
        return text
    return _quoted(draw, text)


def emit(draw: st.DrawFn, value: Any, indent: int = 0, anchors: list[str] | None = None) -> str:
    """`value` as YAML, block or flow style chosen per node, with anchors and aliases."""
    anchors = [] if anchors is None else anchors
    prefix = ""
    if isinstance(value, dict | list) and value:
        choice = draw(st.integers(0, 19))
        if choice == 0 and anchors:
            return "*" + draw(st.sampled_from(anchors))
        if choice == 1:
            anchors.append(f"a{len(anchors)}")
            prefix = f"&{anchors[-1]} "
        elif choice == 2:
            prefix = draw(st.sampled_from(["!!map ", "!!seq ", "!foo ", "!!set "]))
    if isinstance(value, dict) and value and draw(st.integers(0, 2)) > 0:
        pad = " " * indent
        lines = []
        for key, item in value.items():
            head = f"{pad}{_scalar(draw, key)}:"
            body = emit(draw, item, indent + 2, anchors)
            if body.startswith("\n"):
                lines.append(head + (" " + prefix.strip() if prefix else "") + body)
                prefix = ""
            else:
                lines.append(f"{head} {body}")
        return ("\n" if indent else "") + prefix + "\n".join(lines)
    if isinstance(value, list) and value and draw(st.integers(0, 2)) > 0:
        pad = " " * indent
        items = [f"{pad}- {emit(draw, item, indent + 2, anchors).lstrip()}" for item in value]
        return ("\n" if indent else "") + prefix + "\n".join(items)
    return prefix + _flow(draw, value)


def _flow(draw: st.DrawFn, value: Any) -> str:
    if isinstance(value, dict):
        pairs = (f"{_scalar(draw, k)}: {_flow(draw, v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(draw, v) for v in value) + "]"
    text = _scalar(draw, value)
    return text if text else "null"


@st.composite
def emitted(draw: st.DrawFn, data: st.SearchStrategy[Any]) -> str:
    return emit(draw, draw(data)) + "\n"


# -- strategy: random YAML structures ---------------------------------------------------

KEYS = st.one_of(
    st.sampled_from(
        [
            *("name", "networks", "hosts", "lan", "h1", "subnet", "subnet6", "address"),
            *("routes", "to", "via", "services", "sysctls", "port", "proto", "ifname", "<<"),
            *("run", "command", "env", "ready", "listen", "process", "owner"),
        ]
    ),
    TEXT,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    TEXT,
    st.sampled_from(TOKENS),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4))


VALUES = st.recursive(SCALARS, _containers, max_leaves=16)
TOPLIKE = st.fixed_dictionaries(
    {"name": st.one_of(st.just("t"), VALUES), "hosts": VALUES},
    optional={"networks": VALUES, "expect": VALUES, "firewall": VALUES},
)


# -- strategy: YAML edge cases ----------------------------------------------------------

BASE = """name: edge
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
hosts:
  h1:
    networks: {lan: 10.0.1.11}
    services: [{proto: tcp, port: 443}]
    sysctls: {net.core.somaxconn: 4096}
"""


def alias_bomb(width: int, depth: int, mapping: bool) -> str:
    if mapping:
        keys = [f"k{i}" for i in range(width)]
        lines = ["b0: &b0 {x: 1}"]
        lines += [
            f"b{d}: &b{d} {{" + ", ".join(f"{k}: *b{d - 1}" for k in keys) + "}"
            for d in range(1, depth)
        ]
    else:
        lines = ["b0: &b0 [x]"]
        lines += [
            f"b{d}: &b{d} [" + ", ".join([f"*b{d - 1}"] * width) + "]" for d in range(1, depth)
        ]
    return "\n".join(lines)


def merge_bomb(width: int, depth: int) -> str:
    lines = ["m0: &m0 {x: 1}"]
    lines += [
        f"m{d}: &m{d} {{<<: [" + ", ".join([f"*m{d - 1}"] * width) + f"], k{d}: {d}}}"
        for d in range(1, depth)
    ]
    return "\n".join(lines)


def merge_chain(length: int) -> str:
    lines = ["c0: &c0 {k0: 0}"]
    lines += [f"c{i}: &c{i} {{<<: *c{i - 1}, k{i}: {i}}}" for i in range(1, length)]
    return "\n".join(lines)


def nesting(kind: str, depth: int) -> str:
    if kind == "flow-seq":
        return "[" * depth + "]" * depth
    if kind == "flow-map":
        return "{a: " * depth + "1" + "}" * depth
    if kind == "mixed":
        return "[{a: " * depth + "1" + "}]" * depth
    if kind == "block-seq":
        return "- " * depth + "x"
    return "\n" + "".join(" " * (i + 2) + f"k{i}:\n" for i in range(depth)).rstrip("\n") + " 1"


def huge_number(base: str, digits: int) -> str:
    prefix = {"dec": "", "hex": "0x", "oct": "0o", "neg": "-"}[base]
    return prefix + "7" * digits


FIXED_EDGE_CASES = [
    "",
    "\n\n",
    "   ",
    "# only a comment\n# and another\n",
    "---\n",
    "---\n...\n",
    "--- |\n  text\n",
    "...\n",
    "~\n",
    "[]\n",
    "{}\n",
    "name\n",
    "- name: t\n",
    "!!map {}\n",
    "!foo\nname: t\nhosts: {h1: {}}\n",
    "&r {name: t, hosts: {h1: {}}, <<: *r}\n",
    "&r\nname: t\nhosts: {h1: {}}\n",
    "? [a, b]\n: c\nname: t\nhosts: {h1: {}}\n",
    "? {a: b}\n: c\n",
    "[a]: b\n",
    "<<: 1\nname: t\nhosts: {h1: {}}\n",
    "<<: [{name: t}, 3]\nhosts: {h1: {}}\n",
    "<<: {name: t, hosts: {h1: {}}}\n",
    "<<: {name: t}\nname: u\nhosts: {h1: {}}\n",
    "a: &a {<<: *a}\nname: t\nhosts: {h1: {}}\n",
    "a: &a [*a]\nname: t\nhosts: {h1: {}}\n",
    "a: &a {x: *a}\nname: t\nhosts: {h1: {}}\n",
    "name: &n t\n*n : x\nhosts: {h1: {}}\n",
    "&k name: t\nhosts: {h1: {}}\n",
    "!foo name: t\nhosts: {h1: {}}\n",
    "!!str name: t\nhosts: {h1: {}}\n",
    "!!binary name: t\nhosts: {h1: {}}\n",
    "name: !!binary dGVzdA==\nhosts: {h1: {}}\n",
    "name: !!str 123\nhosts: {h1: {}}\n",
    "name: !!int '1'\nhosts: {h1: {}}\n",
    "name: t\nhosts: !!set {h1}\n",
    "name: t\nhosts: !!omap [{h1: {}}]\n",
    "name: t\nhosts: {h1: {}}\n%YAML 1.2\n---\n",
    "%YAML 1.2\n%YAML 1.2\n---\nname: t\nhosts: {h1: {}}\n",
    "%TAG ! tag:example.com,2000:\n---\nname: !x t\nhosts: {h1: {}}\n",
    "%TAG !e! tag:yaml.org,2002:\n---\nname: !e!str t\nhosts: {h1: {}}\n",
    "%FOO bar\n---\nname: t\nhosts: {h1: {}}\n",
    "%YAML 1.1\nname: t\n",
    "name: t\nhosts: {h1: {}}\n---\n",
    "name: t\nhosts: {h1: {}}\n...\n---\nname: u\n",
    "name: t\nname: t\nname: t\nhosts: {h1: {}, h1: {}}\n",
    "name: t\nhosts:\n  h1: {}\n  h1:\n    networks: {lan: auto, lan: auto}\n",
    "name: t\nhosts:\n\th1: {}\n",
    "name:\tt\nhosts: {h1: {}}\n",
    "name: t\t\nhosts: {h1: {}}\n",
    "name: t\r\nhosts:\r\n  h1: {}\r\n",
    "name: t\rhosts:\r  h1: {}\r",
    "name: t\rhosts: {h1: {}}\x00",
    "name: t\u2028hosts: {h1: {}}\n",
    "\ufeffname: t\nhosts: {h1: {}}\n",
    "\ufeff\ufeffname: t\nhosts: {h1: {}}\n",
    "name: t\ufeff\nhosts: {h1: {}}\n",
    "name: 'a\x07b'\nhosts: {}\n",
    'name: "\\x00"\nhosts: {h1: {}}\n',
    'name: "\\ud800"\nhosts: {h1: {}}\n',
    '"\\ud800"\n',
    '!!binary "\\udfff"\n',
    'name: "\\e[2J"\nhosts: {"\\e": {}}\n',
    "name: t\nhosts: {h1: {services: [{proto: tcp, port: .inf}]}}\n",
    "name: t\nhosts: {h1: {services: [{proto: tcp, port: .nan}]}}\n",
    "name: t\nhosts: {h1: {services: [{proto: tcp, port: 0x1BB}]}}\n",
    "name: t\nhosts: {h1: {services: [{proto: tcp, port: 0o17}]}}\n",
    "name: t\nhosts: {h1: {services: [{proto: tcp, port: 1_000}]}}\n",
    "name: t\nhosts: {h1: {services: [{proto: tcp, port: 443.0}]}}\n",
    "name: t\nhosts: {h1: {services: [{proto: tcp, port: -0}]}}\n",
    "name: t\nhosts: {h1: {sysctls: {net.core.somaxconn: 1e3}}}\n",
    "name: t\nhosts: {h1: {sysctls: {net.core.somaxconn: ' 12 '}}}\n",
    "name: t\nhosts: {h1: {sysctls: {net.core.somaxconn: '١٢'}}}\n",
    "name: t\nhosts: {h1: {sysctls: {net.ipv4.ip_local_port_range: 0x10}}}\n",
    "name: t\nhosts: {h1: {forwarding: yes}}\n",
    "name: t\nhosts: {h1: {forwarding: 1}}\n",
    "name: 0x1F\nhosts: {h1: {}}\n",
    "name: 2001-12-14\nhosts: {h1: {}}\n",
    "name: 22:22\nhosts: {h1: {}}\n",
    "1: t\nhosts: {1: {}}\n",
    "name: t\nhosts:\n  h1:\n",
    "name: t\nhosts:\n  h1: {networks: {lan: }}\nnetworks: {lan: {subnet: 10.0.1.0/24}}\n",
    "name: t\nnetworks: {lan: {subnet: fd00:1::/64}}\nhosts: {h1: {}}\n",
    "name: t\nnetworks: {lan: {subnet6: :: }}\nhosts: {h1: {}}\n",
]


@st.composite
def edge_cases(draw: st.DrawFn) -> str:
    """Light YAML edge cases: fixed ones, or a tricky token placed in a small topology."""
    if draw(st.booleans()):
        return draw(st.sampled_from(FIXED_EDGE_CASES))
    field = draw(st.sampled_from(["edge", "443", "4096", "10.0.1.11", "lan", "h1", "subnet"]))
    token = draw(TOKEN)
    text = BASE.replace(field, token, 1)
    if draw(st.booleans()):
        text += draw(st.sampled_from(FIXED_EDGE_CASES))
    return text


@st.composite
def heavy_edge_cases(draw: st.DrawFn) -> str:
    """Expensive inputs: alias and merge bombs, deep nesting, huge numbers, long strings."""
    kind = draw(st.sampled_from(["alias", "merge", "chain", "nest", "number", "long", "many"]))
    where = draw(st.sampled_from(["top", "name", "networks", "attachment", "sysctls", "port"]))
    if kind == "alias":
        width, depth = draw(st.integers(2, 10)), draw(st.integers(2, 30))
        return alias_bomb(width, depth, draw(st.booleans())) + "\n" + _place(where, "*b0")
    if kind == "merge":
        width, depth = draw(st.integers(2, 10)), draw(st.integers(2, 12))
        return merge_bomb(width, depth) + "\n" + _place(where, f"*m{depth - 1}")
    if kind == "chain":
        length = draw(st.integers(2, 700))
        return merge_chain(length) + "\n" + _place(where, f"*c{length - 1}")
    if kind == "nest":
        shape = draw(st.sampled_from(["flow-seq", "flow-map", "mixed", "block-seq", "block-map"]))
        return _place(where, nesting(shape, draw(st.integers(1, 3000))))
    if kind == "number":
        base = draw(st.sampled_from(["dec", "hex", "oct", "neg"]))
        return _place(where, huge_number(base, draw(st.integers(15, 6000))))
    if kind == "long":
        size = draw(st.integers(1000, 60000))
        piece = draw(st.sampled_from(["a", "é", "h1-", "1", " a", "'"]))
        text = (piece * size)[:size]
        return _place(where, draw(st.sampled_from([text, f"'{text}'", f'"{text}"'])))
    count = draw(st.integers(100, 800))
    hosts = "".join(f"  h{i}: {{networks: {{lan: auto}}}}\n" for i in range(count))
    prefix = draw(st.sampled_from([16, 22, 28]))
    return f"name: many\nnetworks: {{lan: {{subnet: 10.0.0.0/{prefix}}}}}\nhosts:\n{hosts}"


def _place(where: str, value: str) -> str:
    """`value` (one line, or block lines) at one place of a small topology."""
    if where == "top":
        return f"{BASE}x: {value}\n"
    if where == "name":
        return BASE.replace("name: edge", f"name: {value}", 1)
    if where == "networks":
        return BASE.replace("  lan: {subnet", f"  big: {value}\n  lan: {{subnet", 1)
    if where == "attachment":
        return BASE.replace("{lan: 10.0.1.11}", f"{{lan: {value}}}", 1)
    if where == "sysctls":
        return BASE.replace("{net.core.somaxconn: 4096}", f"{{net.core.somaxconn: {value}}}")
    return BASE.replace("port: 443", f"port: {value}", 1)


# -- strategy: raw bytes ----------------------------------------------------------------

BAD_BYTES = [
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xc0\x80",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xe2\x80\xa8",
    b"\xc2\x85",
    b"\r",
    b"\t",
]


@st.composite
def raw_files(draw: st.DrawFn) -> bytes:
    """Bytes: a seed with bad UTF-8 sequences put in, another encoding, or just noise."""
    how = draw(st.sampled_from(["insert", "insert", "insert", "encoding", "noise", "mutated"]))
    if how == "noise":
        return draw(st.binary(max_size=300))
    text = draw(mutated_files()) if how == "mutated" else draw(st.sampled_from(SEEDS))
    raw = text.encode("utf-8", "surrogatepass")
    if how == "encoding":
        encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]))
        return text.encode(encoding, "replace")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        piece = draw(st.one_of(st.sampled_from(BAD_BYTES), st.binary(min_size=1, max_size=4)))
        raw = raw[:at] + piece + raw[at:]
    return raw


# -- the fuzz tests ---------------------------------------------------------------------


def run_texts(strategy: st.SearchStrategy[str], examples: int, path: Path) -> Counter[str]:
    """Check `examples` texts drawn from `strategy`; count the outcomes by kind."""
    counts: Counter[str] = Counter()

    @fuzz(examples)
    @given(strategy)
    def one(text: str) -> None:
        counts[classify(check_text(text, path))] += 1

    one()
    return counts


def test_mutated_files(tmp_path: Path) -> None:
    counts = run_texts(mutated_files(), 600, tmp_path / "fuzz.yaml")
    assert counts["valid"] >= 20, counts  # many mutations are harmless: the checks ran
    assert counts["document"] >= 50, counts
    assert counts["structure"] >= 50, counts
    assert counts["semantic"] >= 50, counts


def test_generated_topologies(tmp_path: Path) -> None:
    texts = st.one_of(emitted(near_valid_topologies()), near_valid_topologies().map(_json))
    counts = run_texts(texts, 400, tmp_path / "fuzz.yaml")
    assert counts["valid"] >= 80, counts  # enough valid ones to test the invariants
    assert counts["semantic"] >= 80, counts


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


def test_random_yaml_structures(tmp_path: Path) -> None:
    texts = st.one_of(emitted(VALUES), emitted(TOPLIKE))
    counts = run_texts(texts, 500, tmp_path / "fuzz.yaml")
    assert counts["document"] >= 30, counts
    assert counts["structure"] >= 100, counts


def test_yaml_edge_cases(tmp_path: Path) -> None:
    counts = run_texts(edge_cases(), 400, tmp_path / "fuzz.yaml")
    assert counts["valid"] >= 10, counts
    assert counts["document"] >= 30, counts


def test_heavy_yaml_edge_cases(tmp_path: Path) -> None:
    counts = run_texts(heavy_edge_cases(), 20, tmp_path / "fuzz.yaml")
    assert sum(counts.values()) >= 20 * SCALE, counts


def test_raw_bytes(tmp_path: Path) -> None:
    counts: Counter[str] = Counter()
    path = tmp_path / "fuzz.yaml"

    @fuzz(400)
    @given(raw_files())
    def one(raw: bytes) -> None:
        outcome = check_bytes(raw, path)
        decodes = True
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            decodes = False
        not_utf8 = any(p.message.endswith("is not UTF-8 text") for p in outcome.problems)
        assert not_utf8 == (not decodes), outcome.problems[:3]
        counts["not utf-8" if not_utf8 else classify(outcome)] += 1

    one()
    assert counts["not utf-8"] >= 100, counts


# -- the command line -------------------------------------------------------------------


def netharness(command: str, file: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", command, str(file)],
        check=False,
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ, NETHARNESS_RUN_DIR=str(run_dir)),
    )


def _as_bytes(data: str | bytes) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")


def _is_bad(data: str | bytes) -> bool:
    try:
        parse_topology(_as_bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, TopologyError):
        return True
    return False


def test_bad_inputs_through_the_command_line(tmp_path: Path, creates_nothing: Path) -> None:
    """Generated bad inputs: exit 2, every problem's file:line:col, no traceback, nothing made."""
    cases: list[tuple[Path, list[Problem]]] = []
    bad_inputs = st.one_of(mutated_files(), edge_cases(), raw_files()).filter(_is_bad)

    @fuzz(20)
    @given(bad_inputs)
    def collect(data: str | bytes) -> None:
        path = tmp_path / f"case{len(cases)}.yaml"
        path.write_bytes(_as_bytes(data))
        with pytest.raises(TopologyError) as caught:
            load_topology(path)
        cases.append((path, caught.value.problems))

    collect()
    assert len(cases) == 20 * SCALE
    before = _netns()
    runs = [(path, problems, command) for path, problems in cases for command in ("validate", "up")]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda run: netharness(run[2], run[0], creates_nothing), runs))
    for (path, problems, command), result in zip(runs, results, strict=True):
        context = (command, path.name, result.stderr[-2000:])
        assert result.returncode == 2, context
        assert "Traceback" not in result.stderr + result.stdout, context
        for problem in problems:
            assert f"{path}:{problem.line}:{problem.column}:" in result.stderr, (problem, context)
        assert "nothing was created" in result.stderr, context
    assert list(creates_nothing.iterdir()) == []
    assert not new_namespaces(before, creates_nothing)
