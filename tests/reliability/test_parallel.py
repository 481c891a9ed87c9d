"""Guarantee 4: labs of the same topology side by side, without collision or cross-talk."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Lab, load_topology
from harness.errors import AgentError
from tests.reliability.support import LAN, cycles, lab_namespaces, netharness, start

pytestmark = pytest.mark.usefixtures("needs_root")
PARALLEL = 8


def test_eight_concurrent_up_with_a_concurrent_clean() -> None:
    for _ in range(cycles(2, 10)):
        procs = [start("up", str(LAN), "--json") for _ in range(PARALLEL)]
        cleaner = start("clean")  # runs while the labs come up: must remove none of them
        labs = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            labs.append(json.loads(out))
        cleaner.communicate(timeout=60)
        try:
            ids = {lab["id"] for lab in labs}
            assert len(ids) == PARALLEL
            for lab in labs:
                names = {n for n in lab_namespaces() if n.startswith(f"nh-{lab['id']}")}
                assert len(names) == 4, f"lab {lab['id']} lost namespaces: {names}"
            assert netharness("clean").returncode == 0
            assert len(lab_namespaces()) >= 4 * PARALLEL
        finally:
            for lab in labs:
                netharness("down", lab["id"])
        assert not [n for n in lab_namespaces() if any(n.startswith(f"nh-{i}") for i in ids)]


def test_no_cross_talk_between_labs_with_the_same_addresses() -> None:
    topology = load_topology(LAN)
    with ThreadPoolExecutor(PARALLEL) as pool:
        labs = list(pool.map(lambda _: Lab.up(topology), range(PARALLEL)))
    try:
        # Lab 0's h2 listens; every other lab's h1 dials the very same address and port.
        server = labs[0].hosts["h2"].agent()
        port = server.listen("tcp", port=0).port
        own = labs[0].hosts["h1"].agent().connect("tcp", "10.0.1.12", port)
        assert own.request("same lab").pid == server.pid
        for lab in labs[1:]:
            with pytest.raises(AgentError) as refused:
                lab.hosts["h1"].agent().connect("tcp", "10.0.1.12", port, timeout=2)
            assert refused.value.errno == "ECONNREFUSED"  # its own h2, which has no listener
        accepted = [e for e in server.events("accepted")]
        assert len(accepted) == 1
        assert accepted[0]["peer"][0] == "10.0.1.11"
    finally:
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lambda lab: lab.down(), labs))
    assert not [n for n in lab_namespaces() if any(n.startswith(f"nh-{lab.id}") for lab in labs)]


def test_xdist_with_eight_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.parametrize("n", range(16))
        @pytest.mark.topology({str(LAN)!r})
        def test_parallel(lab, n):
            server = lab.hosts["h2"].agent()
            port = server.listen("udp").port
            conn = lab.hosts["h1"].agent().connect("udp", "10.0.1.12", port)
            assert conn.request(str(n)).pid == server.pid
    """)
    before = lab_namespaces()
    for _ in range(cycles(1, 5)):
        result = pytester.runpytest_subprocess("-n", str(PARALLEL), "-p", "no:cacheprovider")
        result.assert_outcomes(passed=16)
    assert lab_namespaces() == before
