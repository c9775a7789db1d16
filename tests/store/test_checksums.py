"""Per-row checksums (issue 13): a byte flipped inside a stored payload passes SQLite's checks
(quick_check reads structure, not content) and used to be returned as if it were the data. Now
a corrupt row is reported, never returned: real byte flips in a real file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from agentd.errors import StoreError
from agentd.model import Observation
from agentd.store import Store
from tests.store.conftest import config


def flip(path: Path, marker: bytes) -> None:
    """Change one byte just after ``marker``, which must occur exactly once in the file."""
    data = bytearray(path.read_bytes())
    at = data.find(marker)
    assert at >= 0, "the payload is not in the file"
    assert data.find(marker, at + 1) < 0, "the payload is in the file twice"
    data[at + len(marker) + 3] ^= 0x01
    path.write_bytes(bytes(data))


def quick_check(path: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()


def write(path: Path) -> None:
    async def run() -> None:
        store = Store(path, config())
        await store.open()
        await store.sessions.put("victim", "VICTIM" + "x" * 300)
        await store.sessions.put("bystander", "b" * 300)
        for i in range(1, 11):
            store.journal_observation(
                Observation(
                    tick=i,
                    monotonic=0.0,
                    wall=time.time(),
                    readings={"s": {"pad": f"ROW{i:03d}" + "z" * 300}},
                )
            )
        await store.close()  # the WAL is checkpointed into the file

    asyncio.run(run())


def test_a_flipped_byte_in_a_session_is_reported_not_returned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agentd.db"
    write(path)
    flip(path, b"VICTIM")
    assert quick_check(path) == [("ok",)]  # SQLite cannot see it

    async def run() -> None:
        store = Store(path, config())
        await store.open()
        try:
            assert store.health().state == "ok"
            with pytest.raises(StoreError) as err:
                await store.sessions.get("victim")
            assert str(err.value) == (
                f"session 'victim' in {path} is corrupt (its checksum does not match); put a "
                "new state or delete it"
            )
            with caplog.at_level(logging.ERROR, logger="agentd.store"):
                listed = await store.sessions.list()
            assert [s.id for s in listed] == ["bystander"]
            assert "1 corrupt sessions" in caplog.text
            assert "'victim'" in caplog.text
            # a new state replaces the corrupt one
            await store.sessions.put("victim", "fine")
            got = await store.sessions.get("victim")
            assert got is not None
            assert got.state == "fine"
        finally:
            await store.close()

    asyncio.run(run())


def test_a_flipped_byte_in_a_journal_row_is_reported_and_logged_as_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agentd.db"
    write(path)
    flip(path, b"ROW005")
    assert quick_check(path) == [("ok",)]

    async def run() -> None:
        store = Store(path, config())
        await store.open()
        try:
            with caplog.at_level(logging.ERROR, logger="agentd.store"):
                ticks = [o.tick for o in await store.query_observations()]
            assert ticks == [1, 2, 3, 4, 6, 7, 8, 9, 10]
            assert "corrupt rows of the observations journal left out" in caplog.text
            rows = await store.stream_rows("observations", 0, 100, 1 << 20)
            assert [r.id for r in rows] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
            drops = await store.stream_drops("observations", 1, 10)
            assert [(d.first, d.last, d.reason) for d in drops] == [(5, 5, "corrupt")]
            assert store.health().rows["observations"] == 9
            # removed: the next read finds nothing corrupt and says nothing
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="agentd.store"):
                again = await store.stream_rows("observations", 0, 100, 1 << 20)
            assert [r.id for r in again] == [r.id for r in rows]
            assert caplog.text == ""
        finally:
            await store.close()

    asyncio.run(run())
