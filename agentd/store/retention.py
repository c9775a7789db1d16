"""Retention: the journals' bounds, applied in the writer's transaction with the inserts they
bound, and the log of every id range it removed (``dropped_ranges``) so a consumer of a stream
can tell "not sent yet" from "never will be", and why.

Retention only ever removes a *prefix* of a journal (every row up to some id): ids are handed
out in write order, so a row is never younger than one with a lower id, and one range per
deletion explains every missing id. By age, a row is known to be older than ``max_age`` when

- it was written in this boot and the boot-relative clock (``CLOCK_BOOTTIME``, never stepped)
  has advanced ``max_age`` since, or
- it was written with the clock synchronized, the clock is synchronized now, and its wall time
  is ``max_age`` behind.

Everything below such a row is older still, so it goes too, even rows whose own wall time says
nothing (written in 1970 before the first NTP sync of a boot that has ended). A wall-clock step
alone never makes a row old: a journal written "in 1970" is not deleted when the clock jumps to
today. Retention by rows and bytes does not depend on any clock.

A *hold* (an uplink with end-to-end acknowledgement) keeps rows with ids above ``keep_after``
from every bound but a hard cap: twice each configured row or byte bound (`HOLD_MAX_ROWS` rows
when neither is set). Past it the oldest held rows go too, logged as ``retention.hold_cap``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

from agentd.store.journal import Journal, Stream

__all__ = [
    "DROP_LOG_MAX",
    "HOLD_MAX_ROWS",
    "TRIM_EVERY",
    "Now",
    "Retention",
    "log_range",
    "retain",
]

#: the hard cap of a held journal with neither max_rows nor max_bytes set
HOLD_MAX_ROWS: Final = 1_000_000
#: dropped ranges remembered per stream (adjacent ones with the same reason merge, so this is
#: reached only by many alternating reasons); the oldest are forgotten first
DROP_LOG_MAX: Final = 10_000
#: new ranges between two trims of the log to DROP_LOG_MAX
TRIM_EVERY: Final = 1000


@dataclass(slots=True, frozen=True)
class Now:
    """The clocks, read once per commit on the event loop."""

    wall: float
    boottime: float
    synced: bool
    boot_id: str


@dataclass(slots=True)
class Retention:
    """What one commit's retention pass removed from one journal."""

    rows: int = 0
    size: int = 0


def retain(
    conn: sqlite3.Connection,
    j: Journal,
    rows: int,
    size: int,
    now: Now,
    keep_after: int | None = None,
) -> Retention:
    """Apply ``j``'s bounds to a journal holding ``rows`` rows of ``size`` bytes (counts that
    include this transaction's inserts); rows above ``keep_after`` are held."""
    c = j.config
    out = Retention()
    if c.max_age is not None:
        upto = _aged_out(conn, j, now, c.max_age)
        if keep_after is not None:
            upto = min(upto, keep_after)
        if upto > 0:
            _drop_through(conn, j, upto, "retention.age", now, out)
    excess_rows = rows - out.rows - (c.max_rows if c.max_rows is not None else rows)
    excess_bytes = size - out.size - (c.max_bytes if c.max_bytes is not None else size)
    if excess_rows > 0 or excess_bytes > 0:
        upto = _oldest_to_drop(conn, j.name, excess_rows, excess_bytes, keep_after)
        if upto > 0:
            reason = "retention.rows" if excess_rows > 0 else "retention.size"
            _drop_through(conn, j, upto, reason, now, out)
    if keep_after is not None:
        cap_rows, cap_bytes = _hard_cap(j)
        over_rows = rows - out.rows - cap_rows if cap_rows is not None else 0
        over_bytes = size - out.size - cap_bytes if cap_bytes is not None else 0
        if over_rows > 0 or over_bytes > 0:
            upto = _oldest_to_drop(conn, j.name, over_rows, over_bytes, None)
            if upto > 0:
                _drop_through(conn, j, upto, "retention.hold_cap", now, out)
    if out.rows:
        conn.execute(
            "UPDATE journal_stats SET dropped = dropped + ? WHERE journal = ?",
            (out.rows, j.name),
        )
    return out


