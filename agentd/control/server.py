"""`ControlServer`: the control protocol on a Unix socket.

- The socket is bound, given its mode and group, and only then listened on, so nobody can
  connect through a window with the wrong permissions. A stale socket (nobody listening) is
  removed; a live one is refused. Under systemd socket activation (``LISTEN_FDS``) the passed
  socket is used as it is.
- Each peer's role comes from ``SO_PEERCRED``: root and the daemon's own user are ``admin``,
  members of the socket's group ``read``, anyone else ``none`` (ping and hello only).
- Bounds: connections, frame size, requests in flight per connection, frames handled per
  connection per loop iteration, write back-pressure (a peer that does not read its answers is
  not read from), an idle timeout, and a bounded buffer per watcher (a slow one is dropped).
- The ticker comes first: shortly before the perception loop's next deadline the server stops
  reading from clients and resumes once the tick has run (at most MAX_HOLD past the deadline),
  so control traffic can neither make a tick late nor stretch it. The guard adapts to how late
  its own timer fires (a busy loop needs more room).
- Bad input is answered with an error (or, for framing errors, the connection is closed) and
  counted; it never reaches the loop or other clients.
"""

from __future__ import annotations

import asyncio
import contextvars
import grp
import inspect
import logging
import os
import socket
import stat
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, cast

import msgspec

from agentd.control.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    ErrorInfo,
    Event,
    Request,
    Response,
)
from agentd.errors import AgentdError, ConfigError, StoreError, VersionConflict

if TYPE_CHECKING:
    from agentd.config import ControlConfig
    from agentd.facade import DaemonFacade

__all__ = [
    "PROTOCOL_VERSION",
    "Command",
    "CommandError",
    "Connection",
    "ControlServer",
    "ControlStats",
    "Peer",
    "RequestContext",
    "RequestHook",
    "Role",
    "activated_socket",
]

log = logging.getLogger("agentd.control")

Role = Literal["none", "read", "admin"]
ROLE_RANK: Final[dict[str, int]] = {"none": 0, "read": 1, "admin": 2}

#: frames handled per connection, and by all connections together, per loop iteration before
#: yielding to the rest of the loop (timers, the ticker, other connections)
FRAMES_PER_TURN: Final = 64
FRAMES_PER_ITERATION: Final = 256
#: async requests (tick, reload, act, store queries, ...) in flight per connection
MAX_IN_FLIGHT: Final = 16
#: write buffer of one connection before it is paused (bytes)
WRITE_HIGH_WATER: Final = 256 * 1024
WATCH_HIGH_WATER: Final = 16 * 1024
#: the tick guard: stop reading this long before a deadline (adapts between the bounds)
GUARD_MIN: Final = 0.002
GUARD_MAX: Final = 0.006
#: never hold clients longer than this past a deadline (or half the interval)
MAX_HOLD: Final = 0.05
LISTEN_BACKLOG: Final = 128
SD_LISTEN_FDS_START: Final = 3
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


class ControlStats(msgspec.Struct, kw_only=True):
    connections: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    requests: int = 0
    #: error responses and closed connections by code
    errors: dict[str, int] = {}
    idle_closed: int = 0
    watchers: int = 0
    watch_dropped: int = 0
    #: how often and for how long reading was paused ahead of a tick
    tick_holds: int = 0
    tick_guard_ms: float = 0.0


