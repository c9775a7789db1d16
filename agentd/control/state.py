"""`ServerState`: what the control server shares with its connections (uvicorn's
``ServerState`` is the model): the command table and hooks, the limits, the live connections
and watchers, the counters, the per-turn time budget and the peer-role rule. A `Connection`
gets this object, never the server, so it reads no server internals.

The budget is time, measured with ``perf_counter`` around the work, not a count of frames (one
``plugin`` reply costs a hundred pings): between two turns of the loop's ready queue the
control plane runs at most `TURN_BUDGET` seconds (plus the one request that crossed the line).
A connection that used up its `SHARE` of a turn, or finds the turn's budget spent, waits in a
FIFO for the next turn, so every connection gets its share in order. Async requests (store
queries, metrics) are capped server-wide (`MAX_ASYNC`); a connection wanting more waits in the
same kind of FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from agentd.model import ControlStats

if TYPE_CHECKING:
    from agentd.config import ControlConfig
    from agentd.control.api import ControlApi
    from agentd.control.commands import Command, Peer, RequestHook, Role
    from agentd.control.connection import Connection
    from agentd.control.protocol import ErrorCode

__all__ = ["ADMIN_RESERVED", "MAX_ASYNC", "SHARE", "TURN_BUDGET", "ServerState"]

#: seconds of control-plane work between two turns of the loop's ready queue
TURN_BUDGET: Final = 0.002
#: seconds one connection may take of a turn before the next connection's turn
SHARE: Final = 0.0005
#: async reads (store queries, metrics) in flight for all connections together
MAX_ASYNC: Final = 4
#: connections kept for admins (root, agentd's user) beyond those anyone may hold
ADMIN_RESERVED: Final = 2


class ServerState:
    __slots__ = (
        "_async_waiters",
        "_refill_scheduled",
        "_turn_waiters",
        "api",
        "async_in_flight",
        "closing",
        "commands",
        "config",
        "connections",
        "connections_refused",
        "connections_total",
        "errors",
        "guard",
        "holding",
        "hooks",
        "idle_closed",
        "on_admit",
        "requests",
        "socket_gid",
        "tick_holds",
        "uid",
        "used",
        "watch_dropped",
        "watchers",
    )

    def __init__(
        self, api: ControlApi, config: ControlConfig, commands: Mapping[str, Command]
    ) -> None:
        self.api = api
        self.config = config
        #: the command table; `ControlServer.add_command` extends it
        self.commands: dict[str, Command] = dict(commands)
        self.hooks: list[RequestHook] = []
        self.connections: set[Connection] = set()
        self.watchers: set[Connection] = set()
        #: error responses and closed connections by code
        self.errors: Counter[str] = Counter()
        self.connections_total = 0
        self.connections_refused = 0
        self.requests = 0
        self.idle_closed = 0
        self.watch_dropped = 0
        self.tick_holds = 0
        #: the tick guard (server.py) sets these: reading is paused while holding
        self.holding = False
        self.guard = 0.0
        self.closing = False
        self.socket_gid = -1
        self.uid = os.geteuid()
        #: seconds of work done in this turn; reset by a callback at the next one
        self.used = 0.0
        self._refill_scheduled = False
        self._turn_waiters: deque[Connection] = deque()
        self.async_in_flight = 0
        self._async_waiters: deque[Connection] = deque()
        #: called with each admitted connection (the server's tick guard plans its hold)
        self.on_admit: Callable[[Connection], None] = lambda conn: None

    @property
    def max_frame(self) -> int:
        return self.config.max_frame

    # -- connections -------------------------------------------------------------------------
    def role_of(self, peer: Peer) -> Role:
        """Root and the daemon's own user are ``admin``, members of the socket's group
        ``read``, anyone else ``none``."""
        if peer.uid in (0, self.uid):
            return "admin"
        if peer.gid == self.socket_gid or self.socket_gid in _groups_of(peer):
            return "read"
        return "none"

    def admit(self, conn: Connection) -> tuple[ErrorCode, str] | None:
        """Take a new connection, or say why not (code, message). The last `ADMIN_RESERVED`
        places are for admins: a client holding every connection it can still leaves root's
        agentctl a way in."""
        if self.closing:
            return "shutting_down", "the daemon is stopping"
        limit = self.config.max_connections
        n = len(self.connections)
        if n >= limit + ADMIN_RESERVED or (n >= limit and conn.role != "admin"):
            self.connections_refused += 1
            self.errors["busy"] += 1
            return "busy", (
                f"too many connections (limit {limit}, and {ADMIN_RESERVED} kept for admins)"
            )
        self.connections.add(conn)
        self.connections_total += 1
        self.on_admit(conn)
        return None

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.watchers.discard(conn)
        with contextlib.suppress(ValueError):
            self._turn_waiters.remove(conn)
        with contextlib.suppress(ValueError):
            self._async_waiters.remove(conn)

    # -- the per-turn time budget -----------------------------------------------------------
    def left(self) -> float:
        """Seconds of this turn's budget not used yet (<= 0: wait for the next turn)."""
        return TURN_BUDGET - self.used

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of work (measured) against this turn."""
        self.used += seconds
        self._schedule_refill()

    def wait_turn(self, conn: Connection) -> None:
        """``conn`` goes on at a later turn, after those already waiting (FIFO)."""
        if conn not in self._turn_waiters:
            self._turn_waiters.append(conn)
        self._schedule_refill()

    def _schedule_refill(self) -> None:
        if not self._refill_scheduled:
            self._refill_scheduled = True
            # call_soon: runs at the next turn, after the I/O and timers that are due
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        self._refill_scheduled = False
        self.used = 0.0
        waiting, self._turn_waiters = self._turn_waiters, deque()
        while waiting:
            if self.left() <= 0:
                # the rest keep their place at the head of the queue for the next turn
                waiting.extend(self._turn_waiters)
                self._turn_waiters = waiting
                self._schedule_refill()
                return
            waiting.popleft().next_turn()

    # -- async requests ----------------------------------------------------------------------
    def async_room(self) -> bool:
        return self.async_in_flight < MAX_ASYNC

    def async_started(self) -> None:
        self.async_in_flight += 1

    def async_done(self) -> None:
        self.async_in_flight -= 1
        while self._async_waiters and self.async_room():
            self._async_waiters.popleft().unblock("async")

    def wait_async(self, conn: Connection) -> None:
        if conn not in self._async_waiters:
            self._async_waiters.append(conn)

    # -- statistics --------------------------------------------------------------------------
    def stats(self) -> ControlStats:
        return ControlStats(
            connections=len(self.connections),
            connections_total=self.connections_total,
            connections_refused=self.connections_refused,
            requests=self.requests,
            errors=dict(self.errors),
            idle_closed=self.idle_closed,
            watchers=len(self.watchers),
            watch_dropped=self.watch_dropped,
            tick_holds=self.tick_holds,
            tick_guard_ms=round(self.guard * 1e3, 3),
        )


def _groups_of(peer: Peer) -> set[int]:
    """The peer process's supplementary groups (from /proc; the user's groups as a
    fallback)."""
    try:
        with open(f"/proc/{peer.pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    try:
        import pwd

        name = pwd.getpwuid(peer.uid).pw_name
        return set(os.getgrouplist(name, peer.gid))
    except (KeyError, OSError):
        return set()
