"""The database schema as ordered migrations, tracked by ``PRAGMA user_version``.

Migration N takes a database at version N-1 to version N, in one transaction together with the
``user_version`` bump, so a crash mid-migration leaves the old version intact. A database whose
version is newer than `LATEST` was written by a newer agentd: it is refused, never modified.
Append new migrations; never edit a released one.
"""

from __future__ import annotations

import sqlite3
from typing import Final

__all__ = ["LATEST", "MIGRATIONS", "migrate"]

#: (what it does, the DDL); index i takes user_version i to i + 1
MIGRATIONS: Final[tuple[tuple[str, str], ...]] = (
    (
        "sessions, observation journal, action journal",
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            state BLOB NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL
        );
        CREATE INDEX sessions_expires ON sessions(expires_at) WHERE expires_at IS NOT NULL;
        CREATE TABLE observations (
            id INTEGER PRIMARY KEY,
            tick INTEGER NOT NULL,
            wall REAL NOT NULL,
            size INTEGER NOT NULL,
            data BLOB NOT NULL
        );
        CREATE INDEX observations_wall ON observations(wall);
        CREATE INDEX observations_tick ON observations(tick);
        CREATE TABLE actions (
            id INTEGER PRIMARY KEY,
            tick INTEGER,
            finished_at REAL NOT NULL,
            actuator TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            key TEXT,
            size INTEGER NOT NULL,
            data BLOB NOT NULL
        );
        CREATE INDEX actions_finished ON actions(finished_at);
        """,
    ),
    (
        "retention totals that survive restarts; index idempotency keys",
        """
        CREATE TABLE journal_stats (
            journal TEXT PRIMARY KEY,
            dropped INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO journal_stats (journal) VALUES ('observations'), ('actions');
        CREATE INDEX actions_key ON actions(actuator, key) WHERE key IS NOT NULL;
        """,
    ),
    (
        "idempotency keys claimed before a non-idempotent action runs",
        """
        CREATE TABLE action_keys (
            id INTEGER PRIMARY KEY,
            actuator TEXT NOT NULL,
            key TEXT NOT NULL,
            claimed_at REAL NOT NULL,
            UNIQUE (actuator, key)
        );
        """,
    ),
)
LATEST: Final = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, target: int = LATEST) -> list[int]:
    """Bring the database up to ``target``; returns the versions applied. The connection must be
    in autocommit mode (``isolation_level=None``): each step is its own explicit transaction."""
    applied: list[int] = []
    current = user_version(conn)
    while current < target:
        _, ddl = MIGRATIONS[current]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(ddl):
                conn.execute(statement)
            # PRAGMA takes no bound parameters; the value is our own integer
            conn.execute(f"PRAGMA user_version = {current + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        current += 1
        applied.append(current)
    return applied


def _statements(ddl: str) -> list[str]:
    # executescript() would COMMIT the open transaction first; run the statements one by one
    return [s.strip() for s in ddl.split(";") if s.strip()]
