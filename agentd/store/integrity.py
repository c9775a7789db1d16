"""The full check of a database: ``PRAGMA integrity_check`` (which, unlike the ``quick_check``
run at every open, cross-checks every index against its table: a flipped byte in the sessions'
primary-key index passes quick_check and makes a session silently "not found") and every row's
checksum. Run read-only, on a connection of its own, so the writer is never blocked by it.

Damage confined to indexes is repaired in place (``REINDEX``: the tables hold the truth); any
other damage is reported, and the salvage at the next open copies what can be read.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import msgspec

from agentd.errors import StoreError
from agentd.store.recovery import describe

__all__ = ["CHECKED_TABLES", "Checker", "IntegrityReport", "check_file", "index_only", "reindex"]

#: tables whose rows carry a checksum, and the column it covers
CHECKED_TABLES: Final = (
    ("sessions", "state"),
    ("observations", "data"),
    ("actions", "data"),
    ("events", "data"),
)
#: integrity_check lines kept, and corrupt row ids kept per table
MAX_PROBLEMS: Final = 100
_INDEX_PROBLEM: Final = re.compile(
    r"^(row \d+ missing from index \S+|wrong # of entries in index \S+|"
    r"non-unique entry in index \S+)$"
)


class IntegrityReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a full check found. ``problems``: integrity_check's lines (at most 100);
    ``corrupt_rows``: ids (rowids) per table whose checksum does not match (at most 100 each);
    ``repaired``: what was rebuilt in place."""

    path: str
    ok: bool
    problems: list[str] = []
    corrupt_rows: dict[str, list[int]] = {}
    rows_checked: int = 0
    repaired: list[str] = []
    seconds: float = 0.0

    def summary(self) -> str:
        if self.ok:
            fixed = f" (repaired: {', '.join(self.repaired)})" if self.repaired else ""
            return f"{self.path}: ok, {self.rows_checked} rows checked{fixed}"
        parts = [f"{len(self.problems)} problems ({self.problems[0]})"] if self.problems else []
        bad = sum(len(v) for v in self.corrupt_rows.values())
        if bad:
            tables = ", ".join(f"{t} {len(v)}" for t, v in self.corrupt_rows.items())
            parts.append(f"{bad} rows with a wrong checksum ({tables})")
        return f"{self.path}: corrupt: {'; '.join(parts)}"


class Checker:
    """Runs `check_file` on a thread of its own (a full check of a large database takes
    seconds: never on the event loop, the writer's thread or the sensors' executor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, full: bool, *, live: bool = True) -> IntegrityReport:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="agentd-store-check")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pool, functools.partial(check_file, self.path, full=full, live=live)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot check {self.path}: {describe(exc)}") from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:  # a check still running is waited for, off the loop
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def reindex(conn: sqlite3.Connection, names: list[str]) -> None:
    """Rebuild the named indexes from their tables (on the store's database thread)."""
    for name in names:
        # the names come from integrity_check's own messages; quoted as identifiers
        conn.execute(f'REINDEX "{name.replace(chr(34), chr(34) * 2)}"')


def index_only(problems: list[str]) -> bool:
    """Whether every problem is an index out of step with its table (REINDEX repairs it)."""
    return bool(problems) and all(_INDEX_PROBLEM.match(p) for p in problems)


def check_file(path: Path, *, full: bool = True, live: bool = False) -> IntegrityReport:
    """Check ``path`` read-only (nothing is written, not even beside it when it has no WAL).
    ``full=False`` runs quick_check and skips the checksums; ``live``: another connection may
    be writing it (never read it as immutable then). Raises sqlite3.Error when the file cannot
    be read at all."""
    started = time.perf_counter()
    wal = path.with_name(path.name + "-wal")
    flags = "mode=ro" if live or wal.exists() else "mode=ro&immutable=1"
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?{flags}", uri=True)
    try:
        pragma = "integrity_check" if full else "quick_check"
        lines = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}({MAX_PROBLEMS})")]
        problems = [] if lines == ["ok"] else lines
        corrupt: dict[str, list[int]] = {}
        checked = 0
        if full:
            checked = _checksums(conn, corrupt)
    finally:
        conn.close()
    return IntegrityReport(
        path=str(path),
        ok=not problems and not corrupt,
        problems=problems,
        corrupt_rows=corrupt,
        rows_checked=checked,
        seconds=time.perf_counter() - started,
    )


def _checksums(conn: sqlite3.Connection, corrupt: dict[str, list[int]]) -> int:
    have = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    checked = 0
    for table, column in CHECKED_TABLES:
        if table not in have:
            continue
        columns = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
        if "crc" not in columns:
            continue  # written before checksums existed
        bad: list[int] = []
        try:
            for rowid, blob, crc in conn.execute(
                f"SELECT rowid, {column}, crc FROM {table} WHERE crc IS NOT NULL"
            ):
                checked += 1
                if zlib.crc32(blob) != crc and len(bad) < MAX_PROBLEMS:
                    bad.append(int(rowid))
        except sqlite3.DatabaseError:
            pass  # structural damage: integrity_check has reported it
        if bad:
            corrupt[table] = bad
    return checked
