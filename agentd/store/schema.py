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

#: the columns every journal row carries from version 4 on (defaults: rows from before it, and
#: rows written by tools that know only the older columns)
_STAMPS: Final = "boot_id TEXT NOT NULL DEFAULT '', uptime REAL, synced INTEGER NOT NULL DEFAULT 0"


def _journal_v4(name: str, columns: str) -> str:
    # a rebuilt table: SQLite cannot add AUTOINCREMENT to an existing one
    return (
        f"CREATE TABLE {name}_v4 (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns}, "
        f"size INTEGER NOT NULL, data BLOB NOT NULL, {_STAMPS})"
    )


def _copy_v4(name: str, columns: str) -> str:
    # every row keeps its id; sqlite_sequence starts at the highest copied id
    cols = f"id, {columns}, size, data"
    return (
        f"INSERT INTO {name}_v4 ({cols}) SELECT {cols} FROM {name} ORDER BY id; "
        f"DROP TABLE {name}; ALTER TABLE {name}_v4 RENAME TO {name}"
    )


def _stamp_indexes(name: str, wall: str = "wall") -> str:
    # retention by age: within a boot by boot-relative time, across boots by synced wall time
    return (
        f"CREATE INDEX {name}_boot ON {name}(boot_id, uptime); "
        f"CREATE INDEX {name}_synced_wall ON {name}({wall}) WHERE synced = 1"
    )


def _legacy_gap(name: str) -> str:
    # rows retention removed before ranges were logged: the ids below the oldest kept row
    return (
        "INSERT INTO dropped_ranges (stream, first, last, reason, at) "
        f"SELECT '{name}', 1, low - 1, 'retention.before_upgrade', 0 "
        f"FROM (SELECT min(id) AS low FROM {name}) WHERE low > 1"
    )


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
    (
        "journal ids never reused (AUTOINCREMENT, rows kept); rows stamped with boot id, "
        "boot-relative time and clock sync; the events journal; the database epoch; uplink "
        "cursors and retention holds; the log of dropped id ranges",
        f"""
        {_journal_v4("observations", "tick INTEGER NOT NULL, wall REAL NOT NULL")};
        {_copy_v4("observations", "tick, wall")};
        CREATE INDEX observations_wall ON observations(wall);
        CREATE INDEX observations_tick ON observations(tick);
        {_stamp_indexes("observations")};
        {
            _journal_v4(
                "actions",
                "tick INTEGER, finished_at REAL NOT NULL, actuator TEXT NOT NULL, "
                "name TEXT NOT NULL, status TEXT NOT NULL, key TEXT",
            )
        };
        {_copy_v4("actions", "tick, finished_at, actuator, name, status, key")};
        CREATE INDEX actions_finished ON actions(finished_at);
        CREATE INDEX actions_key ON actions(actuator, key) WHERE key IS NOT NULL;
        {_stamp_indexes("actions", "finished_at")};
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            wall REAL NOT NULL,
            size INTEGER NOT NULL,
            data BLOB NOT NULL,
            {_STAMPS}
        );
        CREATE INDEX events_wall ON events(wall);
        {_stamp_indexes("events")};
        INSERT INTO journal_stats (journal) VALUES ('events');
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta (key, value) VALUES ('epoch', lower(hex(randomblob(16))));
        CREATE TABLE uplink_cursors (
            uplink TEXT NOT NULL,
            stream TEXT NOT NULL,
            acked INTEGER NOT NULL DEFAULT 0,
            hold INTEGER,
            updated_at REAL NOT NULL,
            PRIMARY KEY (uplink, stream)
        ) WITHOUT ROWID;
        CREATE TABLE dropped_ranges (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            stream TEXT NOT NULL,
            first INTEGER NOT NULL,
            last INTEGER NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX dropped_ranges_stream ON dropped_ranges(stream, last);
        {_legacy_gap("observations")};
        {_legacy_gap("actions")}
        """,
    ),
    (
        "a CRC-32 of each session state and journal row (NULL: written before version 5)",
        """
        ALTER TABLE sessions ADD COLUMN crc INTEGER;
        ALTER TABLE observations ADD COLUMN crc INTEGER;
        ALTER TABLE actions ADD COLUMN crc INTEGER;
        ALTER TABLE events ADD COLUMN crc INTEGER
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
