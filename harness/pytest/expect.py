"""The `expect:` block of a topology file as pytest items: `pytest topologies/dmz.yaml`.

A YAML file is collected only when it is a netharness topology with an `expect` block
AND it is named on the command line or matches a glob of the `netharness_files` ini
option (none by default), so unrelated YAML in a repository is never touched. The file's
lab comes up once, every expectation is probed (mismatches retried), one item per
expectation reports its cell, one item per `process:` service reports who holds its
listener, and the lab goes down after the file's last item.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.checks.probe import CheckReport, Verdict, check, reproduce_command
from harness.cli.ssh import pytest_backend_options
from harness.lab import Lab
from harness.topology import Expectation, Host, Service, load_topology

#: How many labs this pytest run brought up (the plugin's count, kept here so that both
#: modules can reach it without importing each other).
LABS_STARTED = pytest.StashKey[int]()


def wants(file_path: Path, config: pytest.Config) -> bool:
    """Is this file one to collect: named or matching, and a topology with `expect`?"""
    if file_path.suffix not in (".yaml", ".yml"):
        return False
    named = {(config.invocation_params.dir / arg.split("::")[0]).resolve() for arg in config.args}
    if file_path.resolve() not in named:
        relative = _relative(file_path, config.rootpath)
        patterns = config.getini("netharness_files")
        if not any(fnmatch.fnmatch(relative, p) for p in patterns):
            return False
    return _has_expect(file_path)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _has_expect(path: Path) -> bool:
    """A mapping at the top with `hosts` and `expect`: cheap, before the full check."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError, ValueError):
        return False
    return isinstance(data, dict) and "hosts" in data and "expect" in data


def item_name(expectation: Expectation) -> str:
    """`client1->web:443/tcp open`; an explicit address or IPv6 is named too."""
    target = expectation.target
    if expectation.address is not None:
        target += f"[{expectation.address}]"
    family = " IPv6" if expectation.family == 6 else ""
    return (
        f"{expectation.source}->{target}:{expectation.port}/{expectation.proto}"
        f"{family} {expectation.state}"
    )


class ExpectFile(pytest.File):
    """A topology file: brought up once, every expectation checked, one item each."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report: CheckReport | None = None
        self._lab: Lab | None = None

    def collect(self) -> Iterator[pytest.Item]:
        topology = load_topology(self.path)
        for index, expectation in enumerate(topology.expectations):
            yield ExpectItem.from_parent(self, name=item_name(expectation), index=index)
        # in the order check() judges them: hosts, then each host's services, as written
        held = [(h, s) for h in topology.hosts.values() for s in h.services if s.process]
        for index, (host, service) in enumerate(held):
            yield ServiceItem.from_parent(self, name=service_name(host, service), index=index)

    def setup(self) -> None:
        self._lab = Lab.up(
            self.path,
            backend=self.config.getoption("netharness_backend"),
            backend_options=pytest_backend_options(self.config),
        )
        self.report = check(
            self._lab,
            self._lab.topology.expectations,
            retries=self.config.getoption("netharness_retries"),
        )

    def teardown(self) -> None:
        if self._lab is not None:
            self._lab.down()
            self._lab = None


def service_name(host: Host, service: Service) -> str:
    """`web:80/tcp held by nginx`."""
    where = f"[{service.address}]" if service.address else ""
    return f"{host.name}{where}:{service.port}/{service.proto} held by {service.process}"


class _ReportItem(pytest.Item):
    """One entry of the file's check report, by its index."""

    def __init__(self, *, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index

    @property
    def report(self) -> CheckReport:
        assert isinstance(self.parent, ExpectFile)
        report = self.parent.report
        assert report is not None, "the file's lab did not come up"
        return report


class ServiceItem(_ReportItem):
    """A `process:` service: its listener must be held by that process."""

    def runtest(self) -> None:
        verdict = self.report.services[self.index]
        if not verdict.passed:
            raise ServiceNotHeld(
                f"{self.path.name}: {verdict.label}: expected held by "
                f"{verdict.owner.process}\nobserved: {verdict.owner.problem}\n"
                f"reproduce: `netharness up {self.path}` then netharness ps LAB {verdict.host}"
            )

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        if isinstance(excinfo.value, ServiceNotHeld):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class ServiceNotHeld(Exception):
    """A `process:` service's listener is missing or held by another process."""


class ExpectationFailed(Exception):
    def __init__(self, verdict: Verdict, lab_id: str) -> None:
        super().__init__(verdict.result.cell)
        self.verdict = verdict
        self.lab_id = lab_id


class ExpectItem(_ReportItem):
    def runtest(self) -> None:
        verdict = self.report.verdicts[self.index]
        if not verdict.passed:
            raise ExpectationFailed(verdict, self.report.lab)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        if not isinstance(excinfo.value, ExpectationFailed):
            return super().repr_failure(excinfo)
        verdict = excinfo.value.verdict
        result = verdict.result
        retries = f"{verdict.retries} retr{'y' if verdict.retries == 1 else 'ies'}"
        command = reproduce_command("LAB", result, verdict.address_given)
        owner = verdict.owner
        if owner is not None and not owner.passed:  # open, but not accepted by `owner:`
            command = f"netharness ps LAB {result.target} --all"
        return (
            f"{self.path.name}:{verdict.line}: {result.cell} (IPv{result.family} "
            f"{result.address})\n"
            f"expected: {verdict.expected}"
            + (f", accepted by {owner.process}\nowner:    {owner.problem}" if owner else "")
            + f"\nobserved: {result.state}\n"
            f"reason:   {result.reason} (after {retries})\n"
            f"reproduce: `netharness up {self.path}` then {command}"
        )

    def reportinfo(self) -> tuple[Path, int | None, str]:
        assert isinstance(self.parent, ExpectFile)
        line = self.parent.report.verdicts[self.index].line if self.parent.report else None
        return self.path, (line - 1) if line else None, self.name
