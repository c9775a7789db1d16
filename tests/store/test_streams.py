"""The journals as streams (issue 14) on real SQLite files: ids never reused, the epoch, rows
read back exactly as stored, every removal logged as a range whose widths equal the drop counts,
retention by age that a wall-clock step cannot fool, durable cursors and retention holds."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from agentd.model import Action, ActionResult, Observation
from agentd.store import Event, Store
from agentd.store.schema import LATEST, migrate
from tests.store.conftest import Opener, config

YEAR_1970 = 86400.0 * 3  # 4 Jan 1970: a Pi before its first NTP sync
NOW = 1_764_600_000.0  # Dec 2025


class FakeClock:
    """The store's clocks, steppable: the wall clock jumps, boot time only moves forward."""

    def __init__(
        self, wall: float, boottime: float = 100.0, synced: bool = False, boot_id: str = "boot-a"
    ) -> None:
        self.now_wall = wall
        self.now_boot = boottime
        self.is_synced = synced
        self._boot_id = boot_id

    @property
    def boot_id(self) -> str:
        return self._boot_id

    def wall(self) -> float:
        return self.now_wall

    def boottime(self) -> float:
        return self.now_boot

    def synced(self) -> bool:
        return self.is_synced

    def advance(self, seconds: float) -> None:
        self.now_wall += seconds
        self.now_boot += seconds


def obs(tick: int, wall: float | None = None, pad: int = 0) -> Observation:
    return Observation(
        tick=tick,
        monotonic=float(tick),
        wall=time.time() if wall is None else wall,
        readings={"s": {"v": tick, "pad": "x" * pad}},
    )


def result(i: int, at: float | None = None) -> ActionResult:
    return ActionResult(
        action=Action(actuator="log", name="alert", params={"i": i}),
        status="ok",
        tick=i,
        finished_at=time.time() if at is None else at,
    )


async def open_with(path: Path, clock: FakeClock | None = None, **kw: object) -> Store:
    store = Store(path, config(**kw), clock=clock)
    await store.open()
    return store


