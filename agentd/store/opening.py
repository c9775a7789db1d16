"""Opening the database: connect, check, configure, migrate; corrupt files are moved aside and
replaced, a newer schema is refused untouched, anything else that stops us is `Unavailable`
(the store then runs degraded). Also the two aiosqlite helpers the store uses everywhere."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from agentd.config import StoreConfig
from agentd.errors import StoreError
from agentd.store.journal import Journal, used_keys
from agentd.store.recovery import describe, is_corruption, move_aside
from agentd.store.schema import LATEST, migrate, user_version

__all__ = ["KEY_MEMORY", "Opened", "Unavailable", "call", "close_quietly", "open_database"]

log = logging.getLogger("agentd.store")

T = TypeVar("T")

#: idempotency keys remembered (loaded from the action journal at open)
KEY_MEMORY = 100_000


class Unavailable(Exception):
    """The database cannot be opened or written; ``str()`` is the one-line reason."""


class _Newer(Exception):
    def __init__(self, version: int) -> None:
        self.version = version


class _Corrupt(Exception):
    pass


@dataclass(slots=True)
class Opened:
    db: aiosqlite.Connection
    schema_version: int
    journal_mode: str
    #: (actuator, key) of actions that ran, oldest first
    keys: list[tuple[str, str]]


async def open_database(path: Path, config: StoreConfig, journals: Iterable[Journal]) -> Opened:
    """Open ``path`` ready for use. Raises StoreError for a database from a newer agentd (left
    untouched) and Unavailable when it cannot be opened; a corrupt file is moved aside (logged
    in one line) and a fresh database takes its place."""
    journals = list(journals)
    for attempt in (1, 2):
        db: aiosqlite.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
            return await call(db, _prepare, db._conn, path, config, journals, db)
        except _Newer as exc:
            await close_quietly(db)
            raise StoreError(
                f"{path} was written by a newer agentd (schema version {exc.version}; "
                f"this agentd knows up to {LATEST}); refusing to use or modify it"
            ) from None
        except (_Corrupt, sqlite3.DatabaseError) as exc:
            await close_quietly(db)
            if attempt == 2 or not (isinstance(exc, _Corrupt) or is_corruption(exc)):
                raise Unavailable(f"cannot open {path}: {describe(exc)}") from None
            try:
                moved = move_aside(path)
            except OSError as err:
                raise Unavailable(
                    f"{path} is corrupt ({describe(exc)}) and cannot be moved aside: "
                    f"{describe(err)}"
                ) from None
            log.error(
                "store: %s is corrupt (%s); moved it to %s and started a fresh database",
                path,
                describe(exc),
                moved,
            )
        except (sqlite3.Error, OSError) as exc:
            await close_quietly(db)
            raise Unavailable(f"cannot open {path}: {describe(exc)}") from None
    raise AssertionError("unreachable: the second attempt returns or raises")


def _prepare(
    conn: sqlite3.Connection,
    path: Path,
    config: StoreConfig,
    journals: list[Journal],
    db: aiosqlite.Connection,
) -> Opened:
    """On the database thread: check, configure and migrate. Reads only until the version is
    known to be ours."""
    conn.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout * 1000):d}")
    version = user_version(conn)
    if version > LATEST:
        raise _Newer(version)
    check = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if check != ["ok"]:
        raise _Corrupt(f"quick_check: {check[0]}")
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
    if mode != "wal":
        log.warning("store: %s cannot use WAL here; running in %s mode", path, mode)
    conn.execute(f"PRAGMA synchronous = {config.synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys = ON")
    applied = migrate(conn)
    if applied and applied[0] == 1:
        log.debug("store: created %s (schema version %d)", path, applied[-1])
    elif applied:
        log.info("store: %s schema upgraded to version %d", path, applied[-1])
    for j in journals:
        j.load(conn)
    return Opened(db, user_version(conn), mode, used_keys(conn, KEY_MEMORY))


async def call(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the connection's thread: one hop for a whole transaction. aiosqlite's
    public API is one hop per statement; its ``_execute`` is the documented-by-source way to
    run a callable there, stable across releases."""
    result: T = await db._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]
    return result


async def close_quietly(db: aiosqlite.Connection | None) -> None:
    if db is None:
        return
    try:
        await db.close()
    except (sqlite3.Error, ValueError) as exc:
        log.warning("store: closing the database failed: %s", describe(exc))
    # close() returns when the thread has handed back its last result, a moment before the
    # thread itself ends; wait for that so no thread outlives the store
    thread = getattr(db, "_thread", None)
    if thread is not None and thread.is_alive():
        thread.join(1.0)
