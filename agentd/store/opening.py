"""Opening the database: connect, check, configure, migrate; corrupt files are moved aside and
replaced, a newer schema is refused untouched, anything else that stops us is `Unavailable`
(the store then runs degraded)."""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agentd.config import StoreConfig
from agentd.errors import StoreError
from agentd.store.journal import Journal, Stream, used_keys
from agentd.store.recovery import (
    Salvaged,
    describe,
    is_corruption,
    mark_salvage,
    move_aside,
    pending_salvage,
    salvage,
    salvage_marker,
    salvaged_already,
)
from agentd.store.schema import LATEST, migrate, user_version
from agentd.store.streams import load_holds
from agentd.store.thread import DatabaseThread

__all__ = ["CACHE_KIB", "KEY_MEMORY", "Opened", "Unavailable", "close_quietly", "open_database"]

log = logging.getLogger("agentd.store")

#: idempotency keys remembered (loaded from the action journal at open)
KEY_MEMORY = 100_000
#: the connection's page cache in KiB (SQLite's default is 2000): the journals append at one
#: end of their tables and trim the other, so their hot pages are few; with the default, a
#: database past a few MB (3 hours of 1 s ticks) keeps 1.5 MiB more in memory for good, and
#: appends, upserts, reads and sweeps on a 1M-row database are no faster for it (issue #18;
#: docs/deployment.md, "Footprint"). 256 starts to cost (appends at half speed).
CACHE_KIB: Final = 512


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
    #: what was copied from the corrupt database this one replaces
    salvaged: Salvaged | None = None
    #: set when the database could only be opened read-only: why, in one line
    read_only: str | None = None


async def open_database(
    path: Path, config: StoreConfig, journals: Iterable[Journal]
) -> tuple[DatabaseThread, Opened]:
    """Open ``path`` ready for use. Raises StoreError for a database from a newer agentd (left
    untouched) and Unavailable when it cannot be opened; a corrupt file is moved aside (logged
    in one line) and a fresh database takes its place."""
    journals = list(journals)
    moved = pending_salvage(path)  # a salvage a crash interrupted is finished first
    if moved is not None:
        log.warning("store: finishing the interrupted salvage of %s into %s", moved, path)
    for attempt in (1, 2):
        db: DatabaseThread | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = DatabaseThread()
            await db.connect(lambda: sqlite3.connect(path, isolation_level=None))
            opened = await db.call(_prepare, path, config, journals, moved)
            if opened.salvaged is not None:
                log.warning("store: from %s: %s", moved, opened.salvaged.summary())
            if moved is not None:
                with contextlib.suppress(OSError):
                    salvage_marker(path).unlink()
            return db, opened
        except _Newer as exc:
            await close_quietly(db)
            raise StoreError(
                f"{path} was written by a newer agentd (schema version {exc.version}; "
                f"this agentd knows up to {LATEST}); refusing to use or modify it"
            ) from None
        except (_Corrupt, sqlite3.DatabaseError) as exc:
            await close_quietly(db)
            if attempt == 1 and not (isinstance(exc, _Corrupt) or is_corruption(exc)):
                return await _read_only(path, config, journals, describe(exc))
            if attempt == 2 or not (isinstance(exc, _Corrupt) or is_corruption(exc)):
                raise Unavailable(f"cannot open {path}: {describe(exc)}") from None
            try:
                moved = move_aside(path)
            except OSError as err:
                raise Unavailable(
                    f"{path} is corrupt ({describe(exc)}) and cannot be moved aside: "
                    f"{describe(err)}"
                ) from None
            with contextlib.suppress(OSError):  # without it, an interrupted salvage is lost
                mark_salvage(path, moved)
            log.error(
                "store: %s is corrupt (%s); moved it to %s and started a fresh database",
                path,
                describe(exc),
                moved,
            )
        except (sqlite3.Error, OSError) as exc:
            await close_quietly(db)
            if attempt == 1:
                return await _read_only(path, config, journals, describe(exc))
            raise Unavailable(f"cannot open {path}: {describe(exc)}") from None
    raise AssertionError("unreachable: the second attempt returns or raises")


async def _read_only(
    path: Path, config: StoreConfig, journals: list[Journal], why: str
) -> tuple[DatabaseThread, Opened]:
    """The database cannot be opened for writing (a read-only file system, say): open it
    read-only so what it holds can still be read. ``immutable`` (no -shm needed, which a
    read-only directory cannot hold) only when no WAL holds commits the file lacks. Raises
    Unavailable (with ``why``) when that cannot be done either."""
    for uri in _read_only_uris(path):
        db = DatabaseThread()
        try:
            await db.connect(
                functools.partial(sqlite3.connect, uri, uri=True, isolation_level=None)
            )
            opened = await db.call(_prepare_read_only, config, journals)
        except _Newer as exc:
            await close_quietly(db)
            raise StoreError(
                f"{path} was written by a newer agentd (schema version {exc.version}; "
                f"this agentd knows up to {LATEST}); refusing to use or modify it"
            ) from None
        except (_Corrupt, sqlite3.Error, OSError):
            await close_quietly(db)
            continue
        opened.read_only = f"{path} cannot be written ({why}); opened it read-only"
        return db, opened
    raise Unavailable(f"cannot open {path}: {why}")


def _read_only_uris(path: Path) -> list[str]:
    if not path.is_file():
        return []
    base = path.absolute().as_uri()
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return [f"{base}?mode=ro"]
    return [f"{base}?mode=ro", f"{base}?mode=ro&immutable=1"]


def _prepare_read_only(
    conn: sqlite3.Connection, config: StoreConfig, journals: list[Journal]
) -> Opened:
    conn.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout * 1000):d}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB:d}")
    version = user_version(conn)
    if version > LATEST:
        raise _Newer(version)
    if version < LATEST:  # the queries need the current schema, and it cannot be migrated
        raise _Corrupt(f"schema version {version} needs an upgrade")
    check = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if check != ["ok"]:
        raise _Corrupt(f"quick_check: {check[0]}")
    return _loaded(conn, journals, "read-only", None)


def _prepare(
    conn: sqlite3.Connection,
    path: Path,
    config: StoreConfig,
    journals: list[Journal],
    salvage_from: Path | None,
) -> Opened:
    """On the database thread: check, configure and migrate, then copy what can be read from
    ``salvage_from`` (the corrupt file this one replaces). Reads only until the version is
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
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB:d}")
    applied = migrate(conn)
    if applied and applied[0] == 1:
        log.debug("store: created %s (schema version %d)", path, applied[-1])
    elif applied:
        log.info("store: %s schema upgraded to version %d", path, applied[-1])
    salvaged = None
    if salvage_from is not None and not salvaged_already(conn, salvage_from):
        salvaged = salvage(conn, salvage_from, time.time())
    return _loaded(conn, journals, mode, salvaged)


def _loaded(
    conn: sqlite3.Connection, journals: list[Journal], mode: str, salvaged: Salvaged | None
) -> Opened:
    for j in journals:
        j.load(conn)
    epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return Opened(
        schema_version=user_version(conn),
        journal_mode=mode,
        keys=used_keys(conn, KEY_MEMORY),
        epoch=str(epoch[0]),
        holds=load_holds(conn),
        salvaged=salvaged,
    )


async def close_quietly(db: DatabaseThread | None) -> None:
    """Close the connection and end its thread; a failure is logged, never raised."""
    if db is None:
        return
    try:
        await db.close()
    except sqlite3.Error as exc:
        log.warning("store: closing the database failed: %s", describe(exc))
