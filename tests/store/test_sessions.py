"""Sessions on a real SQLite file: compare-and-set, TTL, paging, large state."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from agentd.errors import StoreError, VersionConflict
from tests.store.conftest import Opener


class Memory(msgspec.Struct):
    count: int
    labels: list[str]


async def test_put_get_versions_and_created_at(open_store: Opener) -> None:
    store = await open_store()
    first = await store.sessions.put("agent:1", {"n": 1})
    assert (first.version, first.state) == (1, {"n": 1})
    await asyncio.sleep(0.01)
    second = await store.sessions.put("agent:1", {"n": 2})
    assert second.version == 2
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    got = await store.sessions.get("agent:1")
    assert got is not None
    assert (got.state, got.version, got.created_at) == ({"n": 2}, 2, first.created_at)
    assert await store.sessions.get("agent:2") is None


async def test_compare_and_set_conflict_carries_current_version(open_store: Opener) -> None:
    store = await open_store()
    assert (await store.sessions.put("s", "a", expected_version=0)).version == 1
    with pytest.raises(VersionConflict) as err:
        await store.sessions.put("s", "b", expected_version=0)  # 0: must not exist
    assert (err.value.expected, err.value.current) == (0, 1)
    assert (await store.sessions.put("s", "b", expected_version=1)).version == 2
    with pytest.raises(VersionConflict) as err:
        await store.sessions.put("s", "stale", expected_version=1)
    assert (err.value.expected, err.value.current) == (1, 2)
    assert isinstance(err.value, StoreError)
    with pytest.raises(VersionConflict) as err:
        await store.sessions.put("missing", "x", expected_version=3)
    assert err.value.current is None
    got = await store.sessions.get("s")
    assert got is not None
    assert (got.state, got.version) == ("b", 2)
    assert await store.sessions.get("missing") is None


async def test_concurrent_compare_and_set_exactly_one_wins(open_store: Opener) -> None:
    store = await open_store()
    await store.sessions.put("counter", 0)

    async def bump(who: int) -> int:
        try:
            return (await store.sessions.put("counter", who, expected_version=1)).version
        except VersionConflict as exc:
            return -(exc.current or 0)  # the conflict names the version that won

    results = await asyncio.gather(*(bump(i) for i in range(10)))
    assert sorted(results) == [-2] * 9 + [2]


async def test_ttl_expiry_and_sweep(open_store: Opener) -> None:
    store = await open_store()
    await store.sessions.put("short:1", 1, ttl=1.0)
    await store.sessions.put("short:2", 2, ttl=1.0)
    await store.sessions.put("long", 3, ttl=3600)
    await store.sessions.put("forever", 4)
    assert (await store.sessions.get("short:1")) is not None
    await asyncio.sleep(1.2)
    # expired sessions read as absent before the sweep removes them
    assert await store.sessions.get("short:1") is None
    assert [s.id for s in await store.sessions.list()] == ["forever", "long"]
    # a write over an expired session starts again at version 1, CAS sees it as absent
    again = await store.sessions.put("short:2", "new", expected_version=0)
    assert again.version == 1
    assert await store.sessions.sweep() == 1  # short:1; short:2 was rewritten without a ttl
    assert await store.sessions.sweep() == 0
    rows = sqlite3.connect(store.path).execute("SELECT id FROM sessions ORDER BY id").fetchall()
    assert rows == [("forever",), ("long",), ("short:2",)]
    long = await store.sessions.get("long")
    assert long is not None
    assert long.expires_at is not None
    assert long.expires_at > time.time() + 3000


async def test_list_prefix_and_paging(open_store: Opener) -> None:
    store = await open_store()
    for i in range(250):
        store.sessions.put_nowait(f"dev:{i:04d}", {"i": i})
    for i in range(30):
        store.sessions.put_nowait(f"other:{i}", i)
    store.sessions.put_nowait("dev", "no colon: not in the dev: prefix")
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await store.sessions.list(prefix="dev:", limit=100, after=after)
        if not page:
            break
        pages += 1
        assert len(page) <= 100
        seen.extend(s.id for s in page)
        after = page[-1].id
    assert pages == 3
    assert seen == [f"dev:{i:04d}" for i in range(250)]
    assert len(await store.sessions.list(prefix="other:", limit=1000)) == 30
    assert len(await store.sessions.list(limit=1000)) == 281
    assert await store.sessions.list(prefix="dev:", after="dev:0249") == []
    # LIKE metacharacters in a prefix are literal
    await store.sessions.put("a%b", 1)
    await store.sessions.put("a_b", 2)
    await store.sessions.put("axb", 3)
    assert [s.id for s in await store.sessions.list(prefix="a_")] == ["a_b"]


async def test_large_state_round_trips_byte_exact(open_store: Opener, tmp_path: Path) -> None:
    store = await open_store()
    blob = os.urandom(1024 * 1024)
    state = {"blob": blob, "text": "é" * 1000, "nested": [1, 2.5, None, True]}
    await store.sessions.put("big", state)
    got = await store.sessions.get("big")
    assert got is not None
    assert got.state["blob"] == blob
    assert msgspec.msgpack.encode(got.state) == msgspec.msgpack.encode(state)
    # and from a fresh connection after a close: what is on disk is the same bytes
    await store.close()
    reopened = await open_store()
    again = await reopened.sessions.get("big")
    assert again is not None
    assert again.state["blob"] == blob
    raw = (
        sqlite3.connect(tmp_path / "agentd.db")
        .execute("SELECT state FROM sessions WHERE id = 'big'")
        .fetchone()[0]
    )
    assert raw == msgspec.msgpack.encode(state)


async def test_struct_state_decodes_as_its_type(open_store: Opener) -> None:
    store = await open_store()
    put = await store.sessions.put("m", Memory(count=3, labels=["a"]))
    assert put.state == Memory(count=3, labels=["a"])
    got = await store.sessions.get("m", Memory)
    assert got is not None
    assert got.state == Memory(count=3, labels=["a"])
    plain = await store.sessions.get("m")
    assert plain is not None
    assert plain.state == {"count": 3, "labels": ["a"]}


async def test_unencodable_state_is_a_clear_error(open_store: Opener) -> None:
    store = await open_store()
    with pytest.raises(StoreError, match="session state cannot be stored"):
        await store.sessions.put("bad", object())


async def test_batched_put_is_visible_to_get_and_ordered_with_awaited_writes(
    open_store: Opener,
) -> None:
    store = await open_store(flush_interval=30.0)
    store.sessions.put_nowait("p", "queued")
    got = await store.sessions.get("p")  # flushes the pending write first
    assert got is not None
    assert (got.state, got.version) == ("queued", 1)
    await store.sessions.put("p", "awaited")
    store.sessions.put_nowait("p", "last")
    await store.flush()
    got = await store.sessions.get("p")
    assert got is not None
    assert (got.state, got.version) == ("last", 3)


async def test_delete(open_store: Opener) -> None:
    store = await open_store()
    await store.sessions.put("d", 1)
    assert await store.sessions.delete("d") is True
    assert await store.sessions.delete("d") is False
    assert await store.sessions.get("d") is None
    assert (await store.sessions.put("d", 2)).version == 1
