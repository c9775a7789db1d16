"""Time on a gateway without an RTC: rows written with the clock in 1970, then NTP steps it to
now. The store's clock is injected (the machine's is never touched)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from agentd.config import JournalConfig, StoreConfig
from agentd.model import Observation
from agentd.store import Store
from tests.uplink.broker import Mosquitto
from tests.uplink.helpers import NODE, acked, collector, completeness, engine, until

YEAR_1970 = 86_400.0 * 3
NOW = 1_764_600_000.0


class SteppingClock:
    def __init__(self) -> None:
        self.now_wall = YEAR_1970
        self.now_boot = 20.0
        self.is_synced = False

    @property
    def boot_id(self) -> str:
        return "boot-clock-test"

    def wall(self) -> float:
        return self.now_wall

    def boottime(self) -> float:
        return self.now_boot

    def synced(self) -> bool:
        return self.is_synced


async def test_clock_step_deletes_nothing_and_does_not_degrade(
    tmp_path: Path, broker: Mosquitto
) -> None:
    clock = SteppingClock()
    cfg = StoreConfig(
        synchronous="normal",
        flush_interval=0.05,
        observations=JournalConfig(max_age=3600.0, max_rows=None),
    )
    store = Store(tmp_path / "a.db", cfg, clock=clock)
    await store.open()
    e = engine(store, broker.url, backlog_max_age=600.0)
    try:
        with collector(broker.port) as sub:
            broker.stop(signal.SIGTERM)  # the link is down while the clock is wrong
            await e.start()

            def write(first: int, n: int) -> None:
                for tick in range(first, first + n):
                    store.journal_observation(
                        Observation(tick=tick, monotonic=0.0, wall=clock.wall())
                    )

            write(1, 100)
            await store.flush()
            clock.now_boot += 30.0
            clock.now_wall, clock.is_synced = NOW, True  # NTP: decades forward at once
            write(101, 10)
            await store.flush()
            e.notify()
            await asyncio.sleep(2.5)  # the engine refreshes its backlog figures meanwhile
            assert store.health().dropped["observations"] == 0
            obs = next(s for s in e.state().streams if s.stream == "observations")
            assert obs.backlog == 110
            # the oldest row says 1970, unsynchronized: not "55 years old"
            assert obs.oldest_age is not None
            assert obs.oldest_age < 60
            assert e.state().health == "ok", e.state().reason
            broker.start()  # the collector's persistent session comes back with it
            assert await until(lambda: acked(e) == 110, 30)
            assert await until(
                lambda: not completeness(sub.snapshot()).ledger(NODE, "observations").missing(110),
                20,
            )
            book = completeness(sub.snapshot())
            led = book.ledger(NODE, "observations")
            assert led.missing(110) == []
            assert led.gaps == []
            rows = [row for m in sub.decoded("observations") for row in m["rows"]]
            assert [r[2] for r in rows] == [False] * 100 + [True] * 10  # `synced` per row
            assert {r[3] for r in rows} == {"boot-clock-test"}
    finally:
        await e.stop(1.0)
        await store.close()
