"""The journals on a real SQLite file: retention by age, rows and bytes while writing ten times
the bound, exact drop counts, queries, back-pressure, idempotency keys across a restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from agentd.model import Action, ActionResult, Observation
from agentd.store import Store
from agentd.store.writer import COALESCE
from tests.store.conftest import Opener


def obs(tick: int, wall: float | None = None, pad: int = 0) -> Observation:
    return Observation(
        tick=tick,
        monotonic=float(tick),
        wall=time.time() if wall is None else wall,
        readings={"s": {"v": tick, "pad": "x" * pad}},
    )


def result(i: int, *, key: str | None = None, status: str = "ok", at: float | None = None):
    return ActionResult(
        action=Action(actuator="log", name="alert", params={"i": i}, key=key),
        status=status,  # type: ignore[arg-type]
        attempts=1,
        tick=i,
        finished_at=time.time() if at is None else at,
        output={"i": i},
    )


def count(store, table: str) -> int:
    return sqlite3.connect(store.path).execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def test_max_rows_bound_holds_while_writing_ten_times_it(open_store: Opener) -> None:
    bound = 200
    store = await open_store(observations={"max_rows": bound, "max_age": None}, batch_size=64)
    for tick in range(1, 10 * bound + 1):
        store.journal_observation(obs(tick))
        if tick % 150 == 0:
            await store.flush()
            assert count(store, "observations") <= bound
    await store.flush()
    h = store.health()
    assert count(store, "observations") == bound == h.rows["observations"]
    assert h.dropped["observations"] == 9 * bound
    assert h.queue_dropped["observations"] == 0
    kept = await store.query_observations(limit=10_000)
    assert [o.tick for o in kept] == list(range(9 * bound + 1, 10 * bound + 1))  # oldest went


async def test_max_bytes_bound_holds_and_counts_exact(open_store: Opener) -> None:
    bound = 64 * 1024
    store = await open_store(
        observations={"max_rows": None, "max_age": None, "max_bytes": bound}, batch_size=50
    )
    row_size = len(__import__("msgspec").msgpack.encode(obs(1000, pad=500)))
    written = 0
    while written * row_size < 10 * bound:
        written += 1
        store.journal_observation(obs(1000 + written, pad=500))
        if written % 40 == 0:
            await store.flush()
            total = (
                sqlite3.connect(store.path)
                .execute("SELECT coalesce(sum(size), 0) FROM observations")
                .fetchone()[0]
            )
            assert total <= bound
    await store.flush()
    h = store.health()
    rows = count(store, "observations")
    assert h.journal_bytes["observations"] <= bound
    assert h.rows["observations"] == rows
    assert h.dropped["observations"] == written - rows
    assert rows >= bound // row_size - 1  # it keeps as much as fits, not far less


async def test_max_age_drops_exactly_the_old_rows(open_store: Opener) -> None:
    store = await open_store(observations={"max_age": 60.0, "max_rows": None})
    now = time.time()
    # 900 rows between 10 and 1 minute older than the bound, 100 recent ones: 10x the window
    for i in range(900):
        store.journal_observation(obs(i + 1, wall=now - 600 + i * 0.5))
    for i in range(100):
        store.journal_observation(obs(901 + i, wall=now - 30 + i * 0.1))
    await store.flush()
    assert store.health().dropped["observations"] == 900
    kept = await store.query_observations(limit=5000)
    assert [o.tick for o in kept] == list(range(901, 1001))


async def test_action_journal_retention_and_total_survives_restart(open_store: Opener) -> None:
    store = await open_store(actions={"max_rows": 50, "max_age": None}, batch_size=20)
    for i in range(500):
        store.journal_result(result(i))
    await store.flush()
    assert count(store, "actions") == 50
    assert store.health().dropped["actions"] == 450
    await store.close()
    again = await open_store(actions={"max_rows": 50, "max_age": None})
    h = again.health()
    assert h.dropped["actions"] == 0  # since this open
    assert h.dropped_total["actions"] == 450  # over the database's life
    assert h.rows["actions"] == 50


async def test_observation_every_nth_tick(open_store: Opener) -> None:
    store = await open_store(observations={"every": 5})
    for tick in range(1, 101):
        store.journal_observation(obs(tick))
    await store.flush()
    assert [o.tick for o in await store.query_observations(limit=100)] == list(range(5, 101, 5))


async def test_queries_by_time_range_and_tick(open_store: Opener) -> None:
    store = await open_store()
    base = time.time() - 1000
    for tick in range(1, 101):
        store.journal_observation(obs(tick, wall=base + tick))
        store.journal_result(result(tick, at=base + tick))
    await store.flush()
    got = await store.query_observations(since=base + 10, until=base + 20)
    assert [o.tick for o in got] == list(range(10, 20))
    got = await store.query_observations(tick_from=40, tick_to=45)
    assert [o.tick for o in got] == list(range(40, 46))
    got = await store.query_observations(since=base + 50, tick_to=55, limit=3)
    assert [o.tick for o in got] == [50, 51, 52]
    newest = await store.query_observations(limit=2, newest_first=True)
    assert [o.tick for o in newest] == [100, 99]
    assert newest[0] == obs(100, wall=base + 100)  # the whole Observation round-trips
    acts = await store.query_actions(since=base + 90)
    assert [a.tick for a in acts] == list(range(90, 101))
    assert acts[0] == result(90, at=base + 90)
    assert await store.query_actions(until=base) == []


async def test_unencodable_action_output_is_kept_as_repr(open_store: Opener) -> None:
    store = await open_store()
    odd = ActionResult(
        action=Action(actuator="x", name="y"), status="ok", output=object(), finished_at=time.time()
    )
    store.journal_result(odd)
    await store.flush()
    (got,) = await store.query_actions()
    assert isinstance(got.output, str)
    assert got.output.startswith("<object object at")


async def test_full_queue_applies_back_pressure_never_grows(open_store: Opener) -> None:
    # a long flush interval and a batch larger than the queue: nothing commits until flush()
    store = await open_store(queue_size=100, batch_size=1000, flush_interval=60.0)
    for tick in range(1, 251):
        store.journal_observation(obs(tick))
        assert store.health().queue_depth <= 100
    h = store.health()
    assert h.queue_depth == 100
    assert h.queue_dropped["observations"] == 150
    assert h.back_pressure == 150
    # a batched session write meets the same bound and says so
    assert store.sessions.put_nowait("s", 1) is False
    assert store.health().back_pressure == 151
    # an awaited write waits for room instead (the queued rows commit at once to make it)
    session = await store.sessions.put("awaited", 1)
    assert session.version == 1
    assert store.health().back_pressure == 152
    assert count(store, "observations") == 100
    assert store.sessions.put_nowait("s", 1) is True


async def test_idempotency_keys_survive_a_restart(open_store: Opener) -> None:
    store = await open_store()
    store.journal_result(result(1, key="k-ran"))
    store.journal_result(result(2, key="k-failed", status="failed"))
    store.journal_result(result(3, key="k-rejected", status="rejected"))
    assert store.key_seen("log", "k-ran")  # at once, before any commit
    await store.close()
    again = await open_store()
    assert again.key_seen("log", "k-ran")
    assert again.key_seen("log", "k-failed")  # the actuator was called: never again
    assert not again.key_seen("log", "k-rejected")  # never reached the actuator
    assert not again.key_seen("other", "k-ran")


async def test_claimed_key_is_committed_before_claim_returns(open_store: Opener) -> None:
    store = await open_store(flush_interval=60.0)
    await store.claim_key("exec", "reboot-42")
    # committed, not just queued: another connection sees it now
    conn = sqlite3.connect(store.path)
    rows = conn.execute("SELECT actuator, key FROM action_keys").fetchall()
    conn.close()
    assert rows == [("exec", "reboot-42")]
    assert store.key_seen("exec", "reboot-42")
    await store.close()
    # the action's result never reached the journal (a crash mid-action): the claim holds
    again = await open_store()
    assert again.health().rows["actions"] == 0
    assert again.key_seen("exec", "reboot-42")
    assert not again.key_seen("exec", "reboot-43")


async def test_close_commits_everything_queued(open_store: Opener) -> None:
    store = await open_store(flush_interval=60.0, batch_size=10_000)
    for tick in range(1, 1001):
        store.journal_observation(obs(tick))
    store.sessions.put_nowait("last", "words")
    assert count(store, "observations") == 0
    await store.close()
    assert count(store, "observations") == 1000
    row = sqlite3.connect(store.path).execute("SELECT version FROM sessions").fetchone()
    assert row == (1,)
    assert store.health().state == "closed"


async def _commits(store: Store, n: int, within: float = 10.0) -> None:
    t0 = time.monotonic()
    while store.health().commits < n:
        assert time.monotonic() - t0 < within, f"no commit #{n} within {within}s"
        await asyncio.sleep(0.01)


async def test_group_commit_batches_rows(open_store: Opener) -> None:
    store = await open_store(flush_interval=0.2, batch_size=500)
    durations: list[float] = []
    store.on_commit = durations.append
    for tick in range(1, 301):
        store.journal_observation(obs(tick))
    await _commits(store, 1)
    # one commit for the 300 rows that arrived within the interval, without a flush()
    assert store.health().commits == 1
    assert count(store, "observations") == 300
    assert len(durations) == 1
    assert 0 < durations[0] < 10


async def test_a_write_in_the_windows_last_tenth_commits_the_batch_with_it(
    open_store: Opener,
) -> None:
    """The tick's row that arrives as the window ends takes the batch with it, in that wake,
    instead of the writer's own timer waking the process again (issue #18). The window is 30 s
    and the first row is made 27.5 s old: only the second write can start this commit."""
    store = await open_store(flush_interval=30.0)
    store.journal_observation(obs(1))
    await asyncio.sleep(0.05)  # the writer has armed its timer for 30 s (33 s)
    store._first_at -= 27.5  # the batch's age, without waiting 27 s
    store.journal_observation(obs(2))
    await _commits(store, 1)
    assert store.health().commits == 1
    assert count(store, "observations") == 2


async def test_a_write_earlier_in_the_window_waits_for_it(open_store: Opener) -> None:
    store = await open_store(flush_interval=30.0)
    store.journal_observation(obs(1))
    await asyncio.sleep(0.05)
    store._first_at -= 20.0  # two thirds of the window: not yet
    store.journal_observation(obs(2))
    assert store.sessions.put_nowait("s", 1) is True
    await asyncio.sleep(0.3)
    assert store.health().commits == 0
    assert count(store, "observations") == 0


async def test_a_lone_row_commits_by_the_timer_never_before_the_window(
    open_store: Opener,
) -> None:
    store = await open_store(flush_interval=0.2)
    t0 = time.monotonic()
    store.journal_observation(obs(1))
    await _commits(store, 1)
    waited = time.monotonic() - t0
    # the timer is the fallback at 1.1 windows; uvloop may fire a timer up to 1 ms early
    assert waited >= 0.2 * (1 + COALESCE) - 0.002, waited
    assert count(store, "observations") == 1
