"""One control connection: cuts frames, checks roles, runs commands, writes answers, streams
watch events. `ControlServer` (server.py) owns the connections, the listening socket, the tick
guard and the budgets these read; see server.py for the rules they follow.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, cast

import msgspec

from agentd.control.protocol import HEADER, ErrorInfo, Event, Request, Response
from agentd.errors import AgentdError, ConfigError, StoreError, VersionConflict

if TYPE_CHECKING:
    from agentd.control.server import ControlServer
    from agentd.facade import DaemonFacade

__all__ = [
    "FRAMES_PER_TURN",
    "MAX_IN_FLIGHT",
    "ROLE_RANK",
    "Command",
    "CommandError",
    "Connection",
    "Peer",
    "RequestContext",
    "RequestHook",
    "Role",
]

log = logging.getLogger("agentd.control")

Role = Literal["none", "read", "admin"]
ROLE_RANK: Final[dict[str, int]] = {"none": 0, "read": 1, "admin": 2}

#: frames handled per connection per loop iteration before yielding to the rest of the loop
FRAMES_PER_TURN: Final = 64
#: async requests (tick, reload, act, store queries, ...) in flight per connection
MAX_IN_FLIGHT: Final = 16
#: write buffer of one connection before it is paused (bytes)
WRITE_HIGH_WATER: Final = 256 * 1024
WATCH_HIGH_WATER: Final = 16 * 1024
_PEERCRED = struct.Struct("3i")


class Peer(NamedTuple):
    pid: int
    uid: int
    gid: int


class CommandError(AgentdError):
    """Raised by a handler: becomes ``error = {code, message, details}``."""

    def __init__(self, code: str, message: str, details: list[str] | None = None) -> None:
        self.code = code
        self.details = details or []
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Command:
    """One protocol command. ``handler(ctx, args)`` returns the result or a coroutine of it;
    ``args_type`` (a Struct) validates ``args`` first; ``role`` is the least role allowed."""

    name: str
    handler: Callable[[RequestContext, Any], Any]
    args_type: type[msgspec.Struct] | None = None
    role: Role = "read"
    help: str = ""
    #: the handler is a coroutine function (answered from a task); set from ``handler``
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))


class RequestContext:
    """What a handler gets besides its args."""

    __slots__ = ("conn", "facade", "request", "server")

    def __init__(
        self, server: ControlServer, conn: Connection, request: Request, facade: DaemonFacade
    ) -> None:
        self.server = server
        self.conn = conn
        self.request = request
        self.facade = facade

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

_request_decoder = msgspec.msgpack.Decoder(Request)
_any_decoder = msgspec.msgpack.Decoder()
_encoder = msgspec.msgpack.Encoder()


def _frame(message: Any) -> bytes:
    body = _encoder.encode(message)
    return len(body).to_bytes(4, "big") + body


def _error_frame(
    rid: int | str | None, code: str, message: str, details: list[str] | None = None
) -> bytes:
    error = ErrorInfo(code=code, message=message, details=details or [])
    return _frame(Response(id=rid, error=error))


class Connection(asyncio.Protocol):
    """One client. Frames are handled in ``data_received``; fast commands are answered in the
    same call (one write per batch), slow ones in tasks."""

    __slots__ = (
        "_blocked",
        "_buf",
        "_pending_events",
        "_write_paused",
        "closed",
        "last_active",
        "peer",
        "role",
        "server",
        "tasks",
        "transport",
        "watches",
    )

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(0, -1, -1)
        self.role: Role = "none"
        self._buf = bytearray()
        self._blocked: set[str] = set()
        self._write_paused = False
        self._pending_events: deque[bytes] = deque()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.watches: dict[int | str, frozenset[str]] = {}
        self.last_active = time.monotonic()
        self.closed = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not subclasses
        self.transport = transport
        server = self.server
        try:
            sock = transport.get_extra_info("socket")
            pid, uid, gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            self.peer = Peer(pid, uid, gid)
            self.role = server.role_of(self.peer)
        except OSError as exc:
            log.warning("control: cannot read peer credentials: %s", exc)
        if not server.accept(self):
            message = (
                "the daemon is stopping"
                if server._closing
                else f"too many connections (limit {server.config.max_connections})"
            )
            code = "shutting_down" if server._closing else "busy"
            transport.write(_error_frame(None, code, message))
            self.closed = True
            transport.close()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._buf and not self.server._closing:
            self.server.errors["bad_frame"] += 1  # closed in the middle of a frame
        self._buf.clear()
        self._pending_events.clear()
        self.server.forget(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self.last_active = time.monotonic()
        if not self._blocked:
            self._process()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.block("write")  # a peer that does not read its answers is not read from

    def resume_writing(self) -> None:
        self._write_paused = False
        transport = self.transport
        while self._pending_events and not self._write_paused and transport is not None:
            transport.write(self._pending_events.popleft())
        if not self._write_paused:
            self.unblock("write")

    # -- flow control ------------------------------------------------------------------------
    def block(self, reason: str) -> None:
        if not self._blocked and not self.closed and self.transport is not None:
            self.transport.pause_reading()
        self._blocked.add(reason)

    def unblock(self, reason: str) -> None:
        if reason not in self._blocked:
            return
        self._blocked.discard(reason)
        if not self._blocked and not self.closed and self.transport is not None:
            self.transport.resume_reading()
            if len(self._buf) >= HEADER.size:
                asyncio.get_running_loop().call_soon(self._process)

    def _next_turn(self) -> None:
        self._blocked.discard("turn")
        if self._blocked or self.closed:
            return  # whatever else blocks it resumes it
        self._process()
        if not self._blocked and not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    # -- frames ------------------------------------------------------------------------------
    def _process(self) -> None:
        if self._blocked or self.closed:
            return
        buf = self._buf
        end_of_buf = len(buf)
        pos = 0
        n = 0
        out: list[bytes] = []
        server = self.server
        max_frame = server.max_frame
        allowed = server.take(FRAMES_PER_TURN)
        while end_of_buf - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if size > max_frame:
                out.append(
                    _error_frame(
                        None,
                        "bad_frame",
                        f"frame of {size} bytes exceeds the limit of {max_frame} bytes; "
                        "closing the connection",
                    )
                )
                server.errors["bad_frame"] += 1
                server.give_back(allowed - n)
                del buf[:]
                self._write(out)
                self.close()
                return
            end = pos + 4 + size
            if end > end_of_buf:
                break
            if n == allowed:
                self.block("turn")
                asyncio.get_running_loop().call_soon(self._next_turn)
                break
            body = bytes(buf[pos + 4 : end])
            pos = end
            n += 1
            try:
                reply = self._dispatch(body)
            except Exception as exc:  # a bug of ours: answer, log, keep the connection
                log.error("control: failed to handle a request", exc_info=exc)
                reply = self._error(None, "internal", f"internal error: {type(exc).__name__}")
            if reply is not None:
                out.append(reply)
            if self._blocked or self.closed:
                break
        if n < allowed:
            server.give_back(allowed - n)
        if pos:
            del buf[:pos]
        if out:
            self._write(out)

    def _write(self, out: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _dispatch(self, body: bytes) -> bytes | None:
        server = self.server
        server.requests += 1
        try:
            req = _request_decoder.decode(body)
        except Exception as exc:  # noqa: BLE001 - e.g. UnicodeDecodeError for a bad str
            return self._bad_request(body, exc)
        cmd = server.commands.get(req.cmd)
        if cmd is None:
            return self._error(req.id, "unknown_command", f"unknown command {req.cmd!r}")
        if ROLE_RANK[self.role] < ROLE_RANK[cmd.role]:
            return self._error(
                req.id,
                "forbidden",
                f"{req.cmd} needs the {cmd.role} role; uid {self.peer.uid} has {self.role}",
            )
        args: Any = None
        if cmd.args_type is not None:
            try:
                args = msgspec.convert(req.args, cmd.args_type, str_keys=True)
            except msgspec.ValidationError as exc:
                return self._error(req.id, "bad_args", f"{req.cmd}: {_args_message(exc)}")
        ctx = RequestContext(server, self, req, server.facade)
        if server.hooks:
            reply: bytes | None = contextvars.copy_context().run(self._run_hooked, cmd, ctx, args)
            return reply
        return self._run(cmd, ctx, args, None)

    def _run_hooked(self, cmd: Command, ctx: RequestContext, args: Any) -> bytes | None:
        finishers = []
        for hook in self.server.hooks:
            try:
                fin = hook(ctx)
            except Exception:
                log.exception("control request hook %r failed", hook)
                continue
            if fin is not None:
                finishers.append(fin)

        def finish(code: str | None) -> None:
            for fin in finishers:
                try:
                    fin(code)
                except Exception:
                    log.exception("control request hook finisher %r failed", fin)

        return self._run(cmd, ctx, args, finish)

    def _run(
        self,
        cmd: Command,
        ctx: RequestContext,
        args: Any,
        finish: Callable[[str | None], None] | None,
    ) -> bytes | None:
        rid = ctx.request.id
        try:
            result = cmd.handler(ctx, args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error response
            return self._failure(rid, cmd, exc, finish)
        if cmd.is_async:
            task = asyncio.get_running_loop().create_task(result)
            self.tasks.add(task)
            task.add_done_callback(lambda t: self._done(t, cmd, rid, finish))
            if len(self.tasks) >= MAX_IN_FLIGHT:
                self.block("in_flight")
            return None
        return self._result(rid, result, finish)

    def _done(
        self,
        task: asyncio.Task[Any],
        cmd: Command,
        rid: int | str,
        finish: Callable[[str | None], None] | None,
    ) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            frame = self._error(rid, "shutting_down", "the daemon is stopping")
            if finish is not None:
                finish("shutting_down")
        else:
            exc = task.exception()
            if exc is None:
                frame = self._result(rid, task.result(), finish)
            else:
                frame = self._failure(rid, cmd, exc, finish)
        if frame is not None:
            self._write([frame])
        self.unblock("in_flight")

    def _result(
        self, rid: int | str, result: Any, finish: Callable[[str | None], None] | None
    ) -> bytes:
        try:
            frame = _frame(Response(id=rid, result=result))
        except (TypeError, msgspec.EncodeError) as exc:
            log.error("control: cannot encode a result: %s", exc)
            frame = self._error(rid, "internal", f"cannot encode the result: {exc}")
            code: str | None = "internal"
        else:
            code = None
            if len(frame) - HEADER.size > self.server.max_frame:
                frame = self._error(
                    rid,
                    "too_large",
                    f"the result is {len(frame)} bytes, over the frame limit of "
                    f"{self.server.max_frame}; ask for less (e.g. --limit)",
                )
                code = "too_large"
        if finish is not None:
            finish(code)
        return frame

    def _failure(
        self,
        rid: int | str,
        cmd: Command,
        exc: BaseException,
        finish: Callable[[str | None], None] | None,
    ) -> bytes:
        details: list[str] = []
        if isinstance(exc, CommandError):
            code, message, details = exc.code, str(exc), exc.details
        elif isinstance(exc, VersionConflict):
            code, message = "conflict", str(exc)
        elif isinstance(exc, ConfigError):
            code, message, details = "invalid_config", str(exc), exc.errors
        elif isinstance(exc, StoreError | AgentdError):
            code, message = "failed", str(exc)
        elif isinstance(exc, msgspec.ValidationError):
            code, message = "bad_args", f"{cmd.name}: {_args_message(exc)}"
        else:
            code, message = "internal", f"{cmd.name} failed: {type(exc).__name__}: {exc}"
            log.error("control command %s failed", cmd.name, exc_info=exc)
        if finish is not None:
            finish(code)
        return self._error(rid, code, message, details)

    def _error(
        self, rid: int | str | None, code: str, message: str, details: list[str] | None = None
    ) -> bytes:
        self.server.errors[code] += 1
        return _error_frame(rid, code, message, details)

    def _bad_request(self, body: bytes, exc: Exception) -> bytes:
        rid: int | str | None = None
        try:
            raw = _any_decoder.decode(body)
        except Exception:  # noqa: BLE001 - any decoding failure means the same to the peer
            return self._error(None, "bad_request", "the frame is not a msgpack message")
        if isinstance(raw, dict):
            value = raw.get("id")
            if isinstance(value, int | str) and not isinstance(value, bool):
                rid = value
        if isinstance(exc, msgspec.ValidationError):
            return self._error(rid, "bad_request", f"not a request: {_args_message(exc)}")
        return self._error(rid, "bad_request", "the frame is not a msgpack message")

    # -- watch -------------------------------------------------------------------------------
    def add_watch(self, rid: int | str, kinds: frozenset[str]) -> None:
        self.watches[rid] = kinds
        self.server.watchers.add(self)
        if self.transport is not None:
            # events wait in our own bounded queue (watch_buffer), not in a large transport one
            self.transport.set_write_buffer_limits(high=WATCH_HIGH_WATER)

    def send_event(self, kind: str, raw: msgspec.Raw) -> None:
        if self.closed or self.transport is None:
            return
        for rid, kinds in self.watches.items():
            if kind not in kinds:
                continue
            frame = _frame(Event(id=rid, event=kind, data=raw))
            if not self._write_paused:
                self.transport.write(frame)
                continue
            self._pending_events.append(frame)
            if len(self._pending_events) > self.server.config.watch_buffer:
                self._drop_watcher()
                return

    def _drop_watcher(self) -> None:
        server = self.server
        server.watch_dropped += 1
        log.warning(
            "control: dropped a watch client (pid %d, uid %d): it stopped reading and "
            "%d events are waiting",
            self.peer.pid,
            self.peer.uid,
            len(self._pending_events),
        )
        self._pending_events.clear()
        server.watchers.discard(self)
        self.watches.clear()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _args_message(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    head, sep, path = text.partition(" - at `$")
    if sep:
        return f"{path.rstrip('`').lstrip('.')}: {head}"
    return text
