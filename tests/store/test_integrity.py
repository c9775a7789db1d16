"""The full integrity check (issue 13), on real byte damage in a real file: a flipped byte in
the sessions' primary-key index passes quick_check and makes a session silently "not found";
integrity_check sees it, and the store rebuilds the index in place, on demand and in the
background."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from agentd.store import Store, check_file
from tests.store.conftest import config
from tests.store.test_checksums import flip

INDEX = "sqlite_autoindex_sessions_1"


async def build(path: Path, n: int = 3000) -> None:
    store = Store(path, config())
    await store.open()
    for i in range(n):
        store.sessions.put_nowait(f"s:{i:05d}", {"pad": "y" * 200})
    await store.sessions.put("victim", "VICTIM" + "x" * 300)
    await store.close()


def damage_index(path: Path) -> str:
    """Flip one byte of a session id inside a leaf of the primary-key index (not the table);
    returns the id whose index entry no longer matches."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = [
            int(r[0])
            for r in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (INDEX,)
            )
        ]
    finally:
        conn.close()
    data = bytearray(path.read_bytes())
    start = (pages[len(pages) // 2] - 1) * 4096
    at = data.find(b"s:0", start, start + 4096)
    assert at > 0
    sid = data[at : at + 7].decode()
    data[at + 6] ^= 0x01
    path.write_bytes(bytes(data))
    return sid


def quick_check(path: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()


async def test_index_damage_is_found_and_repaired_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agentd.db"
    await build(path)
    sid = damage_index(path)
    assert quick_check(path) == [("ok",)]  # what runs at open cannot see it
    store = Store(path, config(check_interval=None))
    await store.open()
    try:
        epoch = store.epoch
        assert await store.sessions.get(sid) is None  # silently "not found": the defect
        found = await store.check(repair=False)
        assert not found.ok
        assert len(found.problems) == 1
        assert found.problems[0].endswith(f"missing from index {INDEX}")
        assert found.rows_checked == 3001
        with caplog.at_level(logging.WARNING, logger="agentd.store"):
            fixed = await store.check()
        assert fixed.ok
        assert fixed.repaired == [f"index {INDEX}"]
        assert "found damaged indexes" in caplog.text
        got = await store.sessions.get(sid)
        assert got is not None
        assert got.state == {"pad": "y" * 200}
        assert store.epoch == epoch  # repaired in place: the same database
        assert (await store.check()).repaired == []
    finally:
        await store.close()


async def test_a_wrong_checksum_is_reported_by_the_check(tmp_path: Path) -> None:
    path = tmp_path / "agentd.db"
    await build(path, n=10)
    flip(path, b"VICTIM")
    store = Store(path, config(check_interval=None))
    await store.open()
    try:
        report = await store.check()
        assert not report.ok
        assert report.problems == []  # SQLite's own check sees nothing
        assert list(report.corrupt_rows) == ["sessions"]
        assert len(report.corrupt_rows["sessions"]) == 1
        assert "1 rows with a wrong checksum (sessions 1)" in report.summary()
        assert report.repaired == []
    finally:
        await store.close()


async def test_the_background_check_repairs_an_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agentd.db"
    await build(path, n=2000)
    sid = damage_index(path)
    store = Store(path, config(check_interval=0.2))
    with caplog.at_level(logging.WARNING, logger="agentd.store"):
        await store.open()
        try:
            for _ in range(200):
                if "found damaged indexes" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            assert "found damaged indexes" in caplog.text
            assert await store.sessions.get(sid) is not None
        finally:
            await store.close()


def test_check_file_reads_only(tmp_path: Path) -> None:
    path = tmp_path / "agentd.db"
    asyncio.run(build(path, n=10))
    before = sorted(p.name for p in tmp_path.iterdir())
    data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    report = check_file(path)
    assert report.ok
    assert report.rows_checked == 11
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert path.read_bytes() == data
    assert path.stat().st_mtime_ns == mtime
