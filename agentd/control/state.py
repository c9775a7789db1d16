"""`ServerState`: what the control server shares with its connections (uvicorn's
``ServerState`` is the model): the command table and hooks, the limits, the live connections
and watchers, the counters, the per-iteration frame budget and the peer-role rule. A
`Connection` gets this object, never the server, so it reads no server internals.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from agentd.model import ControlStats

if TYPE_CHECKING:
    from agentd.config import ControlConfig
    from agentd.control.api import ControlApi
    from agentd.control.commands import Command, Peer, RequestHook, Role
    from agentd.control.connection import Connection
    from agentd.control.protocol import ErrorCode

__all__ = ["FRAMES_PER_ITERATION", "ServerState"]

#: frames handled by all connections together between two turns of the loop's ready queue
FRAMES_PER_ITERATION: Final = 256


class ServerState:
    __slots__ = (
        "_refill_scheduled",
        "api",
        "budget",
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
        #: frames left for this loop iteration; refilled by a callback at the next one
        self.budget = FRAMES_PER_ITERATION
        self._refill_scheduled = False
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
        """Take a new connection, or say why not (code, message)."""
        if self.closing:
            return "shutting_down", "the daemon is stopping"
        if len(self.connections) >= self.config.max_connections:
            self.connections_refused += 1
            self.errors["busy"] += 1
            return "busy", f"too many connections (limit {self.config.max_connections})"
        self.connections.add(conn)
        self.connections_total += 1
        self.on_admit(conn)
        return None

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.watchers.discard(conn)

    # -- the per-iteration budget ------------------------------------------------------------
    def take(self, wanted: int) -> int:
        """Frames a connection may handle now (0: wait until the loop has had a turn). The
        budget is refilled by a callback once it runs out, so at most FRAMES_PER_ITERATION
        frames are handled between two turns of the loop's ready queue."""
        n = min(wanted, self.budget)
        self.budget -= n
        if self.budget == 0 and not self._refill_scheduled:
            self._refill_scheduled = True
            # runs before the connections that then wait for it (FIFO)
            asyncio.get_running_loop().call_soon(self._refill)
        return n

    def give_back(self, n: int) -> None:
        self.budget += n

    def _refill(self) -> None:
        self._refill_scheduled = False
        self.budget = FRAMES_PER_ITERATION

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
