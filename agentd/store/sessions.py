"""Sessions: agent state that outlives a restart, versioned for compare-and-set, with an
optional TTL. ``state`` is stored as msgpack (any Struct, dict or other msgpack-able value) and
read back decoded. An expired session reads as absent even before the sweep removes it; writing
over it starts again at version 1."""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

import msgspec

from agentd.errors import StoreError, VersionConflict
from agentd.model import Session

if TYPE_CHECKING:
    from agentd.store.store import Store

__all__ = ["SessionStore", "intact"]

log = logging.getLogger("agentd.store")

T = TypeVar("T")

_LIVE: Final = "(expires_at IS NULL OR expires_at > ?)"
_COLUMNS: Final = "id, state, version, created_at, updated_at, expires_at, crc"
_EXPIRED: Final = "sessions.expires_at IS NOT NULL AND sessions.expires_at <= excluded.updated_at"
UPSERT: Final = f"""
INSERT INTO sessions (id, state, version, created_at, updated_at, expires_at, crc)
VALUES (?1, ?2, 1, ?3, ?3, ?4, ?5)
ON CONFLICT(id) DO UPDATE SET
    state = excluded.state,
    crc = excluded.crc,
    version = CASE WHEN {_EXPIRED} THEN 1 ELSE sessions.version + 1 END,
    created_at = CASE WHEN {_EXPIRED} THEN excluded.created_at ELSE sessions.created_at END,
    updated_at = excluded.updated_at,
    expires_at = excluded.expires_at
"""
UPSERT_RETURNING: Final = UPSERT + " RETURNING version, created_at"

_encoder = msgspec.msgpack.Encoder()


def encode_state(state: Any) -> bytes:
    try:
        return _encoder.encode(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"session state cannot be stored: {exc}") from None


# -- run on the database thread, inside the writer's transaction -------------------------------
def put(
    conn: sqlite3.Connection,
    sid: str,
    data: bytes,
    expires_at: float | None,
    expected: int | None,
    now: float,
) -> Session | VersionConflict:
    if expected is not None:
        row = conn.execute(
            "SELECT version, expires_at FROM sessions WHERE id = ?", (sid,)
        ).fetchone()
        current = None if row is None or (row[1] is not None and row[1] <= now) else int(row[0])
        if (current or 0) != expected:
            return VersionConflict(sid, expected, current)
    version, created = conn.execute(
        UPSERT_RETURNING, (sid, data, now, expires_at, zlib.crc32(data))
    ).fetchone()
    return Session(
        id=sid,
        state=data,
        version=int(version),
        created_at=float(created),
        updated_at=now,
        expires_at=expires_at,
    )


def delete(conn: sqlite3.Connection, sid: str, now: float) -> bool:
    cursor = conn.execute(f"DELETE FROM sessions WHERE id = ? AND {_LIVE}", (sid, now))
    conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))  # an expired leftover, if any
    return cursor.rowcount > 0


def sweep(conn: sqlite3.Connection, now: float) -> int:
    cursor = conn.execute(
        "DELETE FROM sessions WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
    )
    return cursor.rowcount


def _get(conn: sqlite3.Connection, sid: str, now: float) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(
        f"SELECT {_COLUMNS} FROM sessions WHERE id = ? AND {_LIVE}",
        (sid, now),
    ).fetchone()
    return row


def _list(
    conn: sqlite3.Connection, prefix: str, limit: int, after: str | None, now: float
) -> list[tuple[Any, ...]]:
    sql = f"SELECT {_COLUMNS} FROM sessions WHERE {_LIVE} AND id >= ? AND substr(id, 1, ?) = ?"
    args: list[Any] = [now, prefix, len(prefix), prefix]
    if after is not None:
        sql += " AND id > ?"
        args.append(after)
    sql += " ORDER BY id LIMIT ?"
    args.append(limit)
    return conn.execute(sql, args).fetchall()


# -- the API ------------------------------------------------------------------------------------
class SessionStore:
    """``store.sessions``. Awaited writes return once committed; ``put_nowait`` goes through
    the batched path (the policy-memory writes made after every tick)."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    @overload
    async def get(self, sid: str) -> Session | None: ...
    @overload
    async def get(self, sid: str, type: type[T]) -> Session | None: ...
    async def get(self, sid: str, type: Any = Any) -> Session | None:
        """The live session ``sid`` with its state decoded (as ``type`` if given), or None."""
        store = self._store
        if store.pending_session(sid):
            await store.flush()
        row = await store.read(_get, sid, time.time())
        if row is None:
            return None
        if not intact(row):
            raise StoreError(
                f"session {sid!r} in {store.path} is corrupt (its checksum does not match); "
                "put a new state or delete it"
            )
        return _session(row, type)

    async def list(
        self, prefix: str = "", limit: int = 100, after: str | None = None
    ) -> list[Session]:
        """Live sessions whose id starts with ``prefix``, in id order; page with ``after`` set to
        the last id of the previous page."""
        if limit < 1:
            return []
        store = self._store
        if store.pending_session(None):
            await store.flush()
        rows = await store.read(_list, prefix, limit, after, time.time())
        bad = [str(r[0]) for r in rows if not intact(r)]
        if bad:
            log.error(
                "store: %d corrupt sessions in %s left out (their checksums do not match): %s",
                len(bad),
                store.path,
                ", ".join(repr(b) for b in bad[:10]),
            )
        return [_session(r, Any) for r in rows if intact(r)]

    async def put(
        self,
        sid: str,
        state: Any,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
    ) -> Session:
        """Create or replace ``sid`` and return it once committed. With ``expected_version``
        (0: must not exist) it is a compare-and-set that raises VersionConflict, carrying the
        current version, when another write came first. ``ttl``: seconds until it expires."""
        data = encode_state(state)
        now = time.time()
        expires = now + ttl if ttl is not None else None
        got = await self._store.write("put", sid, data, expires, expected_version)
        if isinstance(got, VersionConflict):
            raise got
        assert isinstance(got, Session)
        return msgspec.structs.replace(got, state=state)

    def put_nowait(self, sid: str, state: Any, *, ttl: float | None = None) -> bool:
        """Queue an unconditional write for the next group commit. False (and counted as
        back-pressure) if the queue is full: the caller keeps the state and tries again."""
        data = encode_state(state)
        expires = time.time() + ttl if ttl is not None else None
        return self._store.write_nowait(sid, data, expires)

    async def delete(self, sid: str) -> bool:
        """Remove ``sid``; True if a live session was there."""
        return bool(await self._store.write("delete", sid))

    async def sweep(self) -> int:
        """Remove expired sessions now; returns how many."""
        return int(await self._store.write("sweep"))


def intact(row: tuple[Any, ...]) -> bool:
    """Whether a session row's state matches its checksum (rows from before version 5 have
    none)."""
    crc = row[-1]
    return crc is None or zlib.crc32(row[1]) == crc


def _session(row: tuple[Any, ...], type: Any) -> Session:
    sid, data, version, created, updated, expires, _ = row
    state = msgspec.msgpack.decode(data) if type is Any else msgspec.msgpack.decode(data, type=type)
    return Session(
        id=sid,
        state=state,
        version=int(version),
        created_at=float(created),
        updated_at=float(updated),
        expires_at=None if expires is None else float(expires),
    )
