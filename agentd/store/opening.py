"""Opening the database: connect, check, configure, migrate; corrupt files are moved aside and
replaced, a newer schema is refused untouched, anything else that stops us is `Unavailable`
(the store then runs degraded)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agentd.config import StoreConfig
from agentd.errors import StoreError
from agentd.store.journal import Journal, Stream, used_keys
from agentd.store.recovery import describe, is_corruption, move_aside
from agentd.store.schema import LATEST, migrate, user_version
from agentd.store.streams import load_holds
from agentd.store.thread import DatabaseThread

__all__ = ["KEY_MEMORY", "Opened", "Unavailable", "close_quietly", "open_database"]

log = logging.getLogger("agentd.store")

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
    schema_version: int
    journal_mode: str
    #: (actuator, key) of actions that ran, oldest first
    keys: list[tuple[str, str]]
    #: the database's epoch: made once, when the database was created
    epoch: str
    #: retention holds (uplink, stream) -> keep_after, as last committed
    holds: dict[tuple[str, Stream], int]


async def open_database(
    path: Path, config: StoreConfig, journals: Iterable[Journal]
) -> tuple[DatabaseThread, Opened]:
    """Open ``path`` ready for use. Raises StoreError for a database from a newer agentd (left
    untouched) and Unavailable when it cannot be opened; a corrupt file is moved aside (logged
    in one line) and a fresh database takes its place."""
    journals = list(journals)
    for attempt in (1, 2):
        db: DatabaseThread | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = DatabaseThread()
            await db.connect(lambda: sqlite3.connect(path, isolation_level=None))
            return db, await db.call(_prepare, path, config, journals)
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
    epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return Opened(
        schema_version=user_version(conn),
        journal_mode=mode,
        keys=used_keys(conn, KEY_MEMORY),
        epoch=str(epoch[0]),
        holds=load_holds(conn),
    )


async def close_quietly(db: DatabaseThread | None) -> None:
    """Close the connection and end its thread; a failure is logged, never raised."""
    if db is None:
        return
    try:
        await db.close()
    except sqlite3.Error as exc:
        log.warning("store: closing the database failed: %s", describe(exc))
