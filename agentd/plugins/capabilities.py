"""The narrow handles the daemon gives to plugins that declare them in ``PluginSpec.requires``
(a plugin never sees the daemon or the store itself).

``sessions``: `SessionAccess` over the store's session API when the store is on
(`StoreSessions`), else `MemorySessions` (kept for the life of the process only)."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

from agentd.plugins.base import SessionAccess

__all__ = ["Grants", "MemorySessions", "StoreSessions"]

log = logging.getLogger("agentd")


@final
class MemorySessions:
    """Sessions in memory, bounded: the oldest is dropped beyond ``limit``."""

    __slots__ = ("_data", "limit")

    def __init__(self, limit: int = 10_000) -> None:
        self._data: dict[str, tuple[Any, int, float | None]] = {}
        self.limit = limit

    async def put(self, session_id: str, state: Any, ttl: float | None = None) -> int:
        old = self.get(session_id)
        version = (self._data[session_id][1] + 1) if old is not None else 1
        self._data.pop(session_id, None)
        self._data[session_id] = (state, version, time.time() + ttl if ttl else None)
        while len(self._data) > self.limit:
            self._data.pop(next(iter(self._data)))
        return version

    async def delete(self, session_id: str) -> bool:
        return self._data.pop(session_id, None) is not None

    def get(self, session_id: str) -> Any:
        item = self._data.get(session_id)
        if item is None:
            return None
        state, _, expires = item
        if expires is not None and expires <= time.time():
            return None
        return state


@final
class StoreSessions:
    """`SessionAccess` over an object with the store's session API:
    ``put(id, state, *, ttl=...) -> Session`` and ``delete(id) -> bool`` (both async)."""

    __slots__ = ("_sessions",)

    def __init__(self, sessions: Any) -> None:
        self._sessions = sessions

    async def put(self, session_id: str, state: Any, ttl: float | None = None) -> int:
        session = await self._sessions.put(session_id, state, ttl=ttl)
        return int(getattr(session, "version", 0))

    async def delete(self, session_id: str) -> bool:
        out = self._sessions.delete(session_id)
        if inspect.isawaitable(out):
            out = await out
        return bool(out)


@final
class Grants:
    """The capabilities `PluginSupervisor` passes a plugin for the names in its ``requires``.
    Sessions go to the store once `use_store` has been called, else to memory (lost at
    exit)."""

    __slots__ = ("_memory", "_store_sessions")

    def __init__(self) -> None:
        self._store_sessions: Any = None
        self._memory: MemorySessions | None = None

    def use_store(self, sessions: Any) -> None:
        """The store's session API (``Store.sessions``), once the store is open."""
        self._store_sessions = sessions

    def __call__(self, wanted: Sequence[str]) -> Mapping[str, object]:
        out: dict[str, object] = {}
        if "sessions" in wanted:
            if self._store_sessions is not None:
                out["sessions"] = StoreSessions(self._store_sessions)
            else:
                if self._memory is None:
                    log.warning("no store: the session actuator keeps sessions in memory only")
                    self._memory = MemorySessions()
                out["sessions"] = self._memory
        return out


if TYPE_CHECKING:  # both satisfy the protocol
    _m: SessionAccess = MemorySessions()
    _s: SessionAccess = StoreSessions(None)
