"""One group-commit batch: the queued write records and the transaction that applies them, run
on the database thread. Session writes keep their queue order; journal rows are inserted per
journal and bounded by retention in the same transaction; uplink cursors and holds ride along."""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from agentd.store import journal as jr
from agentd.store import sessions as ss
from agentd.store.retention import Now, Retention, log_range, retain
from agentd.store.streams import CURSOR_UPSERT, HOLD_UPSERT

__all__ = [
    "ARGS",
    "FUTURE",
    "KIND",
    "SEQ",
    "SESSION_WRITES",
    "Committed",
    "Mark",
    "Op",
    "OpKind",
    "apply_batch",
]

OpKind = Literal[
    "observations",
    "actions",
    "events",
    "put",
    "put_nowait",
    "delete",
    "sweep",
    "claim",
    "mark",
    "corrupt",
]
SESSION_WRITES: Final = frozenset({"put", "put_nowait", "delete"})
#: a coalesced uplink write: ("cursor" | "hold", uplink, stream); its value is read at commit
Mark = tuple[Literal["cursor", "hold"], str, jr.Stream]

#: a queued write: (kind, args, seq, future or None); a plain tuple, there is one per row
Op = tuple[OpKind, tuple[Any, ...], int, "asyncio.Future[Any] | None"]
KIND: Final = 0
ARGS: Final = 1
SEQ: Final = 2
FUTURE: Final = 3


@dataclass(slots=True)
class Committed:
    #: (index in the batch, result) of the writes someone awaits
    results: list[tuple[int, Any]] = field(default_factory=list)
    added: dict[jr.Stream, tuple[int, int]] = field(default_factory=dict)
    retained: dict[jr.Stream, Retention] = field(default_factory=dict)
    #: each journal's highest id after the commit
    heads: dict[jr.Stream, int] = field(default_factory=dict)
    #: rows removed because their checksum did not match
    corrupt: dict[jr.Stream, Retention] = field(default_factory=dict)


def apply_batch(
    conn: sqlite3.Connection,
    batch: list[Op],
    journals: Mapping[jr.Stream, jr.Journal],
    counts: Mapping[jr.Stream, tuple[int, int]],
    now: Now,
    session_now: float,
    marks: Mapping[Mark, int | None],
    holds: Mapping[jr.Stream, int],
    key_memory: int,
) -> Committed:
    """On the database thread: one transaction for the whole batch. ``counts`` are each
    journal's (rows, bytes) before it; ``marks`` the values of the batch's cursor and hold
    writes; ``holds`` each held journal's keep_after."""
    out = Committed()
    rows: dict[jr.Stream, list[tuple[Any, ...]]] = {"observations": [], "actions": [], "events": []}
    plain: list[tuple[Any, ...]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for i, (kind, args, _, _) in enumerate(batch):
            if kind == "put_nowait":
                plain.append((args[0], args[1], session_now, args[2], zlib.crc32(args[1])))
                continue
            if kind == "observations" or kind == "actions":  # noqa: PLR1714 - hot loop
                rows[kind].append(args[0])
                continue
            if kind == "events":
                rows["events"].append(args[0])
                continue
            if kind == "mark":
                _mark(conn, args, marks, now.wall)
                continue
            if plain:  # keep session writes in queue order
                conn.executemany(ss.UPSERT, plain)
                plain = []
            if kind == "put":
                sid, data, expires, expected = args
                out.results.append((i, ss.put(conn, sid, data, expires, expected, session_now)))
            elif kind == "delete":
                out.results.append((i, ss.delete(conn, args[0], session_now)))
            elif kind == "claim":
                jr.claim(conn, args[0], args[1], session_now, key_memory)
                out.results.append((i, None))
            elif kind == "corrupt":
                out.results.append((i, _remove_corrupt(conn, args[0], args[1], now.wall, out)))
            else:
                out.results.append((i, ss.sweep(conn, session_now)))
        if plain:
            conn.executemany(ss.UPSERT, plain)
        for name, j in journals.items():
            if not rows[name]:
                continue  # retention runs with the inserts it bounds
            added = j.insert(conn, rows[name])
            out.added[name] = added
            have_rows, have_size = counts[name]
            out.retained[name] = retain(
                conn, j, have_rows + added[0], have_size + added[1], now, holds.get(name)
            )
            out.heads[name] = jr.head(conn, name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


def _remove_corrupt(
    conn: sqlite3.Connection, stream: jr.Stream, ids: list[int], at: float, out: Committed
) -> int:
    """Delete journal rows whose checksum failed, logging each as a dropped range."""
    gone = out.corrupt.setdefault(stream, Retention())
    for row_id in ids:
        got = conn.execute(f"DELETE FROM {stream} WHERE id = ? RETURNING size", (row_id,))
        row = got.fetchone()
        if row is not None:
            log_range(conn, stream, row_id, row_id, "corrupt", at)
            gone.rows += 1
            gone.size += int(row[0])
    return gone.rows


def _mark(
    conn: sqlite3.Connection, mark: tuple[Any, ...], marks: Mapping[Mark, int | None], at: float
) -> None:
    what, uplink, stream = mark
    value = marks.get((what, uplink, stream))
    if what == "cursor":
        if value is not None:
            conn.execute(CURSOR_UPSERT, (uplink, stream, value, at))
    else:
        conn.execute(HOLD_UPSERT, (uplink, stream, value, at))
