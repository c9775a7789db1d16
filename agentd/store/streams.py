"""The journals as streams for the uplink (issue 14): rows after a cursor, exactly as stored,
the dropped ranges that explain missing ids, backlogs, and the durable per-uplink cursors and
retention holds. The functions run on the store's database thread; `Store` wraps them."""

from __future__ import annotations

import operator
import sqlite3
import zlib
from typing import Final

import msgspec

from agentd.store.journal import STREAMS, TIME_COLUMN, Stream

__all__ = [
    "CURSOR_UPSERT",
    "HOLD_UPSERT",
    "Backlog",
    "DroppedRange",
    "StreamRow",
    "backlog",
    "drops",
    "load_cursors",
    "load_holds",
    "rows",
]

CURSOR_UPSERT: Final = (
    "INSERT INTO uplink_cursors (uplink, stream, acked, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (uplink, stream) DO UPDATE SET acked = max(acked, excluded.acked), "
    "updated_at = excluded.updated_at"
)
HOLD_UPSERT: Final = (
    "INSERT INTO uplink_cursors (uplink, stream, hold, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (uplink, stream) DO UPDATE SET hold = excluded.hold, "
    "updated_at = excluded.updated_at"
)


#: rows fetched from SQLite at a time (the byte bound is checked per chunk, then per row)
CHUNK: Final = 256
_DATA: Final = operator.attrgetter("data")


class StreamRow(msgspec.Struct, frozen=True):
    """One committed journal row: ``data`` is the stored msgpack blob, as is."""

    id: int
    wall: float
    synced: bool
    boot_id: str
    data: bytes


class DroppedRange(msgspec.Struct, frozen=True):
    """Ids ``first..last`` (inclusive) removed from a stream, and why: ``retention.age``,
    ``retention.rows``, ``retention.size``, ``retention.hold_cap``, ``retention.before_upgrade``
    (removed before the database logged ranges) or ``corrupt``."""

    first: int
    last: int
    reason: str


class Backlog(msgspec.Struct, frozen=True):
    """Committed rows after a cursor: how many, their stored bytes, the oldest one's wall time
    (None when there are none)."""

    rows: int
    bytes: int
    oldest_wall: float | None


def rows(
    conn: sqlite3.Connection, stream: Stream, after: int, limit: int, max_bytes: int
) -> tuple[list[StreamRow], list[int]]:
    """Up to ``limit`` rows with ids above ``after``, in id order, stopping before ``max_bytes``
    of data is exceeded (the first row always comes, whatever its size: a stream never
    stalls on one large row); and the ids of rows in that span whose checksum does not match
    (left out: a corrupt row is reported, never sent)."""
    out: list[StreamRow] = []
    corrupt: list[int] = []
    if limit < 1:
        return out, corrupt
    # the uplink's hot path (a drain reads every row once, ~1 µs of Python per row is the
    # budget): SQLite hands back the schema's column types (no int()/float()/str() per row),
    # the size check is folded into the checksum column (-1 never matches a CRC-32), and rows
    # are built a chunk at a time in a comprehension rather than a statement loop
    cursor = conn.execute(
        f"SELECT id, {TIME_COLUMN[stream]}, synced, boot_id, data, "
        "CASE WHEN length(data) = size THEN crc ELSE -1 END "
        f"FROM {stream} WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit),
    )
    crc32, row = zlib.crc32, StreamRow
    total = 0
    try:
        while got := cursor.fetchmany(CHUNK):
            # NULL: a row from before version 5 carries no checksum (its size was checked)
            good = [
                row(i, w, s == 1, b, d) for i, w, s, b, d, c in got if c == crc32(d) or c is None
            ]
            if len(good) < len(got):
                corrupt += [i for i, _, _, _, d, c in got if c != crc32(d) and c is not None]
            size = sum(map(len, map(_DATA, good)))
            if total + size <= max_bytes:
                out += good
                total += size
                continue
            for r in good:  # this chunk passes max_bytes: up to the row that would exceed it
                total += len(r.data)
                if total > max_bytes and out:
                    break
                out.append(r)
            break
    finally:
        cursor.close()
    return out, corrupt


def drops(conn: sqlite3.Connection, stream: Stream, first: int, last: int) -> list[DroppedRange]:
    """The logged ranges of ``stream`` overlapping ``first..last``, in id order."""
    got = conn.execute(
        "SELECT first, last, reason FROM dropped_ranges "
        "WHERE stream = ? AND last >= ? AND first <= ? ORDER BY first",
        (stream, first, last),
    ).fetchall()
    return [DroppedRange(int(a), int(b), str(r)) for a, b, r in got]


def backlog(conn: sqlite3.Connection, stream: Stream, after: int) -> Backlog:
    n, size = conn.execute(
        f"SELECT count(*), coalesce(sum(size), 0) FROM {stream} WHERE id > ?", (after,)
    ).fetchone()
    oldest = conn.execute(
        f"SELECT {TIME_COLUMN[stream]} FROM {stream} WHERE id > ? ORDER BY id LIMIT 1", (after,)
    ).fetchone()
    return Backlog(int(n), int(size), None if oldest is None else float(oldest[0]))


def load_cursors(conn: sqlite3.Connection, uplink: str) -> dict[Stream, int]:
    """The acknowledged id per stream of ``uplink`` (0 for a stream it never acknowledged)."""
    out: dict[Stream, int] = dict.fromkeys(STREAMS, 0)
    for stream, acked in conn.execute(
        "SELECT stream, acked FROM uplink_cursors WHERE uplink = ?", (uplink,)
    ):
        if stream in out:
            out[stream] = int(acked)
    return out


def load_holds(conn: sqlite3.Connection) -> dict[tuple[str, Stream], int]:
    out: dict[tuple[str, Stream], int] = {}
    for uplink, stream, hold in conn.execute(
        "SELECT uplink, stream, hold FROM uplink_cursors WHERE hold IS NOT NULL"
    ):
        for s in STREAMS:
            if s == stream:
                out[(str(uplink), s)] = int(hold)
    return out
