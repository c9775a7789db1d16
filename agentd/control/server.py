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
import grp
import logging
import os
import socket
import stat
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from agentd.control.connection import (
    FRAMES_PER_TURN,
    MAX_IN_FLIGHT,
    ROLE_RANK,
    Command,
    CommandError,
    Connection,
    Peer,
    RequestContext,
    RequestHook,
    Role,
)
from agentd.control.protocol import PROTOCOL_VERSION
from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config import ControlConfig
    from agentd.facade import DaemonFacade

__all__ = [
    "FRAMES_PER_ITERATION",
    "FRAMES_PER_TURN",
    "MAX_IN_FLIGHT",
    "PROTOCOL_VERSION",
    "ROLE_RANK",
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

#: frames handled by all connections together between two turns of the loop's ready queue
FRAMES_PER_ITERATION: Final = 256
#: the tick guard: stop reading this long before a deadline (adapts between the bounds)
GUARD_MIN: Final = 0.002
GUARD_MAX: Final = 0.006
#: never hold clients longer than this past a deadline (or half the interval)
MAX_HOLD: Final = 0.05
LISTEN_BACKLOG: Final = 128
SD_LISTEN_FDS_START: Final = 3
_encoder = msgspec.msgpack.Encoder()


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