class ControlServer:
    def __init__(
        self,
        facade: DaemonFacade,
        config: ControlConfig,
        path: Path,
        commands: Mapping[str, Command] | None = None,
    ) -> None:
        if commands is None:
            from agentd.control.handlers import COMMANDS

            commands = COMMANDS
        self.facade = facade
        self.config = config
        self.path = path
        #: the command table; other rooms add theirs with `add_command`
        self.commands: dict[str, Command] = dict(commands)
        self.hooks: list[RequestHook] = []
        self.connections: set[Connection] = set()
        self.watchers: set[Connection] = set()
        self.errors: Counter[str] = Counter()
        self.connections_total = 0
        self.connections_refused = 0
        self.requests = 0
        self.idle_closed = 0
        self.watch_dropped = 0
        self.tick_holds = 0
        self.max_frame = config.max_frame
        self.socket_gid = -1
        self.activated = False
        self.holding = False
        self.guard = GUARD_MIN
        self._late = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._closing = False
        self._arm_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._uid = os.geteuid()
        #: frames left for this loop iteration; refilled by a callback at the next one
        self.budget = FRAMES_PER_ITERATION
        self._refill_scheduled = False

    # -- extension points --------------------------------------------------------------------
    def add_command(self, command: Command) -> None:
        self.commands[command.name] = command

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        sock = activated_socket()
        if sock is not None:
            self.activated = True
            name = sock.getsockname()
            if isinstance(name, str) and name and not name.startswith("\0"):
                self.path = Path(name)
            log.info("control socket passed by systemd: %s", self.path)
        else:
            sock = self._bind()
        try:
            self.socket_gid = os.stat(self.path).st_gid
        except OSError:
            self.socket_gid = os.getegid()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: Connection(self), sock=sock, backlog=LISTEN_BACKLOG
        )
        self._unsubscribe = self.facade.subscribe(self._on_event)
        self._schedule_sweep()
        log.debug("control socket listening on %s", self.path)

    def _bind(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > 107:
            raise AgentdError(f"control socket path is too long (over 107 bytes): {path}")
        _remove_stale(path)
        gid = -1
        if self.config.group:
            try:
                gid = grp.getgrnam(self.config.group).gr_gid
            except KeyError:
                raise AgentdError(f"control.group: no group named {self.config.group!r}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            # mode and group are set before listen(): until then every connect is refused
            os.chmod(path, self.config.mode)
            if gid != -1:
                os.chown(path, -1, gid)
                _open_dir_to_group(path.parent, gid)
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise AgentdError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        return sock

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, stop reading requests, let requests in flight finish (up to
        ``timeout``), then close every connection and remove the socket."""
        if self._closing:
            return
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for handle in (self._arm_handle, self._sweeper):
            if handle is not None:
                handle.cancel()
        if self._server is not None:
            self._server.close()
        conns = list(self.connections)
        for conn in conns:
            conn.block("stop")
        tasks = {t for c in conns for t in c.tasks}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("stop_control: cancelled %d requests still running", len(pending))
                await asyncio.wait(pending)
        for conn in conns:
            conn.close()
        if self._server is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
        self._unlink()

    def _unlink(self) -> None:
        if self.activated or self._inode is None:
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

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

    # -- authorization -----------------------------------------------------------------------
    def role_of(self, peer: Peer) -> Role:
        if peer.uid in (0, self._uid):
            return "admin"
        if peer.gid == self.socket_gid or self.socket_gid in _groups_of(peer):
            return "read"
        return "none"

    # -- the tick guard ----------------------------------------------------------------------
    def arm(self) -> None:
        """Schedule the next hold ahead of the loop's next deadline."""
        if self._arm_handle is not None:
            self._arm_handle.cancel()
            self._arm_handle = None
        if self._closing or self.holding or not self.connections:
            return
        loop = asyncio.get_running_loop()
        deadline = self.facade.next_deadline()
        now = time.monotonic()
        if deadline is None:
            # paused or not started yet: look again soon
            self._arm_handle = loop.call_later(0.25, self.arm)
            return
        guard = min(self.guard, self.facade.interval() / 4)
        start = deadline - guard
        if start <= now:
            self._hold(deadline, min(start, now))
        else:
            self._arm_handle = loop.call_later(start - now, self._hold, deadline, start)

    def _hold(self, deadline: float, planned: float) -> None:
        self._arm_handle = None
        if self._closing or self.facade.next_deadline() != deadline:
            self.arm()
            return
        now = time.monotonic()
        # how late this timer fired says how long one busy loop iteration is: keep a decaying
        # maximum and give the guard twice that, within bounds
        self._late = max(now - planned, self._late * 0.9)
        self.guard = min(GUARD_MAX, max(GUARD_MIN, 2 * self._late + 0.0005))
        self.holding = True
        self.tick_holds += 1
        for conn in self.connections:
            conn.block("hold")
        # released when the tick has run (its event), at the latest max_hold past the deadline
        # (a tick that waits on a slow plugin must not starve the control plane)
        max_hold = min(MAX_HOLD, self.facade.interval() / 2)
        self._arm_handle = asyncio.get_running_loop().call_later(
            max(0.0, deadline + max_hold - now), self._release
        )

    def _release(self) -> None:
        if self._arm_handle is not None:
            self._arm_handle.cancel()
        self._arm_handle = None
        self.holding = False
        for conn in list(self.connections):
            conn.unblock("hold")
        # the next tick's event re-arms; this is the fallback when none comes
        if not self._closing:
            self._arm_handle = asyncio.get_running_loop().call_later(0.25, self.arm)

    # -- events (watch) ----------------------------------------------------------------------
    def _on_event(self, kind: str, data: Any) -> None:
        if kind == "tick" and not self._closing:
            # the tick is done: let clients in, and plan the hold for the next one
            if self.holding:
                self._release()
            asyncio.get_running_loop().call_soon(self.arm)
        if not self.watchers:
            return
        raw = msgspec.Raw(_encoder.encode(data))
        for conn in list(self.watchers):
            conn.send_event(kind, raw)

    # -- idle connections --------------------------------------------------------------------
    def _schedule_sweep(self) -> None:
        every = min(60.0, max(0.5, self.config.idle_timeout / 4))
        self._sweeper = asyncio.get_running_loop().call_later(every, self._sweep)

    def _sweep(self) -> None:
        limit = time.monotonic() - self.config.idle_timeout
        for conn in list(self.connections):
            if conn.last_active < limit and not conn.watches and not conn.tasks:
                self.idle_closed += 1
                conn.close()
        self._schedule_sweep()

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

    # -- connection bookkeeping --------------------------------------------------------------
    def accept(self, conn: Connection) -> bool:
        if self._closing:
            return False
        if len(self.connections) >= self.config.max_connections:
            self.connections_refused += 1
            self.errors["busy"] += 1
            return False
        self.connections.add(conn)
        self.connections_total += 1
        if self.holding:
            conn.block("hold")
        elif self._arm_handle is None:
            self.arm()
        return True

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.watchers.discard(conn)


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


def _remove_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AgentdError(f"cannot check {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentdError(f"{path} exists and is not a socket; remove it or set control.socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listening: left over from a dead agentd
    except OSError as exc:
        raise AgentdError(f"cannot check {path}: {exc.strerror or exc}") from None
    else:
        raise AgentdError(f"another agentd is listening on {path}")
    finally:
        probe.close()
    log.info("removed a stale control socket %s", path)
    os.unlink(path)


def _open_dir_to_group(directory: Path, gid: int) -> None:
    """Let the socket's group reach it: the runtime directory gets that group and g+x."""
    try:
        st = os.stat(directory)
        if st.st_uid != os.geteuid():
            return
        if st.st_gid != gid:
            os.chown(directory, -1, gid)
        if not st.st_mode & stat.S_IXGRP:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXGRP)
    except OSError as exc:
        log.warning("cannot open %s to the control group: %s", directory, exc.strerror)


def activated_socket() -> socket.socket | None:
    """The listening Unix socket systemd passed (``LISTEN_PID``/``LISTEN_FDS``), if any. The
    variables are removed so child processes do not take them for theirs."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    candidates = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            name = names[i] if i < len(names) else ""
            candidates.append((name != "control", sock))
        else:
            sock.detach()
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0])
    chosen = candidates[0][1]
    for _, other in candidates[1:]:
        other.detach()
    os.set_inheritable(chosen.fileno(), False)
    chosen.setblocking(False)
    return chosen
