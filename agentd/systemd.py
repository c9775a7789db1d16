"""systemd integration written directly against the protocols, no libsystemd.

- ``Notifier``: the sd_notify protocol, one ``KEY=VALUE`` line per field in a datagram to the
  ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
  namespace). Sending never blocks and never raises: a lost notification is logged once.
- ``ServiceNotifier``: what agentd tells systemd over one run. ``READY=1`` once the first tick
  ran (the daemon starts it after the control socket listens), ``STATUS=`` lines with the tick
  count and lateness, ``RELOADING=1``/``READY=1`` around a reload, ``STOPPING=1``, and
  ``WATCHDOG=1`` pings at half of ``$WATCHDOG_USEC`` that come from the perception loop's own
  progress: a loop that hangs (while the process and the control plane stay alive) stops the
  pings and gets the service restarted.

Socket activation (``$LISTEN_FDS``) is the control plane's: ``agentd.control.server``.

A one-file PyInstaller build runs as two processes: the bootloader (systemd's main PID) and the
Python child that sends these messages, so the unit needs ``NotifyAccess=all``; the frozen
child's runtime hook hands ``$WATCHDOG_PID``/``$LISTEN_PID`` over from the bootloader to it.
It never sends ``MAINPID=``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from agentd.model import ActionResult, TickReport, TickStats

__all__ = [
    "LoopView",
    "Notifier",
    "ServiceNotifier",
    "notify_address",
    "service_notifier",
    "watchdog_period",
]

log = logging.getLogger("agentd.systemd")

#: how often STATUS= is refreshed from the loop's progress (seconds)
STATUS_EVERY: Final = 10.0
#: systemd caps a notification datagram far above this; we keep STATUS lines short
_MAX_STATUS: Final = 200


def notify_address(value: str | None) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` for the
    abstract namespace (returned with a leading NUL). None when unset or unsupported."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock:... and relative paths are not for a local daemon


def _for_us(environ: Mapping[str, str], var: str) -> bool:
    """Whether ``$WATCHDOG_PID``-style variables name this process (or name none). In a
    one-file frozen build the runtime hook (packaging/pyi_rth_agentd.py) has already renamed
    the bootloader's PID to ours."""
    value = environ.get(var)
    if value is None:
        return True
    try:
        return int(value) == os.getpid()
    except ValueError:
        return False


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, if the watchdog is enabled for this process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0 or not _for_us(env, "WATCHDOG_PID"):
        return None
    return usec / 1e6


