"""Startup checks: tell a corrupt database from an unavailable one, and move a corrupt one
aside (with its WAL and shared-memory files: a stale WAL next to a fresh database would be
replayed into it)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

__all__ = ["describe", "is_corruption", "move_aside"]

#: SQLite primary result codes (the low byte of an extended code)
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
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
