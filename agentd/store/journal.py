"""The three journals: observations (one row per journaled tick), actions (one row per
ActionResult: the audit log) and events (agentd's own state changes). Rows are msgpack; a few
columns are copied out for queries and retention, and every row is stamped with the boot id,
the boot-relative time and whether the clock was synchronized (`agentd.store.clock`). Ids are
never reused (AUTOINCREMENT), so ``(epoch, stream, id)`` names one row forever. The functions
here run on the store's database thread, inside the writer's transaction."""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from agentd.config import JournalConfig
from agentd.model import ActionResult, Observation

__all__ = [
    "ACTION_ROW",
    "EVENT_ROW",
    "OBSERVATION_ROW",
    "STREAMS",
    "Event",
    "Journal",
    "JournalName",
    "Stream",
    "action_row",
    "event_row",
    "observation_row",
]

Stream = Literal["observations", "actions", "events"]
JournalName = Stream
STREAMS: Final[tuple[Stream, ...]] = ("observations", "actions", "events")

_STAMPS: Final = "boot_id, uptime, synced"
OBSERVATION_ROW: Final = (
    f"INSERT INTO observations ({_STAMPS}, tick, wall, size, data, crc) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
ACTION_ROW: Final = (
    f"INSERT INTO actions ({_STAMPS}, tick, finished_at, actuator, name, status, key, size, "
    "data, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
EVENT_ROW: Final = (
    f"INSERT INTO events ({_STAMPS}, kind, wall, size, data, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT: Final[dict[Stream, str]] = {
    "observations": OBSERVATION_ROW,
    "actions": ACTION_ROW,
    "events": EVENT_ROW,
}
#: the wall-clock column of each journal
TIME_COLUMN: Final[dict[Stream, str]] = {
    "observations": "wall",
    "actions": "finished_at",
    "events": "wall",
}
#: statuses for which the actuator was called: their idempotency keys count as used
RAN: Final = ("ok", "failed", "timeout")
#: a queued row is (boot_id, uptime, synced, *the journal's columns, size, data); a row as
#: built here has its wall time (wall, finished_at) second
SIZE: Final = -2
WALL: Final = 1


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the events journal: a state change of agentd itself (started, stopped,
    reloaded, a plugin failing or recovered, the store degraded, an uplink gap...)."""

    kind: str
    wall: float
    data: dict[str, object] = {}


log = logging.getLogger("agentd.store")

_encoder = msgspec.msgpack.Encoder()
#: an event's free-form values that msgpack cannot hold are kept as their repr
_event_encoder = msgspec.msgpack.Encoder(enc_hook=repr)
_observation = msgspec.msgpack.Decoder(Observation)
_action = msgspec.msgpack.Decoder(ActionResult)
_event = msgspec.msgpack.Decoder(Event)
_DECODERS: Final[dict[Stream, msgspec.msgpack.Decoder[Any]]] = {
    "observations": _observation,
    "actions": _action,
    "events": _event,
}


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


def event_row(kind: str, wall: float, data: Mapping[str, object]) -> tuple[Any, ...]:
    blob = _event_encoder.encode(Event(kind=kind, wall=wall, data=dict(data)))
    return (kind, wall, len(blob), blob)


class Journal:
    """Bookkeeping for one journal table: live row and byte counts (kept in memory so the size
    bound costs nothing while under it), the highest id committed, and drop counters."""

    __slots__ = (
        "config",
        "dropped",
        "dropped_total",
        "head",
        "name",
        "queue_dropped",
        "rows",
        "size",
    )

    def __init__(self, name: Stream, config: JournalConfig) -> None:
        self.name: Stream = name
        self.config = config
        self.rows = 0
        self.size = 0
        #: the highest id ever committed (retention does not lower it)
        self.head = 0
        #: rows removed by retention since open / over the database's life
        self.dropped = 0
        self.dropped_total = 0
        #: rows never written because the queue was full (or the store unavailable)
        self.queue_dropped = 0

    @property
    def time_column(self) -> str:
        return TIME_COLUMN[self.name]

    def load(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(f"SELECT count(*), coalesce(sum(size), 0) FROM {self.name}").fetchone()
        self.rows, self.size = int(row[0]), int(row[1])
        got = conn.execute(
            "SELECT dropped FROM journal_stats WHERE journal = ?", (self.name,)
        ).fetchone()
        self.dropped_total = int(got[0]) if got else 0
        self.head = head(conn, self.name)

    def insert(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        """Insert rows; returns (rows, bytes) added."""
        if not rows:
            return 0, 0
        # the checksum is taken here, on the database thread, not on the event loop
        conn.executemany(_INSERT[self.name], [(*r, zlib.crc32(r[-1])) for r in rows])
        return len(rows), sum(r[SIZE] for r in rows)


def head(conn: sqlite3.Connection, name: Stream) -> int:
    """The highest id ever handed out in ``name`` (AUTOINCREMENT's counter), 0 if none."""
    got = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (name,)).fetchone()
    return int(got[0]) if got else 0


def query(
    conn: sqlite3.Connection,
    journal: Stream,
    *,
    since: float | None,
    until: float | None,
    tick_from: int | None,
    tick_to: int | None,
    limit: int,
    newest_first: bool,
) -> list[Any]:
    time_column = TIME_COLUMN[journal]
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
    sql = f"SELECT id, size, data, crc FROM {journal}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
    args.append(limit)
    decoder: msgspec.msgpack.Decoder[Any] = _DECODERS[journal]
    rows = conn.execute(sql, args).fetchall()
    bad = [r[0] for r in rows if not intact(r[1], r[2], r[3])]
    if bad:
        log.error(
            "store: %d corrupt rows of the %s journal left out (their checksums do not match): "
            "ids %s",
            len(bad),
            journal,
            ", ".join(map(str, bad[:10])),
        )
    return [decoder.decode(r[2]) for r in rows if intact(r[1], r[2], r[3])]


def intact(size: int, data: bytes, crc: int | None) -> bool:
    """Whether a stored row is what was written (rows from before version 5 carry no
    checksum; their size is still checked)."""
    return len(data) == size and (crc is None or zlib.crc32(data) == crc)


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
