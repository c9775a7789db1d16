"""Local state in one SQLite file: versioned sessions with TTLs, the observation and action
journals with retention, a group-commit writer, startup checks and migrations
(docs/storage.md)."""

from agentd.store.sessions import SessionStore
from agentd.store.store import Store

__all__ = ["SessionStore", "Store"]
