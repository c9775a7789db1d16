"""What a command is and what its handler receives: `Command`, `RequestContext`, `Role`,
`CommandError`. Kept apart from the server and the connection so handlers, telemetry's request
hook and tests can name these without importing the socket machinery.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import msgspec

from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.control.api import ControlApi
    from agentd.control.connection import Connection
    from agentd.control.protocol import ErrorCode, Request
    from agentd.control.state import ServerState

__all__ = [
    "ROLE_RANK",
    "Command",
    "CommandError",
    "Handler",
    "Peer",
    "RequestContext",
    "RequestHook",
    "Role",
]

Role = Literal["none", "read", "admin"]
ROLE_RANK: Final[dict[str, int]] = {"none": 0, "read": 1, "admin": 2}


class Peer(NamedTuple):
    pid: int
    uid: int
    gid: int


class CommandError(AgentdError):
    """Raised by a handler: becomes ``error = {code, message, details}``."""

    def __init__(self, code: ErrorCode, message: str, details: list[str] | None = None) -> None:
        self.code: ErrorCode = code
        self.details = details or []
        super().__init__(message)


#: ``handler(ctx, args)``: args is the command's validated args Struct (None without one); the
#: result is a msgspec-encodable value or a coroutine of one. ``Any`` stays inside this room:
#: each handler in handlers.py is typed with its own args Struct and reply Struct.
Handler = Callable[["RequestContext", Any], Any]


@dataclass(frozen=True, slots=True)
class Command:
    """One protocol command. ``args_type`` (a Struct) validates ``args`` first; ``role`` is the
    least role allowed."""

    name: str
    handler: Handler
    args_type: type[msgspec.Struct] | None = None
    role: Role = "read"
    help: str = ""
    #: the handler is a coroutine function (answered from a task); set from ``handler``
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))


class RequestContext:
    """What a handler gets besides its args: the server's shared state, its connection, the
    request and the typed view of the daemon."""

    __slots__ = ("api", "conn", "request", "state")

    def __init__(
        self, state: ServerState, conn: Connection, request: Request, api: ControlApi
    ) -> None:
        self.state = state
        self.conn = conn
        self.request = request
        self.api = api

    @property
    def peer(self) -> Peer:
        return self.conn.peer

    @property
    def role(self) -> Role:
        return self.conn.role


#: called before a request runs, inside a context copied for this request (so a hook may set
#: context variables, e.g. the current span from ``request.traceparent``); returns a callable
#: that gets the error code (None on success) once the response is sent, or None.
RequestHook = Callable[[RequestContext], Callable[[str | None], None] | None]
