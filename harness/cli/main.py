"""The `netharness` command. The only place that prints errors and chooses exit codes.

Exit codes: 0 success, 1 a check failed, 2 bad input or usage, 3 an environment problem,
130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness._version import __version__
from harness.cli._bringup import bring_up, lab_options, progress_shown, refuse_bringup_options
from harness.cli._console import err, out
from harness.core import ledger as _ledger
from harness.core import userns
from harness.errors import HarnessError, LabNotFound, TopologyError, UsageError

if TYPE_CHECKING:
    from harness.lab import Lab


json_option = click.option("--json", "json_out", is_flag=True, help="Print JSON for scripts.")
topology_argument = click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
lab_argument = click.argument("lab")
progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress of bring-up and teardown (default: for labs of 20 hosts or more); "
    "a bar on a terminal, plain lines otherwise.",
)


class LazyGroup(click.Group):
    """A group whose larger commands live in their own modules, imported only when that
    command runs or help lists it (the pattern click's docs give): `netharness down`
    should not pay for importing graphviz output, image building and probes."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, _, attribute = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    lazy={
        "capture": "harness.cli.capture:capture",
        "check": "harness.cli.probe:check",
        "diagnose": "harness.cli.diagnose:diagnose",
        "doctor": "harness.cli.doctor:doctor",
        "graph": "harness.cli.graph:graph",
        "image": "harness.cli.image:image",
        "logs": "harness.cli.logs:logs",
        "matrix": "harness.cli.probe:matrix",
        "probe": "harness.cli.probe:probe",
        "ps": "harness.cli.ps:ps",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 a check failed, 2 bad input, 3 environment, 130 interrupted.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="netharness", message="%(prog)s %(version)s")