class Notifier:
    """Sends sd_notify datagrams to one address. Disabled (every call a no-op) without one."""

    __slots__ = ("_failed", "_sock", "address")

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` names. With ``unset`` the variables are removed so
        that programs agentd starts do not talk to systemd in its name."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = notify_address(raw)
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%s: unsupported address; not notifying systemd", raw)
        if unset:
            env.pop("NOTIFY_SOCKET", None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram. Returns whether it was sent."""
        if self.address is None or not fields:
            return False
        data = ("\n".join(fields) + "\n").encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify systemd at %s: %s (further failures not logged)",
                    self.address.replace("\0", "@"),
                    exc.strerror or exc,
                )
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class LoopView(Protocol):
    """What ServiceNotifier reads from the perception loop."""

    @property
    def paused(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def next_deadline(self) -> float | None: ...

    def stats(self) -> TickStats: ...


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class ServiceNotifier:
    """READY, STATUS, RELOADING, STOPPING and the loop-driven watchdog for one daemon run.

    Watchdog rule: ``WATCHDOG=1`` goes out at most every half period (``$WATCHDOG_USEC / 2``),
    from the progress hook when a tick finishes, or from a check every quarter period while
    the loop is *healthy*: paused by an operator, sleeping towards a deadline still ahead, or
    inside a tick that started less than half a period ago. A tick stuck for longer stops the
    pings, and systemd restarts the service one watchdog period later.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        watchdog: float | None = None,
        describe: Callable[[], str] | None = None,
    ) -> None:
        self.notifier = notifier
        #: the loop it watches: given to `run` (the loop is built with this as an observer)
        self.loop: LoopView | None = None
        self.watchdog = watchdog
        self.describe = describe
        self.pings = 0
        self._ping_every = watchdog / 2 if watchdog else 0.0
        self._last_ping = time.monotonic()
        self._last_status = 0.0
        self._started = time.monotonic()
        self._first_tick = asyncio.Event()
        self._ready = False
        self._stopping = False
        self._reloads = 0

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    # -- lifecycle messages ------------------------------------------------------------------
    async def run(self, loop: LoopView) -> None:
        """Send READY=1 after ``loop``'s first tick (it must have this notifier among its
        observers), then keep the watchdog fed while healthy. Start it once the control
        socket listens; cancel it at shutdown."""
        self.loop = loop
        keeper = asyncio.create_task(self._keep_watchdog(), name="systemd-watchdog")
        try:
            await asyncio.sleep(0)  # let the loop task set its first deadline
            self._extend_start_timeout()
            await self._first_tick.wait()
            self._ready = True
            if not self._stopping:
                self.notifier.send("READY=1", self._status("ready"))
            await keeper
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    def reloading(self) -> None:
        self._reloads += 1
        if self._reloads == 1 and not self._stopping:
            self.notifier.send(
                "RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", "STATUS=reloading"
            )

    def reloaded(self, errors: list[str], generation: int) -> None:
        self._reloads = max(0, self._reloads - 1)
        if self._reloads or self._stopping:
            return
        if errors:
            what = f"reload refused ({errors[0][:120]}); running the previous config"
        else:
            what = f"reloaded (generation {generation})"
        fields = ["READY=1", self._status(what)] if self._ready else [f"STATUS={what}"]
        self.notifier.send(*fields)

    def stopping(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.notifier.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        self.notifier.close()

    # -- progress and the watchdog -----------------------------------------------------------
    def on_late_result(self, result: ActionResult) -> None:
        """A `TickObserver`: late action results are no news of the loop's progress."""
        del result

    def on_tick(self, report: TickReport) -> None:
        """A `TickObserver`: called by the loop after every tick."""
        del report
        self._first_tick.set()
        if self._stopping:
            return
        now = time.monotonic()
        fields = []
        if self.watchdog and now - self._last_ping >= self._ping_every:
            self._last_ping = now
            self.pings += 1
            fields.append("WATCHDOG=1")
        if self._ready and now - self._last_status >= STATUS_EVERY:
            fields.append(self._status("running"))
        if fields:
            self.notifier.send(*fields)

    def healthy(self, now: float | None = None) -> bool:
        """Whether the loop is making progress (see the class docstring)."""
        loop = self.loop
        if self._stopping or (loop is not None and loop.stopping):
            return False
        if loop is not None and loop.paused:
            return True
        now = time.monotonic() if now is None else now
        grace = self._ping_every or STATUS_EVERY
        deadline = loop.next_deadline if loop is not None else None
        if deadline is None:  # the loop task has not set its first deadline yet
            return now - self._started < grace
        return now < deadline + grace

    async def _keep_watchdog(self) -> None:
        if not self.watchdog:
            return
        check = self.watchdog / 4
        while True:
            await asyncio.sleep(check)
            now = time.monotonic()
            if now - self._last_ping >= self._ping_every and self.healthy(now):
                self._last_ping = now
                self.pings += 1
                fields = ["WATCHDOG=1"]
                if (
                    self._ready
                    and self.loop is not None
                    and self.loop.paused
                    and now - self._last_status >= STATUS_EVERY
                ):
                    fields.append(self._status("paused"))
                self.notifier.send(*fields)

    def _extend_start_timeout(self) -> None:
        """READY waits for the first tick: if that is far off (a long, aligned interval), ask
        systemd for the extra start-up time instead of failing the start."""
        deadline = self.loop.next_deadline if self.loop is not None else None
        if deadline is None:
            return
        wait = deadline - time.monotonic()
        if wait > 5.0:
            self.notifier.send(f"EXTEND_TIMEOUT_USEC={int((wait + 30.0) * 1e6)}")

    def _status(self, state: str) -> str:
        self._last_status = time.monotonic()
        if self.loop is None:
            return f"STATUS={state}"
        s = self.loop.stats()
        text = (
            f"{state}: {s.ticks} ticks, lateness p50 {s.lateness_p50 * 1e3:.2f} ms "
            f"p99 {s.lateness_p99 * 1e3:.2f} ms, {s.overruns} overruns"
        )
        if self.describe is not None:
            text += f", {self.describe()}"
        return "STATUS=" + text.replace("\n", " ")[:_MAX_STATUS]


def service_notifier(describe: Callable[[], str] | None = None) -> ServiceNotifier | None:
    """A `ServiceNotifier` from the environment systemd gave us (``$NOTIFY_SOCKET``,
    ``$WATCHDOG_USEC``), or None outside a Type=notify unit. The watchdog variables are
    removed from the environment either way: they are not for the programs plugins start."""
    notifier = Notifier.from_environ()
    watchdog = watchdog_period()
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(var, None)
    if not notifier.enabled:
        return None
    if watchdog:  # the daemon's own line, as it always was
        logging.getLogger("agentd").info(
            "systemd watchdog: %gs, fed while the perception loop makes progress", watchdog
        )
    return ServiceNotifier(notifier, watchdog=watchdog, describe=describe)
