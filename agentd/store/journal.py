"""The two journals: observations (one row per journaled tick) and actions (one row per
ActionResult: the audit log). Rows are msgpack; a few columns are copied out for queries and
retention. The functions here run on the store's database thread, inside the writer's
transaction, so retention and the inserts it bounds commit together."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from agentd.config import JournalConfig
from agentd.model import ActionResult, Observation

__all__ = [
    "ACTION_ROW",
    "OBSERVATION_ROW",
    "Journal",
    "JournalName",
    "Retention",
    "action_row",
    "observation_row",
]

JournalName = Literal["observations", "actions"]

OBSERVATION_ROW: Final = "INSERT INTO observations (tick, wall, size, data) VALUES (?, ?, ?, ?)"
ACTION_ROW: Final = (
    "INSERT INTO actions (tick, finished_at, actuator, name, status, key, size, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
#: statuses for which the actuator was called: their idempotency keys count as used
RAN: Final = ("ok", "failed", "timeout")

_encoder = msgspec.msgpack.Encoder()
_observation = msgspec.msgpack.Decoder(Observation)
_action = msgspec.msgpack.Decoder(ActionResult)


def observation_row(obs: Observation) -> tuple[Any, ...]:
    data = _encoder.encode(obs)
    return (obs.tick, obs.wall, len(data), data)


def action_row(result: ActionResult) -> tuple[Any, ...]:
    try:
        data = _encoder.encode(result)
    except (TypeError, ValueError, OverflowError):
        # an actuator's free-form output that msgpack cannot hold: keep its repr
        result = msgspec.structs.replace(result, output=repr(result.output))
        data = _encoder.encode(result)
    a = result.action
    finished = result.finished_at or time.time()
    return (result.tick, finished, a.actuator, a.name, result.status, a.key, len(data), data)


@dataclass(slots=True)
class Retention:
    """What one commit's retention pass removed from one journal."""

    rows: int = 0
    size: int = 0


class Journal:
    """Bookkeeping for one journal table: live row and byte counts (kept in memory so the size
    bound costs nothing while under it) and drop counters."""

    __slots__ = ("config", "dropped", "dropped_total", "name", "queue_dropped", "rows", "size")

    def __init__(self, name: JournalName, config: JournalConfig) -> None:
        self.name: JournalName = name
        self.config = config
        self.rows = 0
        self.size = 0
        #: rows removed by retention since open / over the database's life
        self.dropped = 0
        self.dropped_total = 0
        #: rows never written because the queue was full (or the store unavailable)
        self.queue_dropped = 0

    @property
    def time_column(self) -> str:
        return "wall" if self.name == "observations" else "finished_at"

    def load(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(f"SELECT count(*), coalesce(sum(size), 0) FROM {self.name}").fetchone()
        self.rows, self.size = int(row[0]), int(row[1])
        got = conn.execute(
            "SELECT dropped FROM journal_stats WHERE journal = ?", (self.name,)
        ).fetchone()
        self.dropped_total = int(got[0]) if got else 0

    def insert(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        """Insert rows; returns (rows, bytes) added."""
        if not rows:
            return 0, 0
        sql = OBSERVATION_ROW if self.name == "observations" else ACTION_ROW
        conn.executemany(sql, rows)
        return len(rows), sum(r[-2] for r in rows)

    def retain(self, conn: sqlite3.Connection, rows: int, size: int, now: float) -> Retention:
        """Apply the bounds to a journal holding ``rows`` rows of ``size`` bytes (counts that
        include this transaction's inserts). Oldest rows go first."""
        c = self.config
        out = Retention()
        if c.max_age is not None:
            cutoff = now - c.max_age
            got = conn.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM {self.name} "
                f"WHERE {self.time_column} < ?",
                (cutoff,),
            ).fetchone()
            if got[0]:
                conn.execute(f"DELETE FROM {self.name} WHERE {self.time_column} < ?", (cutoff,))
                out.rows += int(got[0])
                out.size += int(got[1])
        excess_rows = rows - out.rows - (c.max_rows if c.max_rows is not None else rows)
        excess_bytes = size - out.size - (c.max_bytes if c.max_bytes is not None else size)
        if excess_rows > 0 or excess_bytes > 0:
            last, n, freed = self._oldest_to_drop(conn, max(0, excess_rows), max(0, excess_bytes))
            if n:
                conn.execute(f"DELETE FROM {self.name} WHERE id <= ?", (last,))
                out.rows += n
                out.size += freed
        if out.rows:
            conn.execute(
                "UPDATE journal_stats SET dropped = dropped + ? WHERE journal = ?",
                (out.rows, self.name),
            )
        return out

    def _oldest_to_drop(
        self, conn: sqlite3.Connection, rows: int, size: int
    ) -> tuple[int, int, int]:
        """The id up to which rows must go to remove at least ``rows`` rows and ``size``
        bytes, with the count and bytes that removes."""
        last, n, freed = 0, 0, 0
        cursor = conn.execute(f"SELECT id, size FROM {self.name} ORDER BY id")
        try:
            for row_id, row_size in cursor:
                if n >= rows and freed >= size:
                    break
                last, n, freed = row_id, n + 1, freed + row_size
        finally:
            cursor.close()
        return last, n, freed


def query(
    conn: sqlite3.Connection,
    journal: JournalName,
    *,
    since: float | None,
    until: float | None,
    tick_from: int | None,
    tick_to: int | None,
    limit: int,
    newest_first: bool,
) -> list[Any]:
    time_column = "wall" if journal == "observations" else "finished_at"
    where: list[str] = []
    args: list[Any] = []
    for column, op, value in (
        (time_column, ">=", since),
        (time_column, "<", until),
        ("tick", ">=", tick_from),
        ("tick", "<=", tick_to),
    ):
        if value is not None:
            where.append(f"{column} {op} ?")
            args.append(value)
    sql = f"SELECT data FROM {journal}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
    args.append(limit)
    decoder = _observation if journal == "observations" else _action
    return [decoder.decode(row[0]) for row in conn.execute(sql, args).fetchall()]


def used_keys(conn: sqlite3.Connection, limit: int) -> list[tuple[str, str]]:
    """The newest ``limit`` (actuator, key) pairs claimed or used by actions that ran, oldest
    first."""
    marks = ", ".join("?" * len(RAN))
    rows = conn.execute(
        f"SELECT actuator, key FROM actions WHERE key IS NOT NULL AND status IN ({marks}) "
        "ORDER BY id DESC LIMIT ?",
        (*RAN, limit),
    ).fetchall()
    claimed = conn.execute(
        "SELECT actuator, key FROM action_keys ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return list(dict.fromkeys((str(a), str(k)) for a, k in [*reversed(rows), *reversed(claimed)]))


def claim(conn: sqlite3.Connection, actuator: str, key: str, now: float, limit: int) -> None:
    """Record a claimed idempotency key; the table keeps the newest ``limit``."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO action_keys (actuator, key, claimed_at) VALUES (?, ?, ?)",
        (actuator, key, now),
    )
    if cursor.rowcount:
        conn.execute("DELETE FROM action_keys WHERE id <= ?", ((cursor.lastrowid or 0) - limit,))
