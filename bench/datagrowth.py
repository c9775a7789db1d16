"""How the store's cost grows with data: session upserts/s and journal appends/s with an empty
database against one holding 1M observation-journal rows and 100k sessions, in the same run;
and the retention sweep's time for the same number of rows dropped from a small and from a
large journal.

Both stores are the real `Store` (synchronous = "normal", like the store benchmark). The large
database is filled with the stdlib sqlite3 module, in the store's own schema and row encoding,
before the store opens it. Upserts go through the batched path (``put_nowait`` then one
``flush``), appends through ``journal_observation``. Targets: the large database's rates >= 90 %
of the empty one's; dropping 10k rows from a 1M-row journal takes about as long as from a
100k-row one (ratio <= 2: time follows rows dropped, not rows kept).
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import msgspec
import uvloop

from agentd.config import JournalConfig, StoreConfig
from agentd.model import Observation
from agentd.store import Store
from agentd.store.journal import observation_row
from bench.common import Figure, print_table, ratio_figure

OBS = Observation(
    tick=1,
    monotonic=1.0,
    wall=time.time(),
    readings={
        "system": {
            "cpu.percent": 12.5,
            "load.1m": 0.4,
            "memory.percent": 41.0,
            "disk.root.percent": 63.2,
            "memory.available": 8_000_000_000,
        }
    },
)


def _config(max_rows: int) -> StoreConfig:
    journal = JournalConfig(max_age=None, max_rows=max_rows)
    return StoreConfig(
        synchronous="normal",
        queue_size=200_000,
        batch_size=1000,
        observations=journal,
        actions=journal,
    )


async def _prepare(path: Path, rows: int, sessions: int) -> None:
    store = Store(path, _config(10**9))
    await store.open()
    await store.close()
    if not rows and not sessions:
        return
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    conn.execute("BEGIN")
    _, _, size, data = observation_row(OBS)
    conn.executemany(
        "INSERT INTO observations (tick, wall, size, data) VALUES (?, ?, ?, ?)",
        ((i, now - rows + i, size, data) for i in range(rows)),
    )
    state = msgspec.msgpack.encode({"count": 3, "active": False, "pad": "x" * 900})
    conn.executemany(
        "INSERT INTO sessions (id, state, version, created_at, updated_at) VALUES (?,?,1,?,?)",
        ((f"seed:{i:07d}", state, now, now) for i in range(sessions)),
    )
    conn.execute("COMMIT")
    conn.close()


async def _rates(path: Path, n: int) -> tuple[float, float]:
    store = Store(path, _config(10**9))
    await store.open()
    try:
        state = {"count": 3, "active": False, "pad": "x" * 900}
        t0 = time.perf_counter()
        for i in range(n):
            if not store.sessions.put_nowait(f"bench:{i % 5000:05d}", state):
                await store.flush()
                store.sessions.put_nowait(f"bench:{i % 5000:05d}", state)
            if i % 100 == 99:
                await asyncio.sleep(0)
        await store.flush()
        upserts = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n):
            store.journal_observation(msgspec.structs.replace(OBS, tick=i))
            if i % 100 == 99:
                await asyncio.sleep(0)
        await store.flush()
        appends = n / (time.perf_counter() - t0)
    finally:
        await store.close()
    return upserts, appends


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM observations").fetchone()[0])
    finally:
        conn.close()


async def _sweep(path: Path, drop: int) -> float:
    """Seconds for the commit that trims ``drop`` rows off the journal."""
    rows = _count(path) + 1
    store = Store(path, _config(rows - drop))
    await store.open()
    try:
        t0 = time.perf_counter()
        store.journal_observation(msgspec.structs.replace(OBS, tick=rows))
        await store.flush()
        elapsed = time.perf_counter() - t0
    finally:
        await store.close()
    kept = _count(path)
    if kept != rows - drop:
        raise RuntimeError(f"retention kept {kept} rows, expected {rows - drop}")
    return elapsed


async def _measure(quick: bool) -> list[Figure]:
    big_rows, big_sessions = (200_000, 20_000) if quick else (1_000_000, 100_000)
    small_rows = big_rows // 10
    n = 10_000 if quick else 30_000
    drop = 10_000
    with tempfile.TemporaryDirectory(prefix="agdata") as tmp:
        base = Path(tmp)
        await _prepare(base / "empty.db", 0, 0)
        await _prepare(base / "big.db", big_rows, big_sessions)
        await _prepare(base / "small.db", small_rows, 0)
        # interleave the two databases so load on the machine hits both alike
        e1 = await _rates(base / "empty.db", n)
        b1 = await _rates(base / "big.db", n)
        e2 = await _rates(base / "empty.db", n)
        b2 = await _rates(base / "big.db", n)
        empty = (max(e1[0], e2[0]), max(e1[1], e2[1]))
        big = (max(b1[0], b2[0]), max(b1[1], b2[1]))
        sweep_small = await _sweep(base / "small.db", drop)
        sweep_big = await _sweep(base / "big.db", drop)
    label = f"{big_rows // 1000}k rows + {big_sessions // 1000}k sessions"
    return [
        ratio_figure(
            f"session upserts/s, {label} vs empty",
            big[0],
            empty[0],
            "rows/s",
            target=">= 0.9x empty",
            min_ratio=0.9,
        ),
        ratio_figure(
            f"journal appends/s, {label} vs empty",
            big[1],
            empty[1],
            "rows/s",
            target=">= 0.9x empty",
            min_ratio=0.9,
        ),
        ratio_figure(
            f"retention: drop {drop // 1000}k of {big_rows // 1000}k vs of "
            f"{small_rows // 1000}k rows",
            sweep_big * 1e3,
            sweep_small * 1e3,
            "ms",
            target="<= 2x (follows rows dropped)",
            max_ratio=2.0,
        ),
    ]


def run(quick: bool = False) -> list[Figure]:
    return uvloop.run(_measure(quick))


def main() -> None:
    print_table(run())


if __name__ == "__main__":
    main()
