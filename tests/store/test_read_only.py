"""A database on a file system that has gone read-only (issue 13): it opens read-only and still
serves what it holds, the loop's writes wait (bounded), and when the disk is writable again the
store reopens it for writing and commits them. A real tmpfs, really remounted read-only (needs
root with CAP_SYS_ADMIN; skipped, saying so, where mounting is not allowed)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from agentd.errors import StoreError
from agentd.model import Observation
from tests.store.conftest import Opener
from tests.store.test_disk import remount, tmpfs

pytestmark = pytest.mark.root


def obs(tick: int) -> Observation:
    return Observation(tick=tick, monotonic=0.0, wall=time.time(), readings={"s": {"v": tick}})


async def test_read_only_database_serves_reads_then_resumes_writing(
    open_store: Opener, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(short_tmp / "disk", "4m") as disk:
        path = disk / "agentd.db"
        store = await open_store(path=path)
        await store.sessions.put("kept", {"n": 1})
        for tick in range(1, 11):
            store.journal_observation(obs(tick))
        await store.close()
        remount(disk, "ro")
        with caplog.at_level(logging.ERROR, logger="agentd.store"):
            store = await open_store(path=path, flush_interval=0.05, queue_size=100)
        h = store.health()
        assert h.state == "degraded"
        assert h.last_error == (
            f"{path} cannot be written (unable to open database file); opened it read-only; "
            "reads are served, writes wait"
        )
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        # what was committed is there to read
        got = await store.sessions.get("kept")
        assert got is not None
        assert got.state == {"n": 1}
        assert [s.id for s in await store.sessions.list()] == ["kept"]
        assert [o.tick for o in await store.query_observations()] == list(range(1, 11))
        assert [r.id for r in await store.stream_rows("observations", 5, 100, 1 << 20)] == [
            6,
            7,
            8,
            9,
            10,
        ]
        assert store.stream_head("observations") == 10
        assert (await store.check()).ok
        # writes: awaited ones fail at once, the loop's rows wait in the bounded queue
        with pytest.raises(StoreError, match=r"store unavailable: .* opened it read-only"):
            await store.sessions.put("new", 1)
        assert store.sessions.put_nowait("new", 1) is False
        for tick in range(11, 21):
            store.journal_observation(obs(tick))
        assert store.health().queue_depth == 10
        with pytest.raises(StoreError):
            await store.flush()
        remount(disk, "rw")
        for _ in range(400):  # the writer retries with backoff (from flush_interval)
            if store.health().state == "ok":
                break
            await asyncio.sleep(0.05)
        assert store.health().state == "ok"
        await store.flush()
        assert [o.tick for o in await store.query_observations(limit=100)] == list(range(1, 21))
        assert (await store.sessions.put("new", 2)).version == 1
        await store.close()
