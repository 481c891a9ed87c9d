"""harness.lab.runtime on the fake backend: what the lab does in a host (agents, commands,
kill and restart), without namespaces. The agents are real `python -m hostagent`
processes; only the host is fake."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends.fake import FakeBackend
from harness.core._loop import LoopThread
from harness.errors import HarnessError
from harness.lab.runtime import Agents, HostRuntime
from harness.topology import parse_topology

TOPOLOGY = """\
name: fake
networks:
  lan: {subnet: 10.0.1.0/24}
hosts:
  h1: {networks: {lan: 10.0.1.11}}
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[HostRuntime]:
    runner = LoopThread("test-runtime")
    runner.start()
    backend = FakeBackend()
    spec = parse_topology(TOPOLOGY, "fake.yaml").hosts["h1"]
    handle = runner.run(backend.create(spec))
    agents = Agents()
    host = HostRuntime(
        spec, handle, backend, runner=runner, agents=agents, logs=tmp_path, forkserver=lambda: None
    )
    try:
        yield host
    finally:
        for agent in agents.take():
            agent.process.kill(signal.SIGKILL)
            runner.run(agent.process.wait())
        runner.stop()


def test_an_agent_started_in_the_host_answers_and_is_registered(runtime: HostRuntime) -> None:
    agent = runtime.call(runtime.start_agent())
    assert agent.request("ping") is not None
    assert agent.host == "h1"
    assert [a.pid for a in runtime._agents.live("h1")] == [agent.pid]
    assert (runtime._logs / "h1.agents.log").exists()


def test_a_command_reports_its_exit_code_output_and_input(runtime: HostRuntime) -> None:
    result = runtime.call(
        runtime.run_command(["sh", "-c", "cat; echo oops >&2; exit 3"], 5.0, b"fed")
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "fed", "oops\n")


def test_a_command_over_its_time_is_an_error_naming_host_and_command(
    runtime: HostRuntime,
) -> None:
    with pytest.raises(HarnessError, match=r"sleep 5 did not finish within 0.2 s in host h1"):
        runtime.call(runtime.run_command(["sleep", "5"], 0.2))


def test_kill_counts_and_reaps_every_live_agent_of_the_host(runtime: HostRuntime) -> None:
    first = runtime.call(runtime.start_agent())
    second = runtime.call(runtime.start_agent())
    assert runtime.call(runtime.kill_agents(5.0)) == 2
    assert first.process.returncode == second.process.returncode == -signal.SIGKILL
    assert runtime._agents.live("h1") == []
    assert runtime.call(runtime.kill_agents(5.0)) == 0


def test_restart_gives_the_host_a_new_agent_and_forgets_ended_ones(runtime: HostRuntime) -> None:
    before = runtime.host_agent = runtime.call(runtime.start_agent())
    old = before.pid
    runtime.call(runtime.restart(5.0))
    assert runtime.host_agent is not None
    assert runtime.host_agent.pid != old
    assert runtime.host_agent.request("ping") is not None
    assert before.process.returncode == -signal.SIGKILL
    assert [a.pid for a in runtime._agents.live("h1")] == [runtime.host_agent.pid]
    runtime.call(runtime.start_agent())  # adding prunes the record of the dead one
    assert old not in [a.pid for a in runtime._agents.all()]


def test_controller_commands_need_the_fork_server(runtime: HostRuntime) -> None:
    with pytest.raises(AssertionError, match="before bring-up"):
        runtime.call(runtime.run_command(["true"], 1.0, from_controller=True))
