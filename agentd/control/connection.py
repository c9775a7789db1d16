"""One control connection: cuts frames (with the one codec in protocol.py), checks roles, runs
commands, writes answers, streams watch events. It gets the server's `ServerState` (state.py),
never the server: limits, counters, the command table, the frame budget and the role rule all
live there; server.py says the rules they follow.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import msgspec

from agentd.control.commands import (
    ROLE_RANK,
    Command,
    Peer,
    RequestContext,
    Role,
)
from agentd.control.protocol import (
    HEADER,
    ErrorCode,
    Event,
    EventKind,
    FrameBuffer,
    FrameTooLarge,
    Request,
    Response,
    encode_frame,
)
from agentd.control.replies import args_message, bad_request_reply, error_frame, failure_reply
from agentd.control.state import SHARE

if TYPE_CHECKING:
    from agentd.control.state import ServerState

__all__ = ["FRAME_DEADLINE", "MAX_IN_FLIGHT", "Connection"]

log = logging.getLogger("agentd.control")

#: seconds a frame may take to arrive once its first byte has (a client dripping a byte every
#: few seconds is closed, whatever the idle timeout)
FRAME_DEADLINE: Final = 10.0
#: async requests (tick, reload, act, store queries, ...) in flight per connection
MAX_IN_FLIGHT: Final = 16
#: write buffer of one connection before it is paused (bytes)
WRITE_HIGH_WATER: Final = 256 * 1024
WATCH_HIGH_WATER: Final = 16 * 1024
_PEERCRED = struct.Struct("3i")

_request_decoder = msgspec.msgpack.Decoder(Request)
#: a request's finisher: gets the error code (None: ok) once the response is made
Finish = Callable[[str | None], None]


class Connection(asyncio.Protocol):
    """One client. Frames are handled in ``data_received``; fast commands are answered in the
    same call (one write per batch), slow ones in tasks."""

    __slots__ = (
        "_blocked",
        "_frame_started",
        "_frames",
        "_pending_events",
        "_write_paused",
        "closed",
        "last_active",
        "peer",
        "role",
        "state",
        "tasks",
        "transport",
        "watches",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(0, -1, -1)
        self.role: Role = "none"
        self._frames = FrameBuffer(state.max_frame)
        self._blocked: set[str] = set()
        self._write_paused = False
        self._pending_events: deque[bytes] = deque()
        self.tasks: set[asyncio.Task[object]] = set()
        self.watches: dict[int | str, frozenset[str]] = {}
        self.last_active = time.monotonic()
        #: when the unfinished frame in the buffer began (0: none)
        self._frame_started = 0.0
        self.closed = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not subclasses
        self.transport = transport
        state = self.state
        try:
            sock = transport.get_extra_info("socket")
            pid, uid, gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            self.peer = Peer(pid, uid, gid)
            self.role = state.role_of(self.peer)
        except OSError as exc:
            log.warning("control: cannot read peer credentials: %s", exc)
        refusal = state.admit(self)
        if refusal is not None:
            code, message = refusal
            transport.write(error_frame(None, code, message))
            self.closed = True
            transport.close()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._frames.pending and not self.state.closing:
            self.state.errors["bad_frame"] += 1  # closed in the middle of a frame
        self._frames.clear()
        self._pending_events.clear()
        self.state.forget(self)

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        now = time.monotonic()
        self.last_active = now
        if not self._frame_started:
            self._frame_started = now
        if not self._blocked:
            self._process()

    def frame_overdue(self, now: float) -> bool:
        """An unfinished frame has been arriving for longer than FRAME_DEADLINE."""
        if not self._frame_started or self._has_frame():
            return False  # a whole frame waits (its turn, or the peer to read): not dripping
        return now - self._frame_started > FRAME_DEADLINE

    def _has_frame(self) -> bool:
        """Something for `_process` to take: a whole frame, or a header announcing an
        oversized one (which `_process` answers and closes on; `ready()` raises for it)."""
        try:
            return self._frames.ready()
        except FrameTooLarge:
            return True

    def close_overdue(self) -> None:
        self._write(
            [
                self._error(
                    None,
                    "bad_frame",
                    f"a frame did not arrive whole within {FRAME_DEADLINE:g}s; closing",
                )
            ]
        )
        self._frames.clear()
        self.close()

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
            if self._frames.pending >= HEADER.size:
                asyncio.get_running_loop().call_soon(self._process)

    def next_turn(self) -> None:
        """Its turn has come (`ServerState` calls this in FIFO order)."""
        if "turn" not in self._blocked:
            return
        self._blocked.discard("turn")
        if self._blocked or self.closed:
            # whatever else blocks it resumes it; reading resumes with it
            return
        if self.transport is not None:
            self.transport.resume_reading()
        self._process()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    # -- frames ------------------------------------------------------------------------------
    def _process(self) -> None:
        if self._blocked or self.closed:
            return
        state = self.state
        frames = self._frames
        if state.left() <= 0:
            if self._has_frame():
                self.block("turn")
                state.wait_turn(self)
            return
        out: list[bytes] = []
        taken = False
        start = time.perf_counter()
        # this connection's share of the turn, measured: a frame's cost is whatever it took
        until = start + min(SHARE, state.left())
        try:
            while True:
                try:
                    body = frames.next()
                except FrameTooLarge as exc:
                    out.append(error_frame(None, "bad_frame", f"{exc}; closing the connection"))
                    state.errors["bad_frame"] += 1
                    frames.clear()
                    self._write(out)
                    self.close()
                    return
                if body is None:
                    break
                taken = True
                try:
                    reply = self._dispatch(body)
                except Exception as exc:  # a bug of ours: answer, log, keep the connection
                    log.error("control: failed to handle a request", exc_info=exc)
                    reply = self._error(None, "internal", f"internal error: {type(exc).__name__}")
                if reply is not None:
                    out.append(reply)
                if self._blocked or self.closed:
                    break
                if time.perf_counter() >= until:
                    if self._has_frame():
                        self.block("turn")
                        state.wait_turn(self)
                    break
            if taken or not frames.pending:
                # whatever is left in the buffer is the start of the next frame
                self._frame_started = time.monotonic() if frames.pending else 0.0
            if out:
                self._write(out)
        finally:
            state.charge(time.perf_counter() - start)

    def _write(self, out: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _dispatch(self, body: bytes) -> bytes | None:
        state = self.state
        state.requests += 1
        try:
            req = _request_decoder.decode(body)
        except Exception as exc:  # noqa: BLE001 - e.g. UnicodeDecodeError for a bad str
            return self._bad_request(body, exc)
        cmd = state.commands.get(req.cmd)
        if cmd is None:
            return self._error(req.id, "unknown_command", f"unknown command {req.cmd!r}")
        if ROLE_RANK[self.role] < ROLE_RANK[cmd.role]:
            return self._error(
                req.id,
                "forbidden",
                f"{req.cmd} needs the {cmd.role} role; uid {self.peer.uid} has {self.role}",
            )
        args: msgspec.Struct | None = None
        if cmd.args_type is not None:
            try:
                args = msgspec.convert(req.args, cmd.args_type, str_keys=True)
            except msgspec.ValidationError as exc:
                return self._error(req.id, "bad_args", f"{req.cmd}: {args_message(exc)}")
        ctx = RequestContext(state, self, req, state.api)
        if state.hooks:
            reply: bytes | None = contextvars.copy_context().run(self._run_hooked, cmd, ctx, args)
            return reply
        return self._run(cmd, ctx, args, None)

    def _run_hooked(
        self, cmd: Command, ctx: RequestContext, args: msgspec.Struct | None
    ) -> bytes | None:
        finishers = []
        for hook in self.state.hooks:
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
        args: msgspec.Struct | None,
        finish: Finish | None,
    ) -> bytes | None:
        rid = ctx.request.id
        try:
            result = cmd.handler(ctx, args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error response
            return self._failure(rid, cmd, exc, finish)
        if cmd.is_async:
            task = asyncio.get_running_loop().create_task(result)
            self.tasks.add(task)
            state = self.state
            # reads are capped server-wide; an admin's act/tick/reload (which may take the
            # actuator's whole timeout) neither counts nor waits behind a flood of reads
            capped = cmd.role != "admin"
            if capped:
                state.async_started()
            task.add_done_callback(lambda t: self._done(t, cmd, rid, finish, capped))
            if len(self.tasks) >= MAX_IN_FLIGHT:
                self.block("in_flight")
            if capped and not state.async_room():
                # the server-wide cap: this connection reads on when a place frees up
                self.block("async")
                state.wait_async(self)
            return None
        return self._result(rid, result, finish)

    def _done(
        self,
        task: asyncio.Task[object],
        cmd: Command,
        rid: int | str,
        finish: Finish | None,
        capped: bool,
    ) -> None:
        start = time.perf_counter()
        try:
            self._finish(task, cmd, rid, finish)
        finally:
            self.state.charge(time.perf_counter() - start)
            if capped:
                self.state.async_done()

    def _finish(
        self,
        task: asyncio.Task[object],
        cmd: Command,
        rid: int | str,
        finish: Finish | None,
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

    def _result(self, rid: int | str, result: object, finish: Finish | None) -> bytes:
        try:
            frame = encode_frame(Response(id=rid, result=result))
        except (TypeError, msgspec.EncodeError) as exc:
            log.error("control: cannot encode a result: %s", exc)
            frame = self._error(rid, "internal", f"cannot encode the result: {exc}")
            code: ErrorCode | None = "internal"
        else:
            code = None
            if len(frame) - HEADER.size > self.state.max_frame:
                frame = self._error(
                    rid,
                    "too_large",
                    f"the result is {len(frame)} bytes, over the frame limit of "
                    f"{self.state.max_frame}; ask for less (e.g. --limit)",
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
        finish: Finish | None,
    ) -> bytes:
        code, message, details = failure_reply(cmd.name, exc)
        if finish is not None:
            finish(code)
        return self._error(rid, code, message, details)

    def _error(
        self,
        rid: int | str | None,
        code: ErrorCode,
        message: str,
        details: list[str] | None = None,
    ) -> bytes:
        self.state.errors[code] += 1
        return error_frame(rid, code, message, details)

    def _bad_request(self, body: bytes, exc: Exception) -> bytes:
        rid, message = bad_request_reply(body, exc)
        return self._error(rid, "bad_request", message)

    # -- watch -------------------------------------------------------------------------------
    def add_watch(self, rid: int | str, kinds: frozenset[str]) -> None:
        self.watches[rid] = kinds
        self.state.watchers.add(self)
        if self.transport is not None:
            # events wait in our own bounded queue (watch_buffer), not in a large transport one
            self.transport.set_write_buffer_limits(high=WATCH_HIGH_WATER)

    def send_event(self, kind: EventKind, raw: msgspec.Raw) -> None:
        if self.closed or self.transport is None:
            return
        for rid, kinds in self.watches.items():
            if kind not in kinds:
                continue
            frame = encode_frame(Event(id=rid, event=kind, data=raw))
            if not self._write_paused:
                self.transport.write(frame)
                continue
            self._pending_events.append(frame)
            if len(self._pending_events) > self.state.config.watch_buffer:
                self._drop_watcher()
                return

    def _drop_watcher(self) -> None:
        state = self.state
        state.watch_dropped += 1
        log.warning(
            "control: dropped a watch client (pid %d, uid %d): it stopped reading and "
            "%d events are waiting",
            self.peer.pid,
            self.peer.uid,
            len(self._pending_events),
        )
        self._pending_events.clear()
        state.watchers.discard(self)
        self.watches.clear()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