def app(debug: bool) -> None:
    """Bring up labs of hosts from YAML topologies and test the transport layer across them."""


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check topology files without creating anything; report every problem at once."""
    from harness.topology import load_topology

    problems: list[Any] = []
    for file in files:
        try:
            topology = load_topology(file)
        except TopologyError as exc:
            problems.extend(exc.problems)
            continue
        out.print(
            f"{file}: ok — topology {topology.name!r}, {len(topology.hosts)} hosts, "
            f"{len(topology.networks)} networks"
        )
    if problems:
        raise TopologyError(problems)


@app.command()
@topology_argument
@json_option
@lab_options
def up(topology: Path, json_out: bool) -> None:
    """Bring a lab up and leave it running; prints its id and hosts."""
    from harness.topology import load_topology

    loaded = load_topology(topology)
    with progress_shown(len(loaded.hosts)) as callback:
        lab = bring_up(loaded, callback)
    try:
        # The lab outlives us only once the user has its id: announce, then commit.
        lab.detach(announce=lambda owner: _announce_up(lab, owner, json_out))
    except BaseException:
        lab.down()
        raise


SHOWN_HOSTS = 20  # `up` lists this many hosts; `ls` and `up --json` have them all


def _announce_up(lab: Lab, owner: int, json_out: bool) -> None:
    hosts = lab.describe()["hosts"]
    if json_out:
        _print_json(
            {
                "id": lab.id,
                "owner_pid": owner,
                "hosts": {n: h["addresses"] for n, h in hosts.items()},
                "netns": {n: h["netns"] for n, h in hosts.items()},
                "captures": {k: str(v) for k, v in lab.captures.items()},
            }
        )
        sys.stdout.flush()
        return
    out.print(
        f"lab [bold]{lab.id}[/bold] is up: topology {lab.topology.name!r}, "
        f"{len(hosts)} hosts in {lab.timings['up'] * 1000:.0f} ms (owner pid {owner})"
    )
    from rich.table import Table

    table = Table("host", "namespace", "addresses", box=None, pad_edge=False)
    for name, host in list(hosts.items())[:SHOWN_HOSTS]:
        addrs = "  ".join(f"{net}: {', '.join(a)}" for net, a in host["addresses"].items())
        where = host["netns"] or f"ssh {host['details'].get('address', '')}"  # a machine
        table.add_row(name, where, addrs)
    if len(hosts) > SHOWN_HOSTS:
        table.add_row(f"… {len(hosts) - SHOWN_HOSTS} more", "", "(netharness up --json)")
    out.print(table)
    for label, path in lab.captures.items():
        out.print(f"capturing {label} to {path}")
    out.print(
        f"enter a host: netharness shell {lab.id} <host>   tear down: netharness down {lab.id}"
    )
    sys.stdout.flush()


@app.command("ls")
@json_option
def list_labs(json_out: bool) -> None:
    """List the labs on this machine: hosts, owner pid, age, and whether the owner lives."""
    rows: list[dict[str, Any]] = []
    for record in _ledger.list_labs():
        rows.append(
            {
                "id": record.id,
                "topology": record.info.get("topology"),
                "alive": record.alive,
                "owner_pid": record.owner_pid,
                "age_s": round(record.age(), 1),
                "hosts": sorted(record.info.get("hosts", {})),
            }
        )
    if json_out:
        _print_json(rows)
        return
    if not rows:
        out.print("no labs")
        return
    from rich.table import Table

    table = Table("lab", "topology", "owner", "age", "hosts", box=None, pad_edge=False)
    for row in rows:
        owner = f"{row['owner_pid']}" if row["alive"] else f"{row['owner_pid']} (dead: run clean)"
        hosts = ", ".join(row["hosts"][:8]) + (" …" if len(row["hosts"]) > 8 else "")
        table.add_row(
            row["id"],
            str(row["topology"]),
            owner,
            _age(row["age_s"]),
            f"{len(row['hosts'])}: {hosts}",
        )
    out.print(table)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@app.command()
@lab_argument
@click.option(
    "--timeout", default=15.0, show_default=True, help="Seconds to wait for the teardown."
)
@progress_option
def down(lab: str, timeout: float, progress: bool | None) -> None:
    """Tear a lab down. Idempotent: a lab already gone is not an error."""
    try:
        record = _ledger.find_lab(lab)
    except LabNotFound:
        out.print(f"lab {lab} is already gone")
        return
    with _ledger.locked(record.dir) as free:
        if free:
            from harness.lab import teardown as _teardown

            removed = _teardown.destroy_recorded(record)
            out.print(f"lab {lab} was orphaned; removed {len(removed)} objects")
            return
    if not record.info.get("detached"):
        raise UsageError(
            f"lab {lab} belongs to a running program (pid {record.owner_pid}); it goes down "
            "when that program ends it. Stop that program instead."
        )
    # Read before the signal: the sentinel removes the ledger within milliseconds.
    namespaces = record.namespaces()
    pid = record.owner_pid
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not _wait_down(record, namespaces, timeout, progress):
        raise HarnessError(f"lab {lab} did not go down within {timeout} s; try `netharness clean`")
    out.print(f"lab {lab} is down")


def _wait_down(
    record: _ledger.LabRecord, namespaces: list[str], timeout: float, progress: bool | None
) -> bool:
    from harness.lab import progress as _progress

    with _progress.shown(len(record.info.get("hosts", {})), progress) as callback:
        if callback is None:
            return _ledger.wait_gone(record.dir, timeout)
        return _progress.watch_removal(record.id, namespaces, record.dir, timeout, callback)


@app.command()
@click.option("--lab", default=None, help="Only this lab.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing.")
def clean(lab: str | None, dry_run: bool, quiet: bool) -> None:
    """Remove what crashed labs left behind. Never touches a lab whose owner is alive."""

    def say(text: str) -> None:
        if not quiet:
            out.print(text)

    if lab:
        try:
            records = [_ledger.find_lab(lab)]
        except LabNotFound:
            say(f"lab {lab} is already gone")
            return
    else:
        records = _ledger.list_labs()
        for name in [] if dry_run else _ledger.remove_stale_builds():
            say(f"removed a half-built ledger {name}")
    for record in records:
        with _ledger.locked(record.dir) as free:
            if not free:
                say(f"lab {record.id}: owner pid {record.owner_pid} is alive — left alone")
                continue
            if dry_run:
                names = [e.get("name") for e in record.entries()]
                say(f"lab {record.id}: would remove {', '.join(map(str, names)) or 'its ledger'}")
                continue
            from harness.lab import teardown as _teardown

            removed = _teardown.destroy_recorded(record)
            say(f"lab {record.id}: removed {', '.join(removed) or 'its ledger'}")
    if not records:
        say("nothing to clean")


def _host_info(lab: str, host: str) -> dict[str, Any]:
    record = _ledger.find_lab(lab)
    if userns.wanted() and record.alive and record.owner_pid is not None:
        userns.join(record.owner_pid)  # where a rootless lab's namespaces have names
    hosts = record.info.get("hosts", {})
    if host not in hosts:
        raise UsageError(f"lab {lab} has no host {host!r} (hosts: {', '.join(sorted(hosts))})")
    return dict(hosts[host])


def _run_in_host(lab: str, host: str, argv: list[str], env: dict[str, str]) -> int:
    from harness.backends import run_attached

    return run_attached(_host_info(lab, host), argv, env)


@app.command("exec", context_settings={"ignore_unknown_options": True})
@lab_argument
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(lab: str, host: str, command: tuple[str, ...]) -> None:
    """Run a command inside a host; its exit code is passed through."""
    env = dict(os.environ, NETHARNESS_LAB=lab, NETHARNESS_HOST=host)
    code = _run_in_host(lab, host, list(command), env)
    raise SystemExit(128 - code if code < 0 else code)


@app.command()
@lab_argument
@click.argument("host")
def shell(lab: str, host: str) -> None:
    """An interactive shell inside a host."""
    from harness.backends import shell_argv

    env = dict(os.environ, NETHARNESS_LAB=lab, NETHARNESS_HOST=host, PS1=f"[{lab}:{host}] \\w\\$ ")
    err.print(f"shell in host {host} of lab {lab} (exit to leave)")
    code = _run_in_host(lab, host, shell_argv(_host_info(lab, host), env), env)
    raise SystemExit(128 - code if code < 0 else code)


def _suite_options(settings: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise UsageError(f"--set wants key=value, not {setting!r}")
        options[key.replace("-", "_")] = int(value) if value.isdigit() else value
    return options


@app.command()
@click.argument("name")
@click.argument("target")
@json_option
@click.option("--server", default=None, help="The host that plays the server.")
@click.option("--clients", default=None, help="Client hosts, comma-separated.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A suite option, e.g. --set five_tuple.connections=5000 (repeatable); without "
    "the suite's name it goes to every suite that takes it.",
)
@lab_options
def suite(
    name: str,
    target: str,
    json_out: bool,
    server: str | None,
    clients: str | None,
    settings: tuple[str, ...],
) -> None:
    """Run a suite (multiplexing, five_tuple, ports or all) on a topology file (brought
    up and torn down) or on a running lab (by id). Exit 1 if a check does not pass."""
    from harness.checks.suites import expand, run_suite, suite_options
    from harness.lab import Lab
    from harness.lab.progress import Phase
    from harness.topology import load_topology

    names = expand(name)
    options = _suite_options(settings)
    # `key=v` goes to every suite that takes `key`; `suite.key=v` to that suite only.
    per_suite: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in options.items():
        scope, dot, option = key.rpartition(".")
        targets = [scope.replace("-", "_")] if dot else names
        takers = [n for n in targets if n in per_suite and option in suite_options(n)]
        if not takers:
            raise UsageError(f"no suite of {', '.join(names)} takes {key}")
        for taker in takers:
            per_suite[taker][option] = value
    roles: dict[str, Any] = {"server": server}
    if clients:
        roles["clients"] = [c.strip() for c in clients.split(",") if c.strip()]
    is_file = Path(target).suffix in (".yaml", ".yml") or Path(target).is_file()
    spec = load_topology(Path(target)) if is_file else None
    if spec is None:
        refuse_bringup_options(target)
    # A lab given by id shows progress only when asked (--progress): its size is unknown.
    with progress_shown(len(spec.hosts) if spec else 0, None if spec else target) as callback:
        lab = bring_up(spec, callback) if spec else Lab.attach(target)
        with lab:
            checks = []
            ran = Phase(callback, lab.id, "suites", len(names))
            for suite_name in names:
                checks += run_suite(suite_name, lab, **roles, **per_suite[suite_name])
                ran.step()
    from harness.checks.report import checks_json, print_checks

    if json_out:
        _print_json(checks_json(lab.id, checks))
    else:
        print_checks(out.console, checks, title=f"lab {lab.id}: {', '.join(names)}")
    if not checks or any(c.failed for c in checks):  # a skip (not applicable) is no failure
        raise SystemExit(1)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the topology format (for editors)."""
    from harness.topology import topology_schema

    _print_json(topology_schema())


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs a command, turns errors into one clear message and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    started = time.monotonic()
    try:
        app.main(args=args, prog_name="netharness", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print(f"interrupted after {time.monotonic() - started:.1f} s; cleaned up")
        return 130
    except TopologyError as exc:
        if debug:
            raise
        err.print(str(exc), markup=False)
        n = len(exc.problems)
        err.print(f"{n} problem{'s' if n != 1 else ''} found; nothing was created.")
        return exc.exit_code
    except HarnessError as exc:
        if debug:
            raise
        err.print(f"netharness: {exc}", markup=False)
        return exc.exit_code
    return 0
