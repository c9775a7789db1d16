"""`ControlServer`: the control protocol on a Unix socket.

- The socket is bound, given its mode and group, and only then listened on, so nobody can
  connect through a window with the wrong permissions. A stale socket (nobody listening) is
  removed; a live one is refused. Under systemd socket activation (``LISTEN_FDS``) the passed
  socket is used as it is.
- Each peer's role comes from ``SO_PEERCRED``: root and the daemon's own user are ``admin``,
  members of the socket's group ``read``, anyone else ``none`` (ping and hello only).
- Bounds: connections (with places kept for admins: a client holding all it may cannot lock
  root out; the refused get a `busy` error frame), frame size, a frame deadline (a frame
  dripping in a byte at a time is closed), requests in flight per connection and async ones
  server-wide, the control plane's time per loop turn (measured, shared fairly between
  connections: state.py), write back-pressure (a peer that does not read its answers is not
  read from), an idle timeout, and a bounded buffer per watcher (a slow one is dropped).
- The ticker comes first: shortly before the perception loop's next deadline the server stops
  reading from clients and resumes once the tick has run (at most MAX_HOLD past the deadline),
  so control traffic can neither make a tick late nor stretch it. The guard adapts to how late
  its own timer fires (a busy loop needs more room).
- Bad input is answered with an error (or, for framing errors, the connection is closed) and
  counted; it never reaches the loop or other clients.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from agentd.control.commands import Command, RequestHook
from agentd.control.connection import FRAME_DEADLINE, Connection
from agentd.control.protocol import EventKind
from agentd.control.state import ServerState
from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config import ControlConfig
    from agentd.control.api import ControlApi

__all__ = ["ControlServer", "activated_socket"]

log = logging.getLogger("agentd.control")

#: the tick guard: stop reading this long before a deadline (adapts between the bounds)
GUARD_MIN: Final = 0.002
GUARD_MAX: Final = 0.006
#: never hold clients longer than this past a deadline (or half the interval)
MAX_HOLD: Final = 0.05
LISTEN_BACKLOG: Final = 128
SD_LISTEN_FDS_START: Final = 3
_encoder = msgspec.msgpack.Encoder()


class ControlServer:
    def __init__(
        self,
        api: ControlApi,
        config: ControlConfig,
        path: Path,
        commands: Mapping[str, Command] | None = None,
        *,
        hooks: Sequence[RequestHook] = (),
    ) -> None:
        if commands is None:
            from agentd.control.handlers import COMMANDS

            commands = COMMANDS
        self.api = api
        self.config = config
        self.path = path
        #: shared with every connection (they never see the server)
        self.state = ServerState(api, config, commands)
        #: run around every request (telemetry's span per request), given at construction
        self.state.hooks.extend(hooks)
        self.state.guard = GUARD_MIN
        self.state.on_admit = self._admitted
        self.activated = False
        self._late = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._arm_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- extension points --------------------------------------------------------------------
    def add_command(self, command: Command) -> None:
        self.state.commands[command.name] = command

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
        state = self.state
        try:
            state.socket_gid = os.stat(self.path).st_gid
        except OSError:
            state.socket_gid = os.getegid()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: Connection(state), sock=sock, backlog=LISTEN_BACKLOG
        )
        self._unsubscribe = self.api.subscribe(self._on_event)
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
        if self.state.closing:
            return
        self.state.closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for handle in (self._arm_handle, self._sweeper):
            if handle is not None:
                handle.cancel()
        if self._server is not None:
            self._server.close()
        conns = list(self.state.connections)
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

    # -- the tick guard ----------------------------------------------------------------------
    def arm(self) -> None:
        """Schedule the next hold ahead of the loop's next deadline."""
        if self._arm_handle is not None:
            self._arm_handle.cancel()
            self._arm_handle = None
        state = self.state
        if state.closing or state.holding or not state.connections:
            return
        loop = asyncio.get_running_loop()
        deadline = self.api.next_deadline()
        now = time.monotonic()
        if deadline is None:
            # paused or not started yet: look again soon
            self._arm_handle = loop.call_later(0.25, self.arm)
            return
        guard = min(state.guard, self.api.interval() / 4)
        start = deadline - guard
        if start <= now:
            self._hold(deadline, min(start, now))
        else:
            self._arm_handle = loop.call_later(start - now, self._hold, deadline, start)

    def _hold(self, deadline: float, planned: float) -> None:
        self._arm_handle = None
        state = self.state
        if state.closing or self.api.next_deadline() != deadline:
            self.arm()
            return
        now = time.monotonic()
        # how late this timer fired says how long one busy loop iteration is: keep a decaying
        # maximum and give the guard twice that, within bounds
        self._late = max(now - planned, self._late * 0.9)
        state.guard = min(GUARD_MAX, max(GUARD_MIN, 2 * self._late + 0.0005))
        state.holding = True
        state.tick_holds += 1
        for conn in state.connections:
            conn.block("hold")
        # released when the tick has run (its event), at the latest max_hold past the deadline
        # (a tick that waits on a slow plugin must not starve the control plane)
        max_hold = min(MAX_HOLD, self.api.interval() / 2)
        self._arm_handle = asyncio.get_running_loop().call_later(
            max(0.0, deadline + max_hold - now), self._release
        )

    def _release(self) -> None:
        if self._arm_handle is not None:
            self._arm_handle.cancel()
        self._arm_handle = None
        self.state.holding = False
        for conn in list(self.state.connections):
            conn.unblock("hold")
        # the next tick's event re-arms; this is the fallback when none comes
        if not self.state.closing:
            self._arm_handle = asyncio.get_running_loop().call_later(0.25, self.arm)

    # -- events (watch) ----------------------------------------------------------------------
    def _on_event(self, kind: EventKind, data: msgspec.Struct) -> None:
        state = self.state
        if kind == "tick" and not state.closing:
            # the tick is done: let clients in, and plan the hold for the next one
            if state.holding:
                self._release()
            if state.connections or self._arm_handle is not None:
                # with no client there is nothing to hold (arm would only return): no
                # extra loop turn each tick (issue #18)
                asyncio.get_running_loop().call_soon(self.arm)
        if not state.watchers:
            return
        raw = msgspec.Raw(_encoder.encode(data))
        for conn in list(state.watchers):
            conn.send_event(kind, raw)

    # -- idle connections --------------------------------------------------------------------
    def _schedule_sweep(self) -> None:
        every = min(FRAME_DEADLINE / 4, max(0.5, self.config.idle_timeout / 4))
        self._sweeper = asyncio.get_running_loop().call_later(every, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        limit = now - self.config.idle_timeout
        for conn in list(self.state.connections):
            if conn.frame_overdue(now):
                # a byte every few seconds keeps it from being idle, not from being slow
                self.state.errors["frame_deadline"] += 1
                log.info(
                    "control: closed a connection (pid %d, uid %d): a frame took over %gs",
                    conn.peer.pid,
                    conn.peer.uid,
                    FRAME_DEADLINE,
                )
                conn.close_overdue()
            elif conn.last_active < limit and not conn.watches and not conn.tasks:
                self.state.idle_closed += 1
                conn.close()
        self._schedule_sweep()

    # -- connection bookkeeping --------------------------------------------------------------
    def _admitted(self, conn: Connection) -> None:
        if self.state.holding:
            conn.block("hold")
        elif self._arm_handle is None:
            self.arm()


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
