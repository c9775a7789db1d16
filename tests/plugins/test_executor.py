"""`PluginExecutor` with threads really blocked (a threading.Event nobody sets until the end):
calls are known by plugin, a stuck one frees its place when abandoned, a call that never
started is never run, and shutdown does not wait for a stuck thread."""

from __future__ import annotations

import asyncio
import threading
import time

from agentd.plugins.executor import PluginExecutor, running_for


async def test_a_stuck_call_is_known_abandoned_and_does_not_starve_the_others() -> None:
    gate = threading.Event()
    ran: list[str] = []
    pool = PluginExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(pool)
    try:

        def block(name: str) -> None:
            ran.append(name)
            gate.wait(30)

        with running_for("sensor:stuck"):
            stuck = asyncio.ensure_future(asyncio.to_thread(block, "stuck"))
        await asyncio.sleep(0.05)
        assert pool.busy("sensor:stuck")
        assert not pool.busy("sensor:other")
        # the only worker is taken: a second call of another plugin waits in the queue
        with running_for("sensor:other"):
            other = asyncio.ensure_future(asyncio.to_thread(ran.append, "other"))
        # a queued call of the stuck plugin whose waiter gives up never runs
        with running_for("sensor:stuck"):
            late = asyncio.ensure_future(asyncio.to_thread(ran.append, "late"))
        await asyncio.sleep(0.05)
        assert ran == ["stuck"]
        late.cancel()
        stuck.cancel()
        assert pool.abandon("sensor:stuck") == 1
        assert pool.busy("sensor:stuck")  # still running, and known to be
        assert pool.stuck_for("sensor:stuck")
        await asyncio.wait_for(other, 5)
        assert ran == ["stuck", "other"]
        await asyncio.sleep(0.05)
        assert "late" not in ran
        t0 = time.monotonic()
        pool.shutdown(wait=True)
        assert time.monotonic() - t0 < 2.5  # the stuck thread is not waited for
        assert [c.owner for c in pool.stuck()] == ["sensor:stuck"]
    finally:
        gate.set()
        pool.shutdown(wait=False)
    await asyncio.sleep(0.05)
    assert not pool.running()
