"""The pytest plugin's observing part: captures per test, diagnostics on failure, artifacts.

    pytest --netharness-capture                 # pcap every network of every lab
    pytest --netharness-artifacts ci-artifacts  # per test: pcaps, and for a failure its
                                                # diagnostics.txt and the lab's logs

A failing test that used a lab gets one report section per host (harness.observe.diagnostics),
added to the failure's own representation, so the terminal, `--junitxml` (the failure
text) and xdist all carry it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import (
    ExceptionRepr,
    ReprExceptionInfo,
    ReprFileLocation,
    ReprTracebackNative,
)

from harness.cli.ssh import pytest_backend_options
from harness.lab import Lab

_DONE = pytest.StashKey[bool]()


def add_options(group: Any) -> None:
    group.addoption(
        "--netharness-capture",
        action="store_true",
        default=False,
        help="record every network of every lab to a pcap (besides the topology's "
        "`capture: true`); the paths appear in a failing test's report",
    )
    group.addoption(
        "--netharness-artifacts",
        default=None,
        metavar="DIR",
        help="keep per test DIR/<test>/: its pcaps, and for a failing test diagnostics.txt "
        "and the lab's logs (for CI to keep)",
    )


def files_dir(config: pytest.Config, nodeid: str) -> Path:
    """Where a test's files go: under --netharness-artifacts, else pytest's basetemp."""
    name = re.sub(r"[^\w.-]+", "_", nodeid).strip("_") or "test"
    artifacts = config.getoption("netharness_artifacts")
    if artifacts:
        return Path(artifacts).resolve() / name
    # pytest keeps its last few basetemps, so the pcaps outlive the run.
    factory: pytest.TempPathFactory | None = getattr(config, "_tmp_path_factory", None)
    if factory is None:  # -p no:tmpdir
        return Path(tempfile.gettempdir()) / "netharness-pytest" / name
    return factory.getbasetemp() / "netharness" / name


def lab_options(config: pytest.Config, nodeid: str) -> dict[str, Any]:
    """What Lab.up takes from the command line for one test's (or file's) lab."""
    return {
        "backend": config.getoption("netharness_backend"),
        "capture": bool(config.getoption("netharness_capture")),
        "capture_dir": files_dir(config, nodeid) / "captures",
        "backend_options": pytest_backend_options(config),  # ssh host keys
    }


def on_report(item: pytest.Item, report: pytest.TestReport) -> None:
    """A failed phase of a test that has a lab that is up: diagnostics into the report."""
    if not report.failed:
        return
    lab = _lab_of(item)
    if lab is None or lab.describe()["state"] != "up":
        return
    sections = _diagnostics(lab)
    if item.config.getoption("netharness_artifacts"):
        where = _write_artifacts(item, report, lab, sections)
        sections.append((f"netharness {lab.id}", f"diagnostics, logs and pcaps kept in {where}"))
    longrepr = report.longrepr
    if isinstance(longrepr, str):
        longrepr = report.longrepr = _as_exception_repr(longrepr, report)
    if isinstance(longrepr, ExceptionRepr):
        for title, body in sections:
            longrepr.addsection(title, body)
    else:
        report.sections.extend(sections)


def _as_exception_repr(text: str, report: pytest.TestReport) -> ReprExceptionInfo:
    """A plain-text failure (suite checks, expect cells) as pytest's own exception form.

    A text failure is also its one-line summary, and on CI (or with -vv) pytest prints
    the summary whole: the host sections would appear twice. In this form the summary is
    the text's first line, and the sections travel through xdist as for any exception.
    """
    path, lineno, _ = report.location
    crash = ReprFileLocation(path, (lineno or 0) + 1, text.split("\n", 1)[0])
    return ReprExceptionInfo(ReprTracebackNative([text + "\n"]), crash)


def _lab_of(item: pytest.Item) -> Lab | None:
    lab = getattr(item, "funcargs", {}).get("lab")
    if isinstance(lab, Lab):
        return lab
    # A suite check: its file's lab, diagnosed once for the file, not once per check.
    suite_lab = getattr(item.parent, "_lab", None)
    if not isinstance(suite_lab, Lab) or item.parent is None or item.parent.stash.get(_DONE, False):
        return None
    item.parent.stash[_DONE] = True
    return suite_lab


def _diagnostics(lab: Lab) -> list[tuple[str, str]]:
    from harness.observe.diagnostics import sections

    return sections(lab)


def _write_artifacts(
    item: pytest.Item, report: pytest.TestReport, lab: Lab, sections: list[tuple[str, str]]
) -> Path:
    directory = files_dir(item.config, item.nodeid)
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(f"===== {title} =====\n{body}\n" for title, body in sections)
    head = f"{item.nodeid} failed ({report.when}); lab {lab.id}, topology {lab.topology.source}\n"
    (directory / "diagnostics.txt").write_text(head + text, encoding="utf-8")
    logs = lab.ledger_dir / "logs"
    if logs.is_dir():
        shutil.copytree(logs, directory / "logs", dirs_exist_ok=True)
    return directory
