"""Startup checks and failure modes on real files: corrupt files are moved aside, schemas
migrate, a newer schema is refused untouched, an unwritable database degrades the store without
raising."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

from agentd.errors import StoreError
from agentd.model import Observation
from agentd.store import Store
from agentd.store.schema import LATEST, MIGRATIONS
from tests.store.conftest import Opener, config

CORRUPT_LINE = (
    r"store: {path} is corrupt \((?P<why>[^)]*)\); moved it to "
    r"(?P<moved>{path}\.corrupt-\d{{8}}T\d{{6}}Z) and started a fresh database$"
)


def obs(tick: int) -> Observation:
    return Observation(tick=tick, monotonic=0.0, wall=time.time(), readings={"s": {"v": tick}})


def make_database(path: Path, rows: int = 3000) -> None:
    """A real agentd database with enough pages that truncating it cuts through tables."""

    async def fill() -> None:
        store = Store(path, config())
        await store.open()
        for i in range(rows):
            store.journal_observation(obs(i + 1))
            store.sessions.put_nowait(f"s:{i}", {"pad": "y" * 200})
        await store.close()

    asyncio.run(fill())


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def truncated(path: Path) -> None:
    make_database(path)
    size = path.stat().st_size
    assert size > 200_000
    with path.open("r+b") as fh:
        fh.truncate(size // 2)


def text_file(path: Path) -> None:
    path.write_text("# this is not a database\n" * 200)


@pytest.mark.parametrize("damage", [random_bytes, truncated, text_file])
def test_corrupt_file_is_moved_aside_and_a_fresh_database_works(
    damage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import re

    path = tmp_path / "agentd.db"
    damage(path)
    original = path.read_bytes()

    async def run() -> None:
        store = Store(path, config())
        with caplog.at_level(logging.ERROR, logger="agentd.store"):
            await store.open()
        try:
            assert store.health().state == "ok"
            s = await store.sessions.put("after", 1)
            assert s.version == 1
            assert await store.query_observations() == []
        finally:
            await store.close()

    asyncio.run(run())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    m = re.fullmatch(CORRUPT_LINE.format(path=re.escape(str(path))), errors[0])
    assert m, errors[0]
    moved = Path(m.group("moved"))
    assert moved.read_bytes() == original  # kept as it was, for a post-mortem
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["agentd.db", moved.name])
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone() == ("ok",)


def test_stale_wal_moves_aside_with_the_database(tmp_path: Path) -> None:
    path = tmp_path / "agentd.db"
    path.write_text("garbage")
    (tmp_path / "agentd.db-wal").write_bytes(os.urandom(4096))

    async def run() -> None:
        store = Store(path, config())
        await store.open()
        await store.close()

    asyncio.run(run())
    names = sorted(p.name for p in tmp_path.iterdir())
    # SQLite may already have discarded the stale WAL while failing to read the file; if not,
    # it went aside with it. Either way it never reaches the fresh database.
    assert names[0] == "agentd.db"
    assert names[1].startswith("agentd.db.corrupt-")
    assert names[2:] in ([], [names[1] + "-wal"])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    conn.close()


def _create_v1(path: Path) -> None:
    """A database exactly as the first schema left it, with data."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0][1].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO sessions VALUES ('old', x'a3616263', 4, 1.0, 2.0, NULL)"
    )  # msgpack "abc"
    conn.execute(
        "INSERT INTO actions (tick, finished_at, actuator, name, status, key, size, data) "
        "VALUES (1, ?, 'log', 'alert', 'ok', 'k1', 1, x'c0')",
        (time.time(),),
    )
    conn.close()


