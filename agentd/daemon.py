"""`Daemon`: owns the rooms, runs ``startup -> run -> shutdown``, handles signals and reloads.

Shutdown is the mirror of startup, in named stages with named timeouts (their sum must stay
below the systemd unit's ``TimeoutStopSec``; a test checks it). Signal handlers only schedule
work: the first SIGTERM/SIGINT asks for a graceful stop, a second one cuts the stage in
progress and gives each remaining one at most ``FORCED_STAGE_TIMEOUT``; the handlers that were
there before are put back at exit. Plugins are the `PluginSupervisor`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final

from agentd import __version__
from agentd.assembly import build_control, build_loop, build_telemetry
from agentd.config import Config, load, resolve_runtime_dir, resolve_state_dir
from agentd.errors import AgentdError, ConfigError
from agentd.fanout import TickFanout
from agentd.journaling import EventLog
from agentd.lifecycle import (
    DUPLICATE_SIGNAL_WINDOW,
    FINISH_TICK_TIMEOUT,
    FLUSH_STORE_TIMEOUT,
    FLUSH_UPLINK_TIMEOUT,
    MAX_DRAIN_TIMEOUT,
    SHUTDOWN_STAGES,
    STOP_CONTROL_TIMEOUT,
    STOP_PLUGINS_TIMEOUT,
    STOP_TELEMETRY_TIMEOUT,
    DaemonOptions,
    DaemonState,
    abandon_stuck_threads,
    loop_settings,
    run_stage,
)
from agentd.lock import InstanceLock
from agentd.loop import PerceptionLoop
from agentd.model import UplinkStatus
from agentd.paths import check_private_dir
from agentd.plugins.capabilities import Grants
from agentd.plugins.executor import PluginExecutor
from agentd.plugins.handle import PluginHandle
from agentd.plugins.registry import Registry, default_registry
from agentd.plugins.supervisor import PluginSupervisor
from agentd.plugins.transport import UplinkRunner
from agentd.stats import heartbeat
from agentd.store import Store
from agentd.systemd import ServiceNotifier, service_notifier

if TYPE_CHECKING:
    from agentd.control.server import ControlServer
    from agentd.fleet import FleetCommands
    from agentd.telemetry import Telemetry
    from agentd.uplinking import Uplinks

__all__ = [
    "DUPLICATE_SIGNAL_WINDOW",
    "SHUTDOWN_STAGES",
    "STOP_PLUGINS_TIMEOUT",
    "Daemon",
    "DaemonOptions",
    "DaemonState",
    "loop_settings",
    "run_daemon",
]

log = logging.getLogger("agentd")
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Daemon:
    """One agentd process. ``await Daemon(config, options).serve()`` returns the exit code."""

    def __init__(
        self,
        config: Config,
        options: DaemonOptions | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config
        self.options = options or DaemonOptions()
        self.registry = registry or default_registry(config.plugins.blocked)
        self.state = DaemonState.NOT_RUNNING
        self.state_dir = resolve_state_dir(config, self.options.state_dir)
        self.runtime_dir = resolve_runtime_dir(config, self.options.runtime_dir)
        self.lock = InstanceLock(self.runtime_dir / "agentd.lock")
        self.reload_generation = 0
        self.started_at = 0.0
        self.started_mono = 0.0
        self.exit_code = 0
        self._grants = Grants()  # what a plugin's ``requires`` gets (never the daemon)
        #: agentd's own state changes, into the events journal once the store is open
        self.events = EventLog()
        #: the configured plugins: built, started, retried, rebuilt on reload, stopped
        self.supervisor = PluginSupervisor(
            self.registry,
            capabilities=self._grants,
            prepare=self._prepare_plugin,
            events=self.events,
        )
        self.loop: PerceptionLoop | None = None
        #: the loop's observer that watchers (`agentctl watch`) subscribe to while it runs
        self.fanout = TickFanout()
        #: the local database (agentd/store/); None when [store] enabled = false
        self.store: Store | None = None
        #: the uplink engines (agentd/uplinking.py); None until the first uplink starts
        self.uplinks: Uplinks | None = None
        self.fleet: FleetCommands | None = None  # the fleet's commands (agentd/fleet.py)
        #: the control plane (agentd/control/server.py); None when [control] enabled = false
        self.control: ControlServer | None = None
        #: agentd/telemetry/; None when [telemetry] enabled = false
        self.telemetry: Telemetry | None = None
        self.systemd: ServiceNotifier | None = None
        #: every plugin thread call (asyncio.to_thread) runs here: bounded, tagged by plugin,
        #: and a thread stuck in the kernel never holds up the exit
        self.executor = PluginExecutor()
        self._loop_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        #: set by a second SIGTERM/SIGINT: the shutdown stage in progress is cut short
        self._force_event = asyncio.Event()
        self._force = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_signal_at = 0.0
        #: the handlers our own replaced, restored at exit
        self._previous_handlers: dict[signal.Signals, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    async def serve(self) -> int:
        """startup -> run -> shutdown. Returns the process exit code."""
        try:
            await self.startup()
        except AgentdError as exc:
            log.error("cannot start: %s", exc)
            await self.shutdown()
            return 1
        await self.main_loop()
        await self.shutdown()
        return self.exit_code

    async def startup(self) -> None:
        if self.state is not DaemonState.NOT_RUNNING:
            raise RuntimeError(f"cannot start a daemon that is {self.state.value}")
        self.state = DaemonState.STARTING
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        for directory, what in ((self.runtime_dir, "runtime"), (self.state_dir, "state")):
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            except OSError as exc:
                raise AgentdError(f"cannot create {directory}: {exc.strerror}") from None
            check_private_dir(directory, what)
        self.lock.acquire()
        asyncio.get_running_loop().set_default_executor(self.executor)
        self._install_signal_handlers()
        await self._open_store()
        for problem in self.registry.problems:
            log.warning("plugin skipped: %s", problem)
        await self.supervisor.start_all(self.config)
        self.telemetry = build_telemetry(self.config, self.state_dir)
        # READY=1 after the first tick, a watchdog fed from the loop's progress
        self.systemd = service_notifier(lambda: f"plugins {self.supervisor.summary()}")
        self.loop = loop = build_loop(self)
        if self.telemetry is not None:
            self.telemetry.observe(loop, self.supervisor.all, self.store, self.uplink_states)
        if self.store is not None:
            from agentd.journaling import sweep_sessions

            sweep = sweep_sessions(self.store, lambda: self.config.store.sweep_interval)
            self.spawn(sweep, name="session-sweep")
        self.supervisor.start_retries(self._join)
        self._loop_task = asyncio.create_task(loop.run(), name="perception-loop")
        self._loop_task.add_done_callback(self._loop_done)
        await self._start_uplinks(strict=True)
        await self._start_control()
        self._start_heartbeat()
        self.state = DaemonState.RUNNING
        c = self.config
        log.info(
            "agentd %s started (pid %d): %d sensors, %d policies, %d actuators, interval %gs, "
            "config %s, state %s",
            __version__,
            os.getpid(),
            len(c.sensors),
            len(c.policies),
            len(c.actuators),
            c.agent.interval,
            c.source,
            self.state_dir,
        )
        started = {"version": __version__, "pid": os.getpid(), "config": c.source}
        self.events.journal_event("agentd.started", started)
        if self.systemd is not None:
            self.spawn(self.systemd.run(loop), name="systemd-notify")

    async def main_loop(self) -> None:
        await self._stop.wait()

    def request_stop(self, exit_code: int = 0) -> None:
        if self.exit_code == 0:
            self.exit_code = exit_code
        self._stop.set()

    async def shutdown(self) -> None:
        if self.state in (DaemonState.STOPPING, DaemonState.STOPPED):
            return
        self.state = DaemonState.STOPPING
        log.info("stopping")
        if self.systemd is not None:
            self.systemd.stopping()
        # before the uplinks' last send, so the fleet hears it
        self.events.journal_event("agentd.stopping", {"exit_code": self.exit_code})
        await self._stage("stop_control", STOP_CONTROL_TIMEOUT, self._stop_control())
        if self.loop is not None and self._loop_task is not None:
            self.loop.stop()
            await self._stage("finish_tick", FINISH_TICK_TIMEOUT, self._loop_task)
            drain = min(self.config.agent.drain_timeout, MAX_DRAIN_TIMEOUT)
            cancelled = await self.loop.actions.drain(0 if self._force else drain)
            if cancelled:
                log.warning(
                    "drain_actions: cancelled %d actions still running after %gs", cancelled, drain
                )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stage("flush_uplink", FLUSH_UPLINK_TIMEOUT, self._flush_uplink())
        # the supervisor names the plugins still stopping when its budget (or a second
        # signal) runs out, a little before the stage's own timeout
        budget = STOP_PLUGINS_TIMEOUT * 0.9
        await self._stage("stop_plugins", STOP_PLUGINS_TIMEOUT, self.supervisor.stop_all(budget))
        await self._stage("flush_store", FLUSH_STORE_TIMEOUT, self._close_store())
        await self._stage("stop_telemetry", STOP_TELEMETRY_TIMEOUT, self._stop_telemetry())
        self._remove_signal_handlers()
        abandon_stuck_threads(self.executor)
        self.lock.release()
        self.state = DaemonState.STOPPED
        log.info("stopped")

    async def _stage(self, name: str, timeout: float, aw: Awaitable[Any]) -> None:
        await run_stage(name, timeout, aw, self._force_event, forced=self._force)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.state is not DaemonState.RUNNING:
            return
        exc = task.exception()
        if exc is not None:
            log.error("the perception loop crashed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            self.request_stop(1)

    # -- signals -----------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            self._previous_handlers[sig] = signal.getsignal(sig)
        loop.add_signal_handler(signal.SIGTERM, self.handle_exit, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self.handle_exit, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_reload)

    def _remove_signal_handlers(self) -> None:
        """Put back what was there before (asyncio alone would leave SIG_DFL)."""
        loop = asyncio.get_running_loop()
        for sig, previous in self._previous_handlers.items():
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: not installed from Python, nothing to restore
                signal.signal(sig, previous)
        self._previous_handlers.clear()

    def handle_exit(self, sig: signal.Signals) -> None:
        now = time.monotonic()
        if now - self._stop_signal_at < DUPLICATE_SIGNAL_WINDOW:
            # one stop request delivered twice: systemd signalled both the one-file
            # bootloader (which forwards it) and us (KillMode=control-group)
            log.debug(
                "received %s again within %gs: same stop request", sig.name, DUPLICATE_SIGNAL_WINDOW
            )
            return
        if self._stop.is_set() or self.state is DaemonState.STOPPING:
            log.warning("received %s again: forcing exit", sig.name)
            self._force = True
            self._force_event.set()
            self.exit_code = 1
            if self.loop is not None:
                for task in list(self.loop.actions.in_flight):
                    task.cancel()
            return
        log.info("received %s: stopping gracefully", sig.name)
        self._stop_signal_at = now
        self.request_stop(0)

    def _spawn_reload(self) -> None:
        log.info("received SIGHUP: reloading %s", self.options.config_path or "the default config")
        self.spawn(self.reload(), name="reload")

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run a background task owned by the daemon (cancelled at shutdown)."""
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what plugins get ----------------------------------------------------------------------
    async def _prepare_plugin(self, handle: PluginHandle) -> None:
        """A policy's memory comes back from the store before it decides anything."""
        if self.store is not None:
            from agentd.journaling import restore_policy_state

            await restore_policy_state(self.store, handle)

    # -- reload ------------------------------------------------------------------------------
    async def reload(self, path: str | None = None) -> list[str]:
        """Reload (see ``_reload_config``), telling systemd RELOADING=1 before and READY=1
        after, so ``systemctl reload`` waits for the outcome."""
        if self.systemd is not None:
            self.systemd.reloading()
        errors: list[str] = ["reload failed"]
        try:
            errors = await self._reload_config(path)
            return errors
        finally:
            if self.systemd is not None:
                self.systemd.reloaded(errors, self.reload_generation)

    async def _reload_config(self, path: str | None = None) -> list[str]:
        """Re-read the config (SIGHUP, `agentctl reload`). Returns the validation errors; an
        invalid config is logged in one line and the daemon keeps running on the old one. A
        valid one rebuilds only the plugins whose settings changed and keeps the tick phase
        and all state."""
        async with self.supervisor.lock:
            source = path or self.options.config_path
            try:
                new = load(source, self.registry)
                self.config.check_reloadable(new)
            except ConfigError as exc:
                return self._refused(exc.errors, str(exc))
            assert self.loop is not None
            sup = self.supervisor
            try:
                plan = await sup.rebuild(new)
            except AgentdError as exc:
                return self._refused([str(exc)], str(exc))
            retired = sup.commit(plan)
            old_interval = self.config.agent.interval
            self.loop.reconfigure(
                loop_settings(new), sup.sensors(), sup.policies(), sup.actuators()
            )
            self.config = new
            self.reload_generation += 1
            sup.start_retries(self._join)
            # a changed [uplinks.NAME]: its engine restarts on the rebuilt transport before the
            # old transport is stopped (cursors are durable: nothing is lost, at worst resent)
            await self._start_uplinks()
            await sup.stop_all(STOP_PLUGINS_TIMEOUT, retired)
            log.info(
                "reloaded %s (generation %d): interval %gs%s, %d plugins rebuilt",
                new.source,
                self.reload_generation,
                new.agent.interval,
                f" (was {old_interval:g}s)" if old_interval != new.agent.interval else "",
                len(retired),
            )
            rebuilt = {"generation": self.reload_generation, "rebuilt": [h.name for h in retired]}
            self.events.journal_event("agentd.reloaded", rebuilt)
            return []

    def _refused(self, errors: list[str], message: str) -> list[str]:
        log.error("reload refused, still running the previous config: %s", message)
        self.events.journal_event("agentd.reload_refused", {"errors": errors})
        return errors

    # -- telemetry (agentd/telemetry/, agentd/health.py) ---------------------------------------
    async def _stop_telemetry(self) -> None:
        telemetry, self.telemetry = self.telemetry, None
        if telemetry is not None:
            await asyncio.to_thread(telemetry.shutdown, STOP_TELEMETRY_TIMEOUT * 0.9)

    # -- the control plane (agentd/control/) ------------------------------------------------
    async def _start_control(self) -> None:
        """Listen on the control socket (after the loop exists: the API reads it)."""
        self.control = build_control(self)
        if self.control is not None:
            await self.control.start()

    async def _stop_control(self) -> None:
        """First stage of shutdown: stop accepting requests, answer those in flight."""
        if self.control is not None:
            await self.control.stop(STOP_CONTROL_TIMEOUT * 0.9)

    # -- the store (agentd/store/) ------------------------------------------------------------
    async def _open_store(self) -> None:
        """Open the database before any plugin is built (policy memory lives there). A newer
        schema refuses the start; a corrupt file is replaced and an unwritable disk leaves the
        store degraded, each logged in one line by the store."""
        c = self.config.store
        if c.enabled:
            self.store = Store(self.state_dir / c.path, c)
            await self.store.open()
            self._grants.use_store(self.store.sessions)
            self.events.use_store(self.store)

    # -- the uplinks (agentd/uplinking.py, agentd/uplink/) ---------------------------------
    async def _start_uplinks(self, strict: bool = False) -> None:
        """Engines for the running uplink transports; after a reload, the changed restart."""
        if self.store is None or (self.uplinks is None and not self.supervisor.uplinks()):
            return
        if self.uplinks is None:
            from agentd.fleet import FleetCommands
            from agentd.uplinking import Uplinks

            self.fleet = FleetCommands(self)  # commands ride an uplink's connection
            self.uplinks = Uplinks(self.store, factory=self.fleet.engine)
            await self.uplinks.start(self.supervisor.uplinks(), strict=strict)
        else:
            await self.uplinks.apply(self.supervisor.uplinks())

    def _join(self, handle: PluginHandle) -> None:
        """A plugin that started late (``retry``): the loop takes it, or the uplinks."""
        assert self.loop is not None
        self.loop.attach(handle)
        if isinstance(handle, UplinkRunner):
            self.spawn(self._start_uplinks(), name=f"uplink-join:{handle.name}")

    def uplink_states(self) -> list[UplinkStatus]:  # for the control plane and telemetry
        return [] if self.uplinks is None else self.uplinks.states()

    async def _flush_uplink(self) -> None:
        """Commit what is queued (the last ticks and agentd.stopping), then let the uplinks
        publish offline and send it within their budget."""
        if self.uplinks is not None and self.store is not None:
            await self.store.flush()
            await self.uplinks.stop(FLUSH_UPLINK_TIMEOUT * 0.9)

    async def _close_store(self) -> None:
        if self.store is not None:
            await self.store.close()

    # -- the operator's view -----------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        if self.config.log.heartbeat <= 0 or self.loop is None:
            return
        every = self.config.log.heartbeat  # a reload to 0 keeps the old period
        period = lambda: self.config.log.heartbeat or every  # noqa: E731
        self.spawn(heartbeat(self.loop.stats, self.supervisor.summary, period), name="heartbeat")

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono if self.started_mono else 0.0


def run_daemon(config: Config, options: DaemonOptions) -> int:
    """Run a Daemon on uvloop until it stops; returns the exit code."""
    import uvloop

    return uvloop.run(Daemon(config, options).serve())
