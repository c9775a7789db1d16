"""Local state in one SQLite file: versioned sessions with TTLs, the observation, action and
event journals with retention (read as streams by the uplink, with durable cursors), a
group-commit writer, startup checks and migrations (docs/storage.md)."""

from agentd.store.clock import Clock, SystemClock
from agentd.store.integrity import IntegrityReport, check_file
from agentd.store.journal import Event, Stream
from agentd.store.sessions import SessionStore
from agentd.store.store import Store
from agentd.store.streams import Backlog, DroppedRange, StreamRow

__all__ = [
    "Backlog",
    "Clock",
    "DroppedRange",
    "Event",
    "IntegrityReport",
    "SessionStore",
    "Store",
    "Stream",
    "StreamRow",
    "SystemClock",
    "check_file",
]
