from __future__ import annotations

import os
import signal
import uuid

import pytest

from tests.integration.rootns import SESSION_VAR, RootSnapshot, snapshot

pytest_plugins = ["pytester"]

_BEFORE = pytest.StashKey[RootSnapshot]()


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces and needs root", pytrace=False)


def _checks_root(config: pytest.Config) -> bool:
    # Once per run: in the xdist controller (or a plain run), never in a worker, whose
    # neighbours' labs would come and go under its feet.
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    # Rootless (not root, or NETHARNESS_ROOTLESS=1): the whole run, and every netharness
    # command it starts, shares one user namespace, whose network namespace is the "root"
    # namespace the run must leave as it found it. Entered now, while single-threaded.
    from harness.core import userns

    if userns.wanted():
        from harness.lab import Lab

        Lab.prepare_process()
    # Marks every process this run starts (xdist workers and lab owners inherit it).
    os.environ.setdefault(SESSION_VAR, uuid.uuid4().hex)
    # A shell starts background jobs with SIGINT ignored, and programs they start inherit
    # that: the tests that Ctrl-C a netharness process would see it do nothing. A handled
    # signal is reset to the default on exec, so the processes tests start get Ctrl-C.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session: pytest.Session) -> None:
    if _checks_root(session.config):
        session.config.stash[_BEFORE] = snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if the root namespace differs afterwards: links, addresses, routes,
    namespaces, net sysctls and the nft ruleset, byte for byte."""
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    changed = before.difference(snapshot())
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.section("root namespace changed", red=True)
            for line in changed:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
