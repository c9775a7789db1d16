"""Crash safety: a child process writes sessions, journal rows and uplink cursors and reports
each commit on a pipe; the parent SIGKILLs it at a random moment, 20 times. After each kill a
fresh store opens on the same file, ``quick_check`` is ok, every write reported as committed is
there, no cursor went back, and the committed journal ids are exactly 1..head (never reused)."""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from agentd.store import Store
from tests.store.conftest import config

KILLS = 20


def run_child(db: Path, run: int, synchronous: str, kill_after: float) -> list[str]:
    """Start the child, SIGKILL it ``kill_after`` seconds after it is ready; return the complete
    lines it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_child", str(db), str(run), synchronous],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline: float | None = None
    start = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if deadline is None and now - start > 60:
                raise AssertionError("the crash child never got ready")
            wait = 0.5 if deadline is None else max(0.0, deadline - now)
            ready, _, _ = select.select([fd], [], [], wait)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # it exited on its own: a failure, reported below
                buf += chunk
                if deadline is None and b"ready\n" in buf:
                    deadline = time.monotonic() + kill_after
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # whatever it wrote before the kill is still in the pipe
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the child exited by itself:\n{err}"
    *complete, _partial = buf.decode().split("\n")  # a line cut by the kill was not reported
    return complete


@pytest.mark.slow
def test_every_reported_commit_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "agentd.db"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    sessions: dict[str, tuple[int, int]] = {}  # id -> (version, n)
    batched: dict[str, int] = {}
    cursors: dict[str, int] = {}
    events: dict[int, int] = {}  # event row id -> n
    ticks: set[int] = set()
    counter = 0
    reported = 0
    for run in range(1, KILLS + 1):
        synchronous = "full" if run % 2 else "normal"
        lines = run_child(db, run, synchronous, kill_after=rng.uniform(0.05, 0.8))
        assert lines[0] == "ready"
        for line in lines[1:]:
            kind, *rest = line.split()
            if kind == "S":
                sessions[rest[0]] = (int(rest[1]), int(rest[2]))
            elif kind == "C":
                counter = int(rest[0])
            elif kind in ("O", "A"):
                ticks.update(range(int(rest[0]), int(rest[1]) + 1))
            elif kind == "B":
                batched[rest[0]] = int(rest[1])
            elif kind == "U":
                assert int(rest[1]) >= cursors.get(rest[0], 0), line
                cursors[rest[0]] = int(rest[1])
            elif kind == "E":
                events[int(rest[1])] = int(rest[0])
            reported += 1
        where = f"seed {seed}, after kill {run}"
        check(db, sessions, batched, ticks, counter, where)
        check_streams(db, cursors, events, where)
    assert reported > KILLS * 5, "the child reported too little to test anything"


def check(
    db: Path,
    sessions: dict[str, tuple[int, int]],
    batched: dict[str, int],
    ticks: set[int],
    counter: int,
    where: str,
) -> None:
    names = {p.name for p in db.parent.iterdir()}
    assert not [n for n in names if ".corrupt-" in n], f"{where}: the database was corrupt"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)], where
    finally:
        conn.close()

    async def verify() -> None:
        store = Store(db, config())
        await store.open()
        try:
            assert store.health().state == "ok", where
            for sid, (version, n) in sessions.items():
                got = await store.sessions.get(sid)
                assert got is not None, f"{where}: committed session {sid} is missing"
                assert (got.version, got.state["n"]) == (version, n), f"{where}: {sid}"
            for sid, n in batched.items():
                got = await store.sessions.get(sid)
                assert got is not None, f"{where}: flushed session {sid} is missing"
                assert got.state["n"] >= n, f"{where}: {sid} went back"
            got = await store.sessions.get("counter")
            if counter:
                assert got is not None, where
                assert got.version >= counter, f"{where}: counter went back"
            have = {o.tick for o in await store.query_observations(limit=10_000_000)}
            assert ticks <= have, f"{where}: {len(ticks - have)} journaled ticks missing"
            acted = {a.tick for a in await store.query_actions(limit=10_000_000)}
            assert ticks <= acted, f"{where}: {len(ticks - acted)} action rows missing"
        finally:
            await store.close()

    asyncio.run(verify())


def check_streams(db: Path, cursors: dict[str, int], events: dict[int, int], where: str) -> None:
    conn = sqlite3.connect(db)
    try:
        for stream in ("observations", "actions"):
            count, top = conn.execute(f"SELECT count(*), max(id) FROM {stream}").fetchone()
            # no retention there: committed ids are exactly 1..max, none skipped
            assert count == (top or 0), f"{where}: {stream} ids are not 1..{top}"
        got = dict(conn.execute("SELECT stream, acked FROM uplink_cursors WHERE uplink = 'fleet'"))
        kept = {
            int(i): int(msgspec.msgpack.decode(d)["data"]["run"]) * 1_000_000
            + int(msgspec.msgpack.decode(d)["data"]["n"])
            for i, d in conn.execute("SELECT id, data FROM events")
        }
        dropped: set[int] = set()
        for first, last in conn.execute(
            "SELECT first, last FROM dropped_ranges WHERE stream = 'events'"
        ):
            dropped.update(range(first, last + 1))
        head = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        stats = conn.execute(
            "SELECT dropped FROM journal_stats WHERE journal = 'events'"
        ).fetchone()
    finally:
        conn.close()
    for stream, acked in cursors.items():
        assert got.get(stream, 0) >= acked, f"{where}: the {stream} cursor went back"
    # every id ever committed is either there or logged as removed, never both, none lost
    assert not set(kept) & dropped, f"{where}: events both kept and logged as dropped"
    assert set(kept) | dropped == set(range(1, (head[0] if head else 0) + 1)), where
    assert stats == (len(dropped),), f"{where}: journal_stats disagrees with the ranges"
    assert len(kept) <= 40, f"{where}: the events journal is over its bound"
    for row_id, n in events.items():
        assert kept.get(row_id, n) == n, f"{where}: event {row_id} is not the one flushed"
        assert row_id in kept or row_id in dropped, f"{where}: flushed event {row_id} missing"
