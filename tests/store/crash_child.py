"""The crash test's child: ``python -m tests.store.crash_child DB RUN SYNCHRONOUS``.

Writes to the store as fast as it can and prints one line to stdout after each write the store
reported as committed (the parent SIGKILLs it at a random moment):

- ``S <id> <version> <n>``: ``await sessions.put(id, {"n": n, ...})`` returned
- ``C <version>``: a compare-and-set of the shared session ``counter`` to that version returned
- ``O <first> <last>``: observations with ticks first..last were journaled, then flush() returned
- ``A <first> <last>``: likewise for action results (tick numbers)
- ``B <id> <n>``: a batched ``put_nowait`` followed by flush() returned
- ``U <stream> <acked>``: ``save_cursor("fleet", stream, acked)`` followed by flush() returned
  (the cursor is the stream's head: what an uplink would save after a PUBACK)
- ``E <n> <id>``: ``journal_event("loop", {"n": n})`` followed by flush() returned; ``id`` is
  its row id. The events journal keeps 40 rows: retention removes the rest as it goes, and
  each removal must be logged with it, kill or no kill
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

from agentd.config import JournalConfig, StoreConfig
from agentd.errors import VersionConflict
from agentd.model import Action, ActionResult, Observation
from agentd.store import Store

NO_RETENTION = JournalConfig(max_age=None, max_rows=None)


def report(line: str) -> None:
    os.write(1, (line + "\n").encode())  # unbuffered: a line is out before the next write


async def main(path: Path, run: int, synchronous: str) -> None:
    config = StoreConfig(
        synchronous=synchronous,  # type: ignore[arg-type]
        flush_interval=0.02,
        batch_size=64,
        observations=NO_RETENTION,
        actions=NO_RETENTION,
        events=JournalConfig(max_age=None, max_rows=40),
    )
    store = Store(path, config)
    await store.open()
    assert store.health().state == "ok", store.health()
    report("ready")
    rng = random.Random(run)
    tick = run * 1_000_000
    n = 0
    while True:
        n += 1
        sid = f"run{run}:{n}"
        s = await store.sessions.put(sid, {"n": n, "pad": "p" * rng.randrange(0, 5000)})
        report(f"S {sid} {s.version} {n}")
        current = await store.sessions.get("counter")
        try:
            c = await store.sessions.put(
                "counter", n, expected_version=current.version if current else 0
            )
            report(f"C {c.version}")
        except VersionConflict:
            pass  # nobody else writes it: this would be a bug, and the parent would see it
        first = tick + 1
        for _ in range(rng.randrange(1, 40)):
            tick += 1
            store.journal_observation(
                Observation(tick=tick, monotonic=0.0, wall=time.time(), readings={"r": {"n": n}})
            )
            store.journal_result(
                ActionResult(
                    action=Action(actuator="a", name="x", key=f"k{tick}"),
                    status="ok",
                    tick=tick,
                    finished_at=time.time(),
                )
            )
        store.sessions.put_nowait(f"batched:{run}", {"n": n})
        store.journal_event("loop", {"run": run, "n": n})
        await store.flush()
        report(f"O {first} {tick}")
        report(f"A {first} {tick}")
        report(f"B batched:{run} {n}")
        report(f"E {run * 1_000_000 + n} {store.stream_head('events')}")
        # cursor saves ride the group commit like the rows; several coalesce into one write
        for stream in ("observations", "actions"):
            store.save_cursor("fleet", stream, store.stream_head(stream) - rng.randrange(0, 3))
            store.save_cursor("fleet", stream, store.stream_head(stream))
        await store.flush()
        report(f"U observations {store.stream_head('observations')}")
        report(f"U actions {store.stream_head('actions')}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
