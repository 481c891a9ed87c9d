"""The fork server under a flood of spawns: a thousand-host lab starts its agents at once."""

from __future__ import annotations

import asyncio
import os

from harness.backends._forkserver import ForkServerClient
from harness.core._loop import LoopThread

SPAWNS = 1000  # more than fit in the control socket's send buffer (about 200 kB) at once


async def spawn_all(client: ForkServerClient) -> list[int]:
    client.start()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        spawned = await asyncio.gather(
            *(client.spawn("", ["true"], (null, null, null)) for _ in range(SPAWNS))
        )
        codes = await asyncio.gather(*(process.wait() for process in spawned))
    finally:
        os.close(null)
        await client.close(orderly=True)
    return list(codes)


def test_spawns_sent_back_to_back_are_all_answered_and_reaped() -> None:
    # Each spawn is answered, then its exit told: replies outnumber what the controller's
    # queue holds while it is still sending. A server that blocked on a full queue
    # while the controller blocked on ours never answered (the bring-up hung).
    runner = LoopThread("test-flood")
    runner.start()
    try:
        codes = runner.run(spawn_all(ForkServerClient(None)), timeout=60)
    finally:
        runner.stop()
    assert codes == [0] * SPAWNS
