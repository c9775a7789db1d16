"""Startup checks: tell a corrupt database from an unavailable one, move a corrupt one aside
(with its WAL and shared-memory files: a stale WAL next to a fresh database would be replayed
into it), and salvage what can still be read from it into the fresh one, so corruption costs
what is corrupt, not everything (issue 13)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "SALVAGE",
    "Salvaged",
    "describe",
    "is_corruption",
    "mark_salvage",
    "move_aside",
    "pending_salvage",
    "salvage",
    "salvage_marker",
    "salvaged_already",
]

#: SQLite primary result codes (the low byte of an extended code)
SQLITE_CORRUPT: Final = 11
SQLITE_NOTADB: Final = 26
_SIDECARS = ("-wal", "-shm", "-journal")


def is_corruption(exc: BaseException) -> bool:
    """True for errors that mean the file's content is bad (not the disk, not permissions)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def describe(exc: BaseException) -> str:
    """One line for a user: SQLite's message, or the OS error's."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename ``path`` (and its -wal/-shm/-journal files) to ``<name>.corrupt-<UTC time>``;
    returns the new path of the database file. Never overwrites an earlier one."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in _SIDECARS:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    if path.exists():
        path.rename(target)
    return target


#: tables copied out of a corrupt database, in this order, with their key column (the rowid
#: alias a journal's ids are): sessions and claimed idempotency keys first, they matter most.
#: uplink_cursors are not: the fresh database has a new epoch, so every salvaged row is new to
#: the fleet and is sent again under it; meta keeps the fresh database's epoch
SALVAGE: Final[tuple[str, ...]] = (
    "sessions",
    "action_keys",
    "actions",
    "events",
    "observations",
    "dropped_ranges",
    "journal_stats",
)
#: journals whose unreadable id ranges are logged as dropped ("corrupt")
_JOURNALS: Final = ("observations", "actions", "events")
_LAST_ID: Final = (1 << 63) - 1
#: damaged regions stepped past per table before giving up on the rest of it
MAX_DAMAGED: Final = 10_000


@dataclass(slots=True)
class Salvaged:
    """What a salvage copied: rows per table, and the id ranges of journals it could not read."""

    rows: dict[str, int] = field(default_factory=dict)
    lost: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    #: tables that could not be read at all (a damaged schema or root page)
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if set(self.unreadable) >= set(SALVAGE):
            return "nothing could be read from it"
        copied = ", ".join(f"{n} {t}" for t, n in self.rows.items() if t in _SHOWN)
        gaps = sum(len(v) for v in self.lost.values())
        out = f"salvaged {copied or 'nothing'}"
        if gaps:
            out += f"; {gaps} damaged id ranges of the journals are logged as dropped (corrupt)"
        if self.unreadable:
            out += f"; unreadable: {', '.join(self.unreadable)}"
        return out


_SHOWN: Final = ("sessions", "action_keys", "actions", "events", "observations")


def salvage(dst: sqlite3.Connection, source: Path, at: float) -> Salvaged:
    """Copy every row that can still be read from the corrupt database ``source`` (opened
    read-only) into ``dst`` (a fresh, migrated database, autocommit), row by row in rowid
    order, stepping past damaged pages; journal rows keep their ids. One transaction."""
    out = Salvaged()
    # without a WAL beside it the file is all there is: immutable reads it without creating
    # -wal/-shm files next to the evidence; with one, its commits must be read too
    wal = source.with_name(source.name + "-wal")
    flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        src = sqlite3.connect(f"{source.absolute().as_uri()}?{flags}", uri=True)
    except sqlite3.Error:
        return out
    try:
        src.execute("PRAGMA query_only = ON")
        dst.execute("BEGIN IMMEDIATE")
        try:
            for table in SALVAGE:
                _salvage_table(src, dst, table, out)
            _journal_heads(src, dst, out, at)
            # done, in the same transaction: an interrupted salvage is resumed, a finished one
            # never repeated (it would bring back rows retention has removed since)
            dst.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('salvaged_from', ?)",
                (str(source),),
            )
            dst.execute("COMMIT")
        except BaseException:
            if dst.in_transaction:
                dst.execute("ROLLBACK")
            raise
    finally:
        src.close()
    return out


def salvage_marker(path: Path) -> Path:
    """The file that names the corrupt database whose salvage into ``path`` is not finished."""
    return path.with_name(path.name + ".salvage")


def pending_salvage(path: Path) -> Path | None:
    """The corrupt database an interrupted salvage into ``path`` was copying from, if any."""
    marker = salvage_marker(path)
    try:
        source = Path(marker.read_text().strip())
    except OSError:
        return None
    if source.is_file():
        return source
    with contextlib.suppress(OSError):
        marker.unlink()
    return None


def mark_salvage(path: Path, source: Path) -> None:
    """Record, durably, that ``source`` is to be salvaged into ``path`` (done at the next open
    if this one is interrupted)."""
    marker = salvage_marker(path)
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, str(source).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def salvaged_already(conn: sqlite3.Connection, source: Path) -> bool:
    got = conn.execute("SELECT value FROM meta WHERE key = 'salvaged_from'").fetchone()
    return got is not None and got[0] == str(source)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def _salvage_table(
    src: sqlite3.Connection, dst: sqlite3.Connection, table: str, out: Salvaged
) -> None:
    try:
        have = _columns(src, table)
    except sqlite3.DatabaseError:
        out.unreadable.append(table)
        return
    if not have:
        return  # an older schema without this table
    want = _columns(dst, table)
    cols = [c for c in want if c in have]
    names = ", ".join(cols)
    replace = "REPLACE" if table == "journal_stats" else "IGNORE"
    insert = f"INSERT OR {replace} INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})"
    select = f"SELECT rowid, {names} FROM {table} WHERE rowid > ? ORDER BY rowid"
    copied = 0
    after = -_LAST_ID - 1
    for _ in range(MAX_DAMAGED):
        try:
            for row in src.execute(select, (after,)):
                dst.execute(insert, row[1:])
                after = int(row[0])
                copied += 1
            break
        except sqlite3.DatabaseError:
            resume = _next_readable(src, table, after)
            lost = (after + 1, _LAST_ID if resume is None else resume - 1)
            if table in _JOURNALS and lost[0] <= lost[1]:
                out.lost.setdefault(table, []).append(lost)
            if resume is None:
                break
            # always forward, even where a scan fails again at once
            after = max(resume - 1, after + 1)
    out.rows[table] = copied


def _first_after(src: sqlite3.Connection, table: str, after: int) -> int | None:
    """The first rowid above ``after`` (its row read), -1 if there is none, None when the
    search runs into damage."""
    try:
        got = src.execute(
            f"SELECT rowid, * FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 1", (after,)
        ).fetchone()
    except sqlite3.DatabaseError:
        return None
    return -1 if got is None else int(got[0])


def _next_readable(src: sqlite3.Connection, table: str, after: int) -> int | None:
    """The lowest readable rowid past the damage that stopped a scan at ``after``: gallop
    forward until a search succeeds, then bisect back to the first place one does (a damaged
    leaf costs its own rows, not the rest). None when nothing readable follows."""
    lo, step = after, 1
    while True:
        probe = after + step
        if probe >= _LAST_ID:
            return None
        if _first_after(src, table, probe) is not None:
            hi = probe
            break
        lo, step = probe, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _first_after(src, table, mid) is None:
            lo = mid
        else:
            hi = mid
    first = _first_after(src, table, hi)
    return None if first is None or first == -1 else first


def _journal_heads(
    src: sqlite3.Connection, dst: sqlite3.Connection, out: Salvaged, at: float
) -> None:
    """Keep ids moving forward past the corrupt database's highest id, and log what could not
    be read as dropped ranges (reason "corrupt")."""
    for table in _JOURNALS:
        top = 0
        with contextlib.suppress(sqlite3.DatabaseError):
            got = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
            top = int(got[0]) if got else 0
        got = dst.execute(f"SELECT max(id) FROM {table}").fetchone()
        top = max(top, int(got[0] or 0))
        if top:
            dst.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
            dst.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, top))
        for first, last in out.lost.get(table, []):
            if first <= min(last, top):
                dst.execute(
                    "INSERT INTO dropped_ranges (stream, first, last, reason, at) "
                    "VALUES (?, ?, ?, 'corrupt', ?)",
                    (table, max(first, 1), min(last, top), at),
                )
