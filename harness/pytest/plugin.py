"""pytest plugin: a `lab` fixture driven by `@pytest.mark.topology(path)`.

Registered through the `pytest11` entry point. The fixture only wraps `Lab.up`/`down`,
so pytest and the CLI share one code path. Override `lab` or `netharness_topology` in a
conftest to change scope or choose topologies another way.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.checks.suites import Check, checks_of, expand, run_suite
from harness.cli.ssh import add_pytest_options
from harness.lab import Lab
from harness.pytest import observe as pytest_observe
from harness.pytest.expect import LABS_STARTED, ExpectFile
from harness.pytest.expect import wants as expect_wants

_KEPT = pytest.StashKey[list[str]]()
_LABS_STARTED = LABS_STARTED  # labs brought up this run (Ctrl-C then exits 130)
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netharness", "netharness labs")
    group.addoption(
        "--netharness-backend",
        default=None,
        metavar="NAME",
        help="backend for every host of every lab (default: as the topology says, netns)",
    )
    group.addoption(
        "--netharness-suite",
        default=None,
        metavar="NAME",
        help="run suite NAME (or all) on each topology file named on the command line; "
        "each check is one test item",
    )
    group.addoption(
        "--netharness-retries",
        type=int,
        default=2,
        metavar="N",
        help="probe a mismatching `expect` cell again up to N times before it fails",
    )
    parser.addini(
        "netharness_files",
        type="linelist",
        default=[],
        help="glob patterns (from the rootdir) of topology files whose `expect` entries "
        "are collected as tests without naming them on the command line",
    )
    group.addoption(
        "--netharness-keep",
        action="store_true",
        default=False,
        help="leave a failed test's lab up and print how to enter it",
    )
    pytest_observe.add_options(group)
    add_pytest_options(group)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "topology(path): the topology file the `lab` fixture brings up"
    )
    config.stash[_KEPT] = []
    config.stash[_LABS_STARTED] = 0


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    pytest_observe.on_report(item, report)
    return report


def _resolve(path: str, request: pytest.FixtureRequest) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for base in (request.path.parent, request.config.rootpath, Path.cwd()):
        if (base / candidate).exists():
            return base / candidate
    return candidate  # load_topology reports the missing file clearly


@pytest.fixture
def netharness_topology(request: pytest.FixtureRequest) -> Path:
    """The topology file named by the test's `@pytest.mark.topology(path)` marker."""
    marker = request.node.get_closest_marker("topology")
    if marker is None or not marker.args:
        pytest.fail(
            "the `lab` fixture needs a topology: mark the test with "
            '@pytest.mark.topology("path/to/topology.yaml")',
            pytrace=False,
        )
    return _resolve(str(marker.args[0]), request)


@pytest.fixture
def lab(request: pytest.FixtureRequest, netharness_topology: Path) -> Iterator[Lab]:
    """A running lab of the marked topology, torn down after the test."""
    options = pytest_observe.lab_options(request.config, request.node.nodeid)
    running = Lab.up(netharness_topology, **options)
    request.config.stash[_LABS_STARTED] += 1
    try:
        yield running
    finally:
        reports = request.node.stash.get(_REPORTS, {})
        failed = any(r.failed for r in reports.values())
        if failed and request.config.getoption("netharness_keep"):
            owner = running.detach()
            hosts = ", ".join(running.hosts)
            request.config.stash[_KEPT].append(
                f"{request.node.nodeid}: lab {running.id} kept (owner pid {owner}); hosts "
                f"{hosts}; enter with `netharness shell {running.id} <host>`, remove with "
                f"`netharness down {running.id}`"
            )
        else:
            running.down()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """With --netharness-suite: a topology file named on the command line becomes tests.
    Without it: a topology with an `expect` block, named or matching `netharness_files`,
    becomes one test per expectation (harness/pytest/expect.py).

    Only files given as arguments (or matching the ini patterns) are collected, never
    other YAML in the repository.
    """
    config = parent.config
    suite = config.getoption("netharness_suite")
    if suite is None:
        if expect_wants(file_path, config):
            return ExpectFile.from_parent(parent, path=file_path)
        return None
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    named = {(config.invocation_params.dir / arg.split("::")[0]).resolve() for arg in config.args}
    if file_path.resolve() not in named:
        return None
    return SuiteFile.from_parent(parent, path=file_path, suites=suite)


class SuiteFile(pytest.File):
    """A topology file: brought up once, every selected suite run, one item per check."""

    def __init__(self, *, suites: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite_names = expand(suites)
        self.results: dict[tuple[str, str], Check] = {}
        self._lab: Lab | None = None

    def collect(self) -> Iterator[pytest.Item]:
        for suite in self.suite_names:
            for check in checks_of(suite):
                yield SuiteCheck.from_parent(self, name=f"{suite}::{check}", key=(suite, check))

    def setup(self) -> None:
        self._lab = Lab.up(self.path, **pytest_observe.lab_options(self.config, self.nodeid))
        self.config.stash[_LABS_STARTED] += 1
        for suite in self.suite_names:
            for check in run_suite(suite, self._lab):
                self.results[(check.suite, check.name)] = check

    def teardown(self) -> None:
        if self._lab is not None:
            self._lab.down()
            self._lab = None


class SuiteCheckFailed(Exception):
    def __init__(self, check: Check) -> None:
        super().__init__(check.name)
        self.check = check


class SuiteCheck(pytest.Item):
    def __init__(self, *, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key

    def runtest(self) -> None:
        assert isinstance(self.parent, SuiteFile)
        check = self.parent.results.get(self.key)
        if check is None:
            raise SuiteCheckFailed(
                Check(self.key[0], self.key[1], "error", "", "the suite reported no such check")
            )
        if check.verdict == "skip":  # not applicable here (a UDP check, a TCP server)
            pytest.skip(check.observed)
        if not check.passed:
            raise SuiteCheckFailed(check)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        if isinstance(excinfo.value, SuiteCheckFailed):
            check = excinfo.value.check
            evidence = json.dumps(dict(check.evidence), indent=2, default=str)
            return (
                f"{check.suite}/{check.name}: {check.verdict}\n"
                f"expected: {check.expected}\nobserved: {check.observed}\nevidence: {evidence}"
            )
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.key[0]}::{self.key[1]}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Ctrl-C: pytest has already run every lab's teardown by now; say "interrupted" the
    # way shells and `netharness` do (128 + SIGINT) when a run had labs up.
    if exitstatus == pytest.ExitCode.INTERRUPTED and session.config.stash.get(_LABS_STARTED, 0):
        session.exitstatus = 130


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    kept = terminalreporter.config.stash.get(_KEPT, [])
    if kept:
        terminalreporter.section("netharness: labs kept up")
        for line in kept:
            terminalreporter.write_line(line)
