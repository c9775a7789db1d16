"""The uplink crash test's child: ``python -m tests.uplink.crash_child DB URL RUN``.

A Store and an UplinkEngine in one process, like agentd: observations are journaled every few
milliseconds, each commit notifies the engine. After each flush it prints ``O <last id>`` (the
highest id it knows is committed). The parent SIGKILLs it at random moments; ``RUN`` = -1 is
the last run: it writes nothing, drains the backlog, stops gracefully and prints ``done``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from agentd.config import JournalConfig, StoreConfig
from agentd.model import Observation
from agentd.store import Store
from agentd.uplink.config import MqttConfig, UplinkSettings
from agentd.uplink.engine import UplinkEngine
from agentd.uplink.mqtt import MqttTransport


def report(line: str) -> None:
    os.write(1, (line + "\n").encode())  # unbuffered: out before the next write


async def main(path: Path, url: str, run: int) -> None:
    config = StoreConfig(
        synchronous="full",
        flush_interval=0.02,
        observations=JournalConfig(max_age=None, max_rows=None),
    )
    store = Store(path, config)
    await store.open()
    settings = UplinkSettings(
        node="gw-crash", batch_interval=0.05, window=4, batch_rows=16, streams=("observations",)
    )
    engine = UplinkEngine("fleet", settings, MqttTransport(MqttConfig(url=url)), store)
    store.on_commit = lambda _seconds: engine.notify()
    await engine.start()
    report("ready")
    if run < 0:
        while engine.state().streams[0].acked < store.stream_head("observations"):
            await asyncio.sleep(0.01)
        await engine.stop(5.0)
        await store.close()
        report("done")
        return
    tick = run * 1_000_000
    while True:
        for _ in range(5):
            tick += 1
            store.journal_observation(Observation(tick=tick, monotonic=0.0, wall=time.time()))
        await store.flush()
        report(f"O {store.stream_head('observations')}")
        await asyncio.sleep(0.005)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
