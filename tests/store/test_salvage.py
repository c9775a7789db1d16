"""Corruption costs what is corrupt, not everything (issue 13): real byte damage in a real file.
A damaged leaf page of the sessions table and one of the observation journal: the database is
moved aside as before, and every row that can still be read is copied into the fresh one, with
counts in the log and the lost journal ids logged as dropped ("corrupt")."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.model import Observation
from agentd.store import Store
from tests.store.conftest import config

SESSIONS = 3000


def build(path: Path) -> None:
    async def fill() -> None:
        store = Store(path, config())
        await store.open()
        for i in range(SESSIONS):
            store.sessions.put_nowait(f"s:{i:05d}", {"i": i, "pad": "y" * 200})
            store.journal_observation(
                Observation(tick=i + 1, monotonic=0.0, wall=time.time(), readings={"s": {"v": i}})
            )
        await store.claim_key("exec", "reboot-1")
        await store.close()  # checkpoints the WAL into the file: the damage lands in it

    asyncio.run(fill())


def leaf_pages(path: Path, table: str) -> list[int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [
            int(r[0])
            for r in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
                (table,),
            )
        ]
    finally:
        conn.close()


def damage_page(path: Path, page: int, page_size: int = 4096) -> None:
    with path.open("r+b") as fh:
        fh.seek((page - 1) * page_size)
        fh.write(os.urandom(page_size))


def quick_check_ok(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def test_one_damaged_leaf_costs_its_rows_not_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agentd.db"
    build(path)
    sessions = leaf_pages(path, "sessions")
    journal = leaf_pages(path, "observations")
    assert len(sessions) > 20
    assert len(journal) > 3
    damage_page(path, sessions[len(sessions) // 2])
    damage_page(path, journal[len(journal) // 2])
    assert not quick_check_ok(path)

    async def run() -> None:
        store = Store(path, config())
        with caplog.at_level(logging.WARNING, logger="agentd.store"):
            await store.open()
        try:
            assert store.health().state == "ok"
            live = await store.sessions.list(limit=10_000)
            # one leaf holds ~16 of these sessions: the rest survive, intact
            assert SESSIONS - 40 <= len(live) < SESSIONS
            for s in live:
                assert s.state == {"i": int(s.id[2:]), "pad": "y" * 200}
            assert store.key_seen("exec", "reboot-1")  # a claimed key is never forgotten
            rows = await store.stream_rows("observations", 0, 10_000, 1 << 30)
            ids = [r.id for r in rows]
            assert SESSIONS - 200 <= len(ids) < SESSIONS
            assert ids == sorted(ids)
            assert store.stream_head("observations") == SESSIONS  # ids keep moving forward
            # the ids that could not be read are explained, exactly
            missing = sorted(set(range(1, SESSIONS + 1)) - set(ids))
            drops = await store.stream_drops("observations", 1, SESSIONS)
            assert [d.reason for d in drops] == ["corrupt"]
            assert list(range(drops[0].first, drops[0].last + 1)) == missing
            assert store.health().rows["observations"] == len(ids)
            store.journal_observation(
                Observation(tick=1, monotonic=0.0, wall=time.time(), readings={})
            )
            await store.flush()
            assert store.stream_head("observations") == SESSIONS + 1
        finally:
            await store.close()

    asyncio.run(run())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "is corrupt" in errors[0]
    assert "started a fresh database" in errors[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    salvaged = [w for w in warnings if "salvaged" in w]
    assert len(salvaged) == 1, warnings
    m = re.search(
        r"salvaged (\d+) sessions, 1 action_keys, 0 actions, 0 events, (\d+) obs", salvaged[0]
    )
    assert m, salvaged[0]
    assert "1 damaged id ranges of the journals are logged as dropped (corrupt)" in salvaged[0]
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_a_file_that_is_no_database_salvages_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agentd.db"
    path.write_bytes(os.urandom(64 * 1024))

    async def run() -> None:
        store = Store(path, config())
        with caplog.at_level(logging.WARNING, logger="agentd.store"):
            await store.open()
        assert await store.sessions.list() == []
        await store.close()

    asyncio.run(run())
    assert any(r.getMessage().endswith("nothing could be read from it") for r in caplog.records), (
        caplog.text
    )


@pytest.mark.slow
def test_a_salvage_killed_midway_is_finished_at_the_next_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agentd.db"

    async def fill() -> None:
        store = Store(path, config(batch_size=5000, queue_size=100_000))
        await store.open()
        for i in range(40_000):
            store.sessions.put_nowait(f"s:{i:06d}", {"i": i, "pad": "y" * 200})
        await store.close()

    asyncio.run(fill())
    pages = leaf_pages(path, "sessions")
    damage_page(path, pages[len(pages) // 2])
    marker = tmp_path / "agentd.db.salvage"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.store.salvage_child", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():  # moved aside, the fresh database being filled
            assert child.poll() is None, "the child ended before it was killed"
            assert time.monotonic() < deadline, "the salvage never started"
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.stdout is not None
    assert child.stdout.read() == b"", "the open finished before the kill: nothing was tested"
    child.stdout.close()
    if path.exists():  # killed once the fresh database was there: nothing salvaged into it
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
        except sqlite3.OperationalError:
            pass  # before it had its tables
        finally:
            conn.close()

    async def reopen() -> int:
        store = Store(path, config())
        with caplog.at_level(logging.WARNING, logger="agentd.store"):
            await store.open()
        try:
            return len(await store.sessions.list(limit=100_000))
        finally:
            await store.close()

    assert asyncio.run(reopen()) >= 40_000 - 40
    assert "finishing the interrupted salvage" in caplog.text
    assert not marker.exists()
    assert asyncio.run(reopen()) >= 40_000 - 40  # finished once, not repeated
    assert caplog.text.count("salvaged ") == 1