def table(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def widths(path: Path, stream: str) -> int:
    got = table(path, f"SELECT sum(last - first + 1) FROM dropped_ranges WHERE stream = '{stream}'")
    return int(got[0][0] or 0)  # type: ignore[call-overload]


# -- migration 4 ---------------------------------------------------------------------------------
def _v3_database(path: Path) -> list[tuple[object, ...]]:
    """A database exactly as today's code (schema version 3) leaves it, with rows and a hole
    where retention deleted the oldest; returns the observation rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=3)
    for i in range(1, 51):
        conn.execute(
            "INSERT INTO observations (tick, wall, size, data) VALUES (?, ?, 3, x'a17878')",
            (i, 1000.0 + i),
        )
        conn.execute(
            "INSERT INTO actions (tick, finished_at, actuator, name, status, key, size, data) "
            "VALUES (?, ?, 'log', 'alert', 'ok', ?, 1, x'c0')",
            (i, 1000.0 + i, f"k{i}"),
        )
    conn.execute("DELETE FROM observations WHERE id <= 10")  # retention, before ranges existed
    conn.execute("UPDATE journal_stats SET dropped = 10 WHERE journal = 'observations'")
    rows = conn.execute("SELECT * FROM observations ORDER BY id").fetchall()
    conn.close()
    return rows


async def test_migration_4_keeps_every_row_and_id_and_never_reuses_one(tmp_path: Path) -> None:
    path = tmp_path / "agentd.db"
    before = _v3_database(path)
    actions_before = table(path, "SELECT * FROM actions ORDER BY id")
    store = await open_with(path)
    try:
        assert store.schema_version == LATEST
        after = table(path, "SELECT id, tick, wall, size, data FROM observations ORDER BY id")
        assert after == before
        assert (
            table(
                path,
                "SELECT id, tick, finished_at, actuator, name, status, key, size, data "
                "FROM actions ORDER BY id",
            )
            == actions_before
        )
        assert table(path, "PRAGMA integrity_check") == [("ok",)]
        # the indexes came back with the rebuilt tables
        names = {r[0] for r in table(path, "SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"observations_wall", "observations_tick", "actions_key", "actions_finished"} <= (
            names
        )
        assert store.key_seen("log", "k50")
        assert store.stream_head("observations") == 50
        # the ids removed before the upgrade are explained
        drops = await store.stream_drops("observations", 1, 50)
        assert [(d.first, d.last, d.reason) for d in drops] == [(1, 10, "retention.before_upgrade")]
        # the highest id is deleted: the next row does not get it again (AUTOINCREMENT)
        conn = sqlite3.connect(path)
        conn.execute("DELETE FROM observations WHERE id = 50")
        conn.execute("DELETE FROM actions WHERE id >= 49")
        conn.commit()
        conn.close()
    finally:
        await store.close()
    store = await open_with(path)
    try:
        store.journal_observation(obs(51))
        store.journal_result(result(51))
        await store.flush()
        got = await store.stream_rows("observations", 40, 100, 1 << 20)
        assert [r.id for r in got] == [*range(41, 50), 51]
        assert [r.id for r in await store.stream_rows("actions", 45, 100, 1 << 20)] == [
            46,
            47,
            48,
            51,
        ]
        assert store.stream_head("observations") == 51
    finally:
        await store.close()


async def test_epoch_is_made_once_and_a_recovered_database_gets_a_new_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agentd.db"
    store = await open_with(path)
    epoch = store.epoch
    assert len(epoch) == 32
    int(epoch, 16)
    store.journal_observation(obs(1))
    await store.close()
    again = await open_with(path)
    assert again.epoch == epoch  # stable across restarts
    await again.close()
    # corruption: the file is moved aside and a fresh database takes its place
    path.write_bytes(b"\0" * 8192)
    for side in ("-wal", "-shm"):
        (tmp_path / f"agentd.db{side}").unlink(missing_ok=True)
    fresh = await open_with(path)
    try:
        assert fresh.health().state == "ok"
        assert len(fresh.epoch) == 32
        assert fresh.epoch != epoch
        assert fresh.stream_head("observations") == 0
    finally:
        await fresh.close()
    assert any(p.name.startswith("agentd.db.corrupt-") for p in tmp_path.iterdir())
    other = await open_with(tmp_path / "other.db")
    assert other.epoch not in (epoch, fresh.epoch)  # random per database
    await other.close()


# -- reading streams ---------------------------------------------------------------------------
async def test_stream_rows_are_the_stored_rows_in_id_order(open_store: Opener) -> None:
    store = await open_store()
    sent = [obs(i, pad=100 * (i % 3)) for i in range(1, 101)]
    for o in sent:
        store.journal_observation(o)
    assert await store.stream_rows("observations", 0, 10, 1 << 20) == []  # not committed yet
    assert store.stream_head("observations") == 0
    await store.flush()
    assert store.stream_head("observations") == 100
    rows = await store.stream_rows("observations", 0, 1000, 1 << 30)
    assert [r.id for r in rows] == list(range(1, 101))
    stored = table(store.path, "SELECT data FROM observations ORDER BY id")
    assert [r.data for r in rows] == [d[0] for d in stored]  # as stored, not re-encoded
    assert [msgspec.msgpack.decode(r.data, type=Observation) for r in rows] == sent
    assert all(r.boot_id == store.boot_id != "" for r in rows)
    assert [r.wall for r in rows] == [o.wall for o in sent]
    assert {r.synced for r in rows} == {store.clock.synced()}
    # limit and after
    assert [r.id for r in await store.stream_rows("observations", 95, 3, 1 << 20)] == [96, 97, 98]
    # max_bytes: stops before exceeding it, but the first row always comes
    sizes = {r.id: len(r.data) for r in rows}
    got = await store.stream_rows("observations", 10, 100, sizes[11] + sizes[12])
    assert [r.id for r in got] == [11, 12]
    got = await store.stream_rows("observations", 10, 100, 1)
    assert [r.id for r in got] == [11]
    backlog = await store.stream_backlog("observations", 90)
    assert backlog.rows == 10
    assert backlog.bytes == sum(sizes[i] for i in range(91, 101))
    assert backlog.oldest_wall == sent[90].wall
    empty = await store.stream_backlog("observations", 100)
    assert (empty.rows, empty.bytes, empty.oldest_wall) == (0, 0, None)
    with pytest.raises(ValueError, match="unknown stream 'nope'"):
        await store.stream_rows("nope", 0, 1, 1)  # type: ignore[arg-type]


async def test_events_journal(open_store: Opener) -> None:
    store = await open_store()
    store.journal_event("started", {"version": "1.2.3", "pid": 42})
    store.journal_event("plugin.failing", {"plugin": "cpu", "error": object()})  # repr'd
    await store.flush()
    rows = await store.stream_rows("events", 0, 10, 1 << 20)
    assert [r.id for r in rows] == [1, 2]
    first = msgspec.msgpack.decode(rows[0].data, type=Event)
    assert (first.kind, first.data) == ("started", {"version": "1.2.3", "pid": 42})
    assert abs(first.wall - time.time()) < 60
    second = msgspec.msgpack.decode(rows[1].data, type=Event)
    assert second.data["plugin"] == "cpu"  # only what msgpack cannot hold is repr'd
    assert str(second.data["error"]).startswith("<object object at ")
    assert [e.kind for e in await store.query_events()] == ["started", "plugin.failing"]
    assert store.health().rows["events"] == 2


# -- retention and its log ---------------------------------------------------------------------
async def test_every_removal_is_logged_and_the_widths_equal_the_drop_counts(
    open_store: Opener,
) -> None:
    store = await open_store(
        observations={"max_rows": 100, "max_age": None},
        actions={"max_rows": None, "max_age": None, "max_bytes": 8192},
        batch_size=50,
    )
    for i in range(1, 1001):
        store.journal_observation(obs(i))
        store.journal_result(result(i))
        if i % 70 == 0:
            await store.flush()
    await store.flush()
    h = store.health()
    stats = dict(table(store.path, "SELECT journal, dropped FROM journal_stats"))
    assert stats["observations"] == h.dropped_total["observations"] == 900
    assert widths(store.path, "observations") == 900
    assert stats["actions"] == h.dropped_total["actions"] == widths(store.path, "actions") > 0
    # steady retention at a bound is one range, not one per commit
    drops = await store.stream_drops("observations", 1, 1000)
    assert [(d.first, d.last, d.reason) for d in drops] == [(1, 900, "retention.rows")]
    assert [(d.first, d.reason) for d in await store.stream_drops("actions", 1, 1000)] == [
        (1, "retention.size")
    ]
    # ids of committed rows and logged drops together are exactly 1..head
    kept = [r.id for r in await store.stream_rows("observations", 0, 10_000, 1 << 30)]
    assert kept == list(range(901, 1001))
    assert store.stream_head("observations") == 1000
    assert await store.stream_drops("observations", 901, 1000) == []
    assert [d.first for d in await store.stream_drops("observations", 500, 500)] == [1]


async def test_clock_step_from_1970_deletes_nothing_by_age(tmp_path: Path) -> None:
    """Rows written while the clock says 1970, then NTP steps it to now: their wall times are
    56 years old, their real age is seconds; only the real age counts."""
    clock = FakeClock(YEAR_1970, boottime=30.0, synced=False)
    path = tmp_path / "agentd.db"
    store = await open_with(path, clock, observations={"max_age": 3600.0, "max_rows": None})
    try:
        for i in range(1, 101):
            store.journal_observation(obs(i, wall=clock.wall()))
            clock.advance(1.0)
        await store.flush()
        clock.now_wall = NOW  # the first NTP sync: a step of 56 years
        clock.is_synced = True
        clock.advance(5.0)
        for i in range(101, 111):
            store.journal_observation(obs(i, wall=clock.wall()))
        await store.flush()
        assert store.health().dropped["observations"] == 0
        assert store.health().rows["observations"] == 110
        # real time passes: an hour after the first rows they do go, by age, oldest first
        clock.advance(3600.0 - 100 - 5 + 50.5)
        store.journal_observation(obs(111, wall=clock.wall()))
        await store.flush()
        assert store.health().dropped["observations"] == 51
        drops = await store.stream_drops("observations", 1, 1000)
        assert [(d.first, d.last, d.reason) for d in drops] == [(1, 51, "retention.age")]
        assert widths(path, "observations") == store.health().dropped_total["observations"]
    finally:
        await store.close()


async def test_age_across_boots_trusts_only_synchronized_wall_times(tmp_path: Path) -> None:
    path = tmp_path / "agentd.db"
    bounds = {"observations": {"max_age": 3600.0, "max_rows": None}}
    # boot a: 50 rows before NTP synced (1970), then 50 synced rows, two hours ago
    clock = FakeClock(YEAR_1970, boottime=20.0, synced=False, boot_id="boot-a")
    store = await open_with(path, clock, **bounds)
    for i in range(1, 51):
        store.journal_observation(obs(i, wall=clock.wall()))
    await store.flush()
    clock.now_wall, clock.is_synced = NOW - 7200, True
    for i in range(51, 101):
        store.journal_observation(obs(i, wall=clock.wall()))
    await store.close()
    # boot b, not synchronized yet (1970 again): nothing from boot a is known to be old
    clock = FakeClock(YEAR_1970, boottime=15.0, synced=False, boot_id="boot-b")
    store = await open_with(path, clock, **bounds)
    store.journal_observation(obs(101, wall=clock.wall()))
    await store.flush()
    assert store.health().dropped["observations"] == 0
    # synchronized now: boot a's synced rows are two hours old by the wall clock, and the
    # unsynced rows written before them older still
    clock.now_wall, clock.is_synced = NOW, True
    store.journal_observation(obs(102, wall=clock.wall()))
    await store.flush()
    try:
        assert store.health().dropped["observations"] == 100
        kept = [r.id for r in await store.stream_rows("observations", 0, 100, 1 << 20)]
        assert kept == [101, 102]
        assert [(d.first, d.last) for d in await store.stream_drops("observations", 1, 200)] == [
            (1, 100)
        ]
    finally:
        await store.close()


# -- cursors and holds -----------------------------------------------------------------------
async def test_cursors_coalesce_never_move_back_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "agentd.db"
    store = await open_with(path, flush_interval=60.0)
    assert await store.load_cursors("fleet") == {"observations": 0, "actions": 0, "events": 0}
    commits = store.health().commits
    for acked in range(1, 501):
        store.save_cursor("fleet", "observations", acked)
    store.save_cursor("fleet", "observations", 7)  # backwards: ignored
    store.save_cursor("fleet", "events", 3)
    store.save_cursor("backup", "actions", 9)
    assert store.health().queue_depth == 3  # one queued write per cursor, however many saves
    assert (await store.load_cursors("fleet"))["observations"] == 500  # pending counts
    assert table(path, "SELECT count(*) FROM uplink_cursors") == [(0,)]
    await store.flush()
    assert store.health().commits == commits + 1
    assert sorted(table(path, "SELECT uplink, stream, acked FROM uplink_cursors")) == [
        ("backup", "actions", 9),
        ("fleet", "events", 3),
        ("fleet", "observations", 500),
    ]
    store.save_cursor("fleet", "observations", 499)
    await store.flush()
    await store.close()
    again = await open_with(path)
    try:
        assert await again.load_cursors("fleet") == {
            "observations": 500,
            "actions": 0,
            "events": 3,
        }
        again.save_cursor("fleet", "observations", 10)  # below the durable value: ignored
        await again.flush()
        assert (await again.load_cursors("fleet"))["observations"] == 500
    finally:
        await again.close()


async def test_hold_keeps_rows_until_released_or_the_hard_cap(tmp_path: Path) -> None:
    path = tmp_path / "agentd.db"
    bounds = {"observations": {"max_rows": 100, "max_age": None}, "batch_size": 50}
    store = await open_with(path, **bounds)
    store.hold_retention("fleet", "observations", 0)  # nothing end-to-end acknowledged
    for i in range(1, 151):
        store.journal_observation(obs(i))
    await store.flush()
    assert store.health().rows["observations"] == 150  # held past max_rows
    assert store.health().dropped["observations"] == 0
    store.hold_retention("fleet", "observations", 120)
    store.journal_observation(obs(151))
    await store.flush()
    # released up to 120: back to max_rows, but only among rows <= 120
    assert store.health().rows["observations"] == 100
    assert [d.reason for d in await store.stream_drops("observations", 1, 200)] == [
        "retention.rows"
    ]
    await store.close()
    # the hold is durable: after a restart it applies before any uplink says so again
    store = await open_with(path, **bounds)
    try:
        store.hold_retention("fleet", "observations", 60)  # lower: older than rows kept
        for i in range(152, 352):
            store.journal_observation(obs(i))
            if i % 40 == 0:
                await store.flush()
        await store.flush()
        # the hard cap (2 x max_rows) is exceeded: the oldest held rows go, and say why
        assert store.health().rows["observations"] == 200
        reasons = [d.reason for d in await store.stream_drops("observations", 1, 400)]
        assert reasons[-1] == "retention.hold_cap"
        assert widths(path, "observations") == store.health().dropped_total["observations"]
        store.hold_retention("fleet", "observations", None)
        store.journal_observation(obs(352))
        await store.flush()
        assert store.health().rows["observations"] == 100
    finally:
        await store.close()
    assert table(path, "SELECT hold FROM uplink_cursors") == [(None,)]


def test_the_dropped_range_log_merges_and_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentd.store import retention

    monkeypatch.setattr(retention, "DROP_LOG_MAX", 5)
    monkeypatch.setattr(retention, "TRIM_EVERY", 10)
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    migrate(conn)
    for first in range(1, 101, 10):  # contiguous, one reason: one range
        retention.log_range(conn, "observations", first, first + 9, "retention.rows", 0.0)
    assert conn.execute("SELECT first, last, reason FROM dropped_ranges").fetchall() == [
        (1, 100, "retention.rows")
    ]
    for i in range(200):  # holes between them: one range each, trimmed now and then
        retention.log_range(conn, "actions", 3 * i + 1, 3 * i + 1, "corrupt", 0.0)
        n = conn.execute("SELECT count(*) FROM dropped_ranges WHERE stream = 'actions'").fetchone()
        assert n[0] <= 5 + 10
    kept = [r[0] for r in conn.execute("SELECT first FROM dropped_ranges WHERE stream='actions'")]
    assert kept == sorted(kept)
    assert kept[-1] == 3 * 199 + 1  # the newest are kept
    assert conn.execute(
        "SELECT count(*) FROM dropped_ranges WHERE stream = 'observations'"
    ).fetchone() == (1,)
    conn.close()


async def test_wait_head_wakes_on_the_commit_not_a_poll(open_store: Opener) -> None:
    import asyncio

    store = await open_store(flush_interval=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await store.wait_head("events", 0, 0.1) == 0  # nothing came: the timeout
    assert loop.time() - started >= 0.1
    waiter = asyncio.create_task(store.wait_head("observations", 0, 30.0))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    store.journal_observation(obs(1))
    store.journal_observation(obs(2))
    assert await asyncio.wait_for(waiter, 10.0) == 2
    assert await store.wait_head("observations", 1, 30.0) == 2  # already above: at once


async def test_stream_rows_checks_size_and_checksum_across_chunks(
    open_store: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    """The read that feeds the uplink: a row whose size or checksum does not match is reported
    and never returned; a row from before checksums (NULL) is returned; the byte bound holds
    across the chunks the rows are fetched in."""
    store = await open_store()
    for i in range(1, 601):
        store.journal_observation(obs(i, pad=i % 50))
    await store.flush()
    conn = sqlite3.connect(store.path)
    try:
        with conn:
            conn.execute("UPDATE observations SET size = size + 1 WHERE id = 2")
            conn.execute("UPDATE observations SET crc = NULL WHERE id = 3")  # before version 5
            flip = "UPDATE observations SET crc = (crc | 1) - (crc & 1) WHERE id = ?"  # crc ^ 1
            conn.execute(flip, (4,))
            conn.execute("UPDATE observations SET crc = NULL, size = 1 WHERE id = 5")
            conn.execute(flip, (400,))  # in the second chunk
        sizes = dict(conn.execute("SELECT id, length(data) FROM observations").fetchall())
    finally:
        conn.close()
    with caplog.at_level("ERROR", logger="agentd.store"):
        rows = await store.stream_rows("observations", 0, 1000, 1 << 30)
    ids = [r.id for r in rows]
    assert ids == [1, 3, *range(6, 400), *range(401, 601)]
    assert "4 rows of the observations journal" in caplog.text
    assert "ids 2, 4, 5, 400" in caplog.text
    drops = await store.stream_drops("observations", 1, 600)
    assert [(d.first, d.last, d.reason) for d in drops] == [
        (2, 2, "corrupt"),
        (4, 5, "corrupt"),
        (400, 400, "corrupt"),
    ]
    # the byte bound, cut inside the second chunk: stops before exceeding it
    bound = sum(sizes[i] for i in ids[:300])
    got = await store.stream_rows("observations", 0, 1000, bound)
    assert [r.id for r in got] == ids[:300]
    got = await store.stream_rows("observations", 0, 1000, bound - 1)
    assert [r.id for r in got] == ids[:299]