def _hard_cap(j: Journal) -> tuple[int | None, int | None]:
    c = j.config
    if c.max_rows is None and c.max_bytes is None:
        return HOLD_MAX_ROWS, None
    return (
        2 * c.max_rows if c.max_rows is not None else None,
        2 * c.max_bytes if c.max_bytes is not None else None,
    )


def _aged_out(conn: sqlite3.Connection, j: Journal, now: Now, max_age: float) -> int:
    """An id whose row is known to be older than ``max_age`` (0: none known). Each lookup is
    one step down an index (uptime is monotonic within a boot; any aged row bounds the prefix)."""
    got = conn.execute(
        f"SELECT id FROM {j.name} WHERE boot_id = ? AND uptime < ? "
        "ORDER BY uptime DESC, id DESC LIMIT 1",
        (now.boot_id, now.boottime - max_age),
    ).fetchone()
    upto = int(got[0]) if got else 0
    if now.synced:
        w = j.time_column
        got = conn.execute(
            f"SELECT id FROM {j.name} WHERE synced = 1 AND {w} < ? "
            f"ORDER BY {w} DESC, id DESC LIMIT 1",
            (now.wall - max_age,),
        ).fetchone()
        if got:
            upto = max(upto, int(got[0]))
    return upto


def _oldest_to_drop(
    conn: sqlite3.Connection, name: Stream, rows: int, size: int, keep_after: int | None
) -> int:
    """The id up to which rows must go to remove at least ``rows`` rows and ``size`` bytes
    (never past ``keep_after``); 0 if none can."""
    last, n, freed = 0, 0, 0
    cursor = conn.execute(
        f"SELECT id, size FROM {name} WHERE id <= ? ORDER BY id",
        (keep_after if keep_after is not None else (1 << 63) - 1,),
    )
    try:
        for row_id, row_size in cursor:
            if n >= rows and freed >= size:
                break
            last, n, freed = row_id, n + 1, freed + row_size
    finally:
        cursor.close()
    return int(last)


def _drop_through(
    conn: sqlite3.Connection, j: Journal, upto: int, reason: str, now: Now, out: Retention
) -> None:
    n, freed, first, last = conn.execute(
        f"SELECT count(*), coalesce(sum(size), 0), min(id), max(id) FROM {j.name} WHERE id <= ?",
        (upto,),
    ).fetchone()
    if not n:
        return
    conn.execute(f"DELETE FROM {j.name} WHERE id <= ?", (upto,))
    log_range(conn, j.name, int(first), int(last), reason, now.wall)
    out.rows += int(n)
    out.size += int(freed)


def log_range(
    conn: sqlite3.Connection, stream: str, first: int, last: int, reason: str, at: float
) -> None:
    """Record that ids ``first..last`` of ``stream`` are gone; a range that continues the
    previous one for the same reason extends it (steady retention at a bound is one row)."""
    prev = conn.execute(
        "SELECT id, last, reason FROM dropped_ranges WHERE stream = ? ORDER BY last DESC LIMIT 1",
        (stream,),
    ).fetchone()
    if prev is not None and prev[2] == reason and int(prev[1]) + 1 == first:
        conn.execute("UPDATE dropped_ranges SET last = ?, at = ? WHERE id = ?", (last, at, prev[0]))
        return
    cursor = conn.execute(
        "INSERT INTO dropped_ranges (stream, first, last, reason, at) VALUES (?, ?, ?, ?, ?)",
        (stream, first, last, reason, at),
    )
    if (cursor.lastrowid or 0) % TRIM_EVERY == 0:  # the bound is checked now and then
        conn.execute(
            "DELETE FROM dropped_ranges WHERE stream = ? AND last <= ("
            "SELECT last FROM dropped_ranges WHERE stream = ? ORDER BY last DESC "
            "LIMIT 1 OFFSET ?)",
            (stream, stream, DROP_LOG_MAX),
        )