async def test_migrations_from_version_0_and_from_the_first_schema(
    open_store: Opener, tmp_path: Path
) -> None:
    # user_version 0: an empty SQLite file (what `sqlite3 agentd.db` leaves) gets every step
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert sqlite3.connect(empty).execute("PRAGMA user_version").fetchone() == (0,)
    store = await open_store(path=empty)
    assert store.health().schema_version == LATEST
    await store.close()
    assert sqlite3.connect(empty).execute("PRAGMA user_version").fetchone() == (LATEST,)

    # a database written by the first schema keeps its data and gains what came later
    v1 = tmp_path / "v1.db"
    _create_v1(v1)
    store = await open_store(path=v1)
    assert store.health().schema_version == LATEST == 5
    old = await store.sessions.get("old")
    assert old is not None
    assert (old.state, old.version) == ("abc", 4)
    assert (await store.sessions.put("old", "new")).version == 5
    assert store.key_seen("log", "k1")  # read through the index migration 2 added
    assert store.health().dropped_total == {"observations": 0, "actions": 0, "events": 0}
    await store.close()
    conn = sqlite3.connect(v1)
    assert conn.execute("PRAGMA user_version").fetchone() == (5,)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"actions_key", "journal_stats", "action_keys"} <= names
    conn.close()


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_newer_schema_is_refused_untouched(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "agentd.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode = {mode}")
    conn.execute("CREATE TABLE future (x)")
    conn.execute("INSERT INTO future VALUES (1)")
    conn.execute(f"PRAGMA user_version = {LATEST + 5}")
    conn.close()
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    names = sorted(p.name for p in tmp_path.iterdir())

    async def run() -> None:
        store = Store(path, config())
        with pytest.raises(StoreError) as err:
            await store.open()
        assert str(err.value) == (
            f"{path} was written by a newer agentd (schema version {LATEST + 5}; this agentd "
            f"knows up to {LATEST}); refusing to use or modify it"
        )
        await store.close()

    asyncio.run(run())
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == names


async def test_unopenable_path_degrades_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    store = Store(tmp_path / "file" / "agentd.db", config(queue_size=10))
    with caplog.at_level(logging.ERROR, logger="agentd.store"):
        await store.open()
    try:
        h = store.health()
        assert h.state == "degraded"
        assert h.last_error is not None
        assert h.last_error.startswith(f"cannot open {tmp_path}/file/agentd.db: ")
        for tick in range(1, 31):
            store.journal_observation(obs(tick))  # never raises, never blocks
        assert store.health().queue_depth <= 10
        assert store.health().queue_dropped["observations"] >= 20
        with pytest.raises(StoreError, match="store unavailable"):
            await store.sessions.put("x", 1)
        with pytest.raises(StoreError, match="store unavailable"):
            await store.query_observations()
    finally:
        await store.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].endswith("journaling is degraded, the loop keeps running")
    assert "Traceback" not in caplog.text


async def _set_pragma(store: Store, pragma: str) -> None:
    # a real SQLite limit on the store's own connection: the write path sees the same errors as
    # on a full or read-only disk (root ignores file permissions, so chmod cannot show this)
    await store.read(lambda conn: conn.execute(f"PRAGMA {pragma}").fetchall())


@pytest.mark.parametrize(
    ("pragma", "undo", "message"),
    [
        ("max_page_count = 1", "max_page_count = 1000000", "database or disk is full"),
        ("query_only = ON", "query_only = OFF", "attempt to write a readonly database"),
    ],
)
async def test_full_or_read_only_disk_degrades_then_recovers(
    open_store: Opener, pragma: str, undo: str, message: str
) -> None:
    store = await open_store(queue_size=500, flush_interval=0.05)
    await store.sessions.put("before", 1)
    pages = await store.read(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await _set_pragma(store, pragma.replace("= 1", f"= {pages}"))
    for tick in range(1, 301):
        store.journal_observation(obs(tick))
    with pytest.raises(StoreError, match=message):
        await store.sessions.put("during", "x" * 100_000)
    h = store.health()
    assert h.state == "degraded"
    assert h.last_error == f"cannot write {store.path}: {message}"
    assert h.queue_depth <= 500
    with pytest.raises(StoreError, match=message):
        await store.flush()
    # reads still work while writes fail
    got = await store.sessions.get("before")
    assert got is not None
    await _set_pragma(store, undo)
    await store.flush()  # the rows kept queued commit on the retry
    assert store.health().state == "ok"
    assert [o.tick for o in await store.query_observations(limit=1000)] == list(range(1, 301))
    assert await store.sessions.get("during") is None  # it failed loudly; it was not kept
