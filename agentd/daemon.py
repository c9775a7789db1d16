"""`Daemon`: owns the rooms, runs ``startup -> run -> shutdown``, handles signals and reloads.

Shutdown is the mirror of startup, in named stages with named timeouts (their sum must stay
below the systemd unit's ``TimeoutStopSec``; a test checks it). Signal handlers only schedule
work: the first SIGTERM/SIGINT asks for a graceful stop, a second one forces it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from agentd import __version__
from agentd.config import (
    Config,
    PluginInstance,
    load,
    resolve_runtime_dir,
    resolve_state_dir,
)
from agentd.errors import AgentdError, ConfigError, PluginError, StoreError
from agentd.lock import InstanceLock
from agentd.loop import LoopSettings, PerceptionLoop
from agentd.model import PluginStatus, TickReport
from agentd.plugins.base import PolicyState
from agentd.plugins.capabilities import MemorySessions, StoreSessions
from agentd.plugins.handle import PluginHandle, build_handle, kind_of
from agentd.plugins.registry import Registry, default_registry
from agentd.store import Store
from agentd.systemd import Notifier, ServiceNotifier, watchdog_period

__all__ = [
    "SHUTDOWN_STAGES",
    "Daemon",
    "DaemonOptions",
    "DaemonState",
    "run_daemon",
]

log = logging.getLogger("agentd")

# Named shutdown stage timeouts (seconds). Their sum plus the drain timeout's maximum
# (agent.drain_timeout <= 60) must stay below TimeoutStopSec in packaging/systemd.
STOP_CONTROL_TIMEOUT: Final = 2.0
FINISH_TICK_TIMEOUT: Final = 10.0
STOP_PLUGINS_TIMEOUT: Final = 5.0
#: startup_error = "retry": first delay before trying again and the default cap (seconds)
RETRY_START_FIRST: Final = 1.0
RETRY_START_MAX: Final = 300.0
FLUSH_STORE_TIMEOUT: Final = 10.0
#: flushing spans and metrics; an OTLP collector that is down must not hold shutdown longer
STOP_TELEMETRY_TIMEOUT: Final = 5.0
MAX_DRAIN_TIMEOUT: Final = 60.0
#: a second SIGTERM/SIGINT this soon after the first is the same request delivered twice
DUPLICATE_SIGNAL_WINDOW: Final = 0.2
SHUTDOWN_STAGES: Final = {
    "stop_control": STOP_CONTROL_TIMEOUT,
    "finish_tick": FINISH_TICK_TIMEOUT,
    "drain_actions": MAX_DRAIN_TIMEOUT,
    "stop_plugins": STOP_PLUGINS_TIMEOUT,
    "flush_store": FLUSH_STORE_TIMEOUT,
    "stop_telemetry": STOP_TELEMETRY_TIMEOUT,
}


class DaemonState(enum.Enum):
    NOT_RUNNING = "not_running"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    config_path: str | None = None
    state_dir: str | None = None
    runtime_dir: str | None = None


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
        self.loop: PerceptionLoop | None = None
        self.handles: dict[str, dict[str, PluginHandle]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._force = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self.systemd: ServiceNotifier | None = None
        self._stop_signal_at = 0.0
        #: extra startup/shutdown participants (store, control plane, telemetry, systemd)
        self.after_start: list[Callable[[], Any]] = []
        #: the local database (agentd/store/); None when [store] enabled = false
        self.store: Store | None = None
        #: plugins whose start failed under startup_error "skip"/"retry", by (kind, name)
        self.unstarted: dict[tuple[str, str], PluginStatus] = {}
        self._retries: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._deferred: list[PluginInstance] = []
        #: the control plane (agentd/control/server.py); None when [control] enabled = false
        self.control: Any = None
        #: agentd/telemetry.py; None when [telemetry] enabled = false
        self.telemetry: Any = None
        #: sessions for plugins that require them when there is no store (lost at exit)
        self._memory_sessions: MemorySessions | None = None

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
        for directory in (self.runtime_dir, self.state_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            except OSError as exc:
                raise AgentdError(f"cannot create {directory}: {exc.strerror}") from None
        self.lock.acquire()
        self._install_signal_handlers()
        await self._open_store()
        for problem in self.registry.problems:
            log.warning("plugin skipped: %s", problem)
        self.handles = await self._build_all(self.config)
        self.loop = PerceptionLoop(self._settings(self.config), **self._by_kind(self.handles))
        self.loop.progress_hooks.append(self._on_tick)
        await self._attach_store()
        self._start_retries()
        self._start_telemetry()
        self._loop_task = asyncio.create_task(self.loop.run(), name="perception-loop")
        self._loop_task.add_done_callback(self._loop_done)
        await self._start_control()
        self._serve_telemetry()
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
        self._start_systemd()

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
        self._notify_stopping()
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
        await self._stage("stop_plugins", STOP_PLUGINS_TIMEOUT, self._stop_plugins())
        await self._stage("flush_store", FLUSH_STORE_TIMEOUT, self._close_store())
        await self._stage("stop_telemetry", STOP_TELEMETRY_TIMEOUT, self._stop_telemetry())
        self._remove_signal_handlers()
        self.lock.release()
        self.state = DaemonState.STOPPED
        log.info("stopped")

    async def _stage(self, name: str, timeout: float, aw: Any) -> None:
        if self._force:
            timeout = min(timeout, 0.5)
        task = aw if isinstance(aw, asyncio.Future) else asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("%s: still running after %gs; cancelling", name, timeout)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", name, task.exception())

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
        loop.add_signal_handler(signal.SIGTERM, self.handle_exit, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self.handle_exit, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

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

    # -- plugins -----------------------------------------------------------------------------
    async def _build_all(self, config: Config) -> dict[str, dict[str, PluginHandle]]:
        out: dict[str, dict[str, PluginHandle]] = {"sensor": {}, "policy": {}, "actuator": {}}
        for inst in config.instances():
            if inst.enabled:
                handle = await self._build_or_defer(inst)
                if handle is not None:
                    out[handle.kind][inst.name] = handle
        return out

    async def _build(self, inst: PluginInstance) -> PluginHandle:
        spec = self.registry.get(inst.plugin, kind_of(inst))
        handle = build_handle(inst, spec, self._capabilities(spec.requires))
        try:
            async with asyncio.timeout(STOP_PLUGINS_TIMEOUT):
                await handle.start()
        except Exception as exc:
            raise PluginError(
                inst.name, f"failed to start: {type(exc).__name__}: {exc}", handle.spec.origin
            ) from exc
        await self._load_policy_state(handle)
        return handle

    def _capabilities(self, wanted: tuple[str, ...]) -> dict[str, Any]:
        """The narrow handles a plugin asked for in ``PluginSpec.requires`` (never the daemon).
        Sessions go to the store when it is open, else to memory (lost at exit)."""
        out: dict[str, Any] = {}
        if "sessions" in wanted:
            if self.store is not None:
                out["sessions"] = StoreSessions(self.store.sessions)
            else:
                if self._memory_sessions is None:
                    log.warning("no store: the session actuator keeps sessions in memory only")
                    self._memory_sessions = MemorySessions()
                out["sessions"] = self._memory_sessions
        return out

    # -- startup_error = "fail" | "skip" | "retry" -----------------------------------------
    async def _build_or_defer(self, inst: PluginInstance) -> PluginHandle | None:
        """Build and start a plugin. If that fails, its ``startup_error`` decides: ``fail``
        raises (agentd refuses to start, a reload is refused), ``skip`` runs without it
        (reported `disabled`), ``retry`` runs without it and keeps trying in the background."""
        try:
            return await self._build(inst)
        except PluginError as exc:
            policy = inst.common.startup_error
            if policy == "fail":
                raise
            kind = kind_of(inst)
            self.unstarted[kind, inst.name] = PluginStatus(
                name=inst.name,
                plugin=inst.plugin,
                kind=kind,
                state="disabled" if policy == "skip" else "starting",
                errors=1,
                consecutive_failures=1,
                last_error=str(exc),
            )
            if policy == "retry":
                self._deferred.append(inst)
            then = "running without it" if policy == "skip" else "retrying in background"
            log.error("%s; %s", exc, then)
            return None

    def _start_retries(self) -> None:
        for inst in self._deferred:
            key = (kind_of(inst), inst.name)
            self._retries[key] = self.spawn(self._retry_start(inst), name=f"start:{inst.name}")
        self._deferred = []

    def _cancel_retries(self) -> None:
        for task in self._retries.values():
            task.cancel()
        self._retries.clear()

    async def _retry_start(self, inst: PluginInstance) -> None:
        """Try to start ``inst`` again with exponential backoff and jitter (1 s doubling up
        to ``max_interval``, default 5 min); once it starts it joins the loop."""
        kind = kind_of(inst)
        key = (kind, inst.name)
        cap = inst.common.max_interval or RETRY_START_MAX
        delay = min(RETRY_START_FIRST, cap)
        attempts = 1
        while True:
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))
            attempts += 1
            try:
                handle = await self._build(inst)
            except PluginError as exc:
                old = self.unstarted.get(key)
                if old is not None:
                    self.unstarted[key] = msgspec.structs.replace(
                        old,
                        errors=old.errors + 1,
                        consecutive_failures=old.consecutive_failures + 1,
                        last_error=str(exc),
                    )
                delay = min(delay * 2, cap)
                continue
            async with self._reload_lock:
                assert self.loop is not None
                self.handles.setdefault(kind, {})[inst.name] = handle
                self.loop.attach(handle)
                self.unstarted.pop(key, None)
                self._retries.pop(key, None)
            log.warning("%s %r started after %d attempts", kind, inst.name, attempts)
            return

    def plugin_statuses(self) -> list[PluginStatus]:
        """Every configured, enabled plugin instance: running ones and those that did not
        start (``disabled`` under skip, ``starting`` under retry)."""
        out = [h.status() for by in self.handles.values() for h in by.values()]
        return out + list(self.unstarted.values())

    async def _stop_plugins(
        self, handles: Mapping[str, Mapping[str, PluginHandle]] | None = None
    ) -> None:
        for by_name in (handles or self.handles).values():
            for handle in by_name.values():
                try:
                    await handle.stop()
                except Exception as exc:  # noqa: BLE001 - keep stopping the others
                    log.error("%s %r failed to stop: %s", handle.kind, handle.name, exc)

    @staticmethod
    def _by_kind(handles: dict[str, dict[str, PluginHandle]]) -> dict[str, dict[str, PluginHandle]]:
        return {
            "sensors": handles["sensor"],
            "policies": handles["policy"],
            "actuators": handles["actuator"],
        }

    @staticmethod
    def _settings(config: Config) -> LoopSettings:
        a = config.agent
        return LoopSettings(
            interval=a.interval,
            align=a.align,
            offset=a.offset,
            stage_timeout=a.stage_timeout,
            plugin_timeout=a.plugin_timeout,
            max_actions_per_tick=a.max_actions_per_tick,
            max_concurrent_actions=a.max_concurrent_actions,
        )

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
        async with self._reload_lock:
            source = path or self.options.config_path
            try:
                new = load(source, self.registry)
                self._check_reloadable(new)
            except ConfigError as exc:
                log.error("reload refused, still running the previous config: %s", exc)
                return exc.errors
            assert self.loop is not None
            old_unstarted, self.unstarted, self._deferred = self.unstarted, {}, []
            try:
                handles, retired = await self._rebuild(new)
            except AgentdError as exc:
                self.unstarted, self._deferred = old_unstarted, []
                log.error("reload refused, still running the previous config: %s", exc)
                return [str(exc)]
            self._cancel_retries()
            # keep policy memory for policies that are kept or rebuilt with the same name
            for name, handle in handles["policy"].items():
                old = self.handles["policy"].get(name)
                if old is not None and old is not handle:
                    handle.policy_state = old.policy_state
            old_interval = self.config.agent.interval
            self.loop.reconfigure(self._settings(new), **self._by_kind(handles))
            self.handles = handles
            self.config = new
            self.reload_generation += 1
            self._start_retries()
            await self._stop_plugins({"retired": retired})
            log.info(
                "reloaded %s (generation %d): interval %gs%s, %d plugins rebuilt",
                new.source,
                self.reload_generation,
                new.agent.interval,
                f" (was {old_interval:g}s)" if old_interval != new.agent.interval else "",
                len(retired),
            )
            return []

    def _check_reloadable(self, new: Config) -> None:
        changed = [
            name
            for name in ("paths", "store", "control", "telemetry")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if changed:
            raise ConfigError([f"{name}: changes need a restart, not a reload" for name in changed])

    async def _rebuild(
        self, new: Config
    ) -> tuple[dict[str, dict[str, PluginHandle]], dict[str, PluginHandle]]:
        """Handles for ``new``: unchanged instances are kept, changed ones built fresh. If any
        new one fails to build or start, the ones already built are stopped and nothing
        changes."""
        out: dict[str, dict[str, PluginHandle]] = {"sensor": {}, "policy": {}, "actuator": {}}
        built: list[PluginHandle] = []
        old_all = {(k, n): h for k, by in self.handles.items() for n, h in by.items()}
        try:
            for inst in new.instances():
                if not inst.enabled:
                    continue
                kind = kind_of(inst)
                old = old_all.get((kind, inst.name))
                if old is not None and old.instance.raw == inst.raw:
                    out[kind][inst.name] = old
                    continue
                handle = await self._build_or_defer(inst)
                if handle is None:
                    continue
                built.append(handle)
                out[kind][inst.name] = handle
        except AgentdError:
            await self._stop_plugins({"new": {h.name: h for h in built}})
            raise
        kept = {id(h) for by in out.values() for h in by.values()}
        retired = {f"{h.kind}:{h.name}": h for h in old_all.values() if id(h) not in kept}
        return out, retired

    # -- telemetry (agentd/telemetry.py, agentd/health.py) ----------------------------------
    def _start_telemetry(self) -> None:
        """Providers and exporters, hooked into the loop and the action runner (before the
        first tick). A missing OTLP extra is a ConfigError: agentd refuses to start."""
        if not self.config.telemetry.enabled or self.loop is None:
            return
        from agentd.telemetry import Telemetry

        telemetry = Telemetry(self.config.telemetry, self.state_dir)
        telemetry.loop = self.loop
        telemetry.handles = lambda: [h for by in self.handles.values() for h in by.values()]
        if self.store is not None:
            telemetry.watch_store(self.store)
        self.loop.telemetry = telemetry
        self.loop.actions.hook = telemetry.run_action
        self.telemetry = telemetry

    def _serve_telemetry(self) -> None:
        """A span per control request (``health`` and ``metrics`` are in the table already)."""
        if self.control is not None and self.telemetry is not None:
            self.control.add_hook(self.telemetry.request_hook)

    async def _stop_telemetry(self) -> None:
        telemetry, self.telemetry = self.telemetry, None
        if telemetry is None:
            return
        if self.loop is not None:
            self.loop.telemetry = None
            self.loop.actions.hook = None
        await asyncio.to_thread(telemetry.shutdown, STOP_TELEMETRY_TIMEOUT * 0.9)

    # -- the control plane (agentd/control/) ------------------------------------------------
    async def _start_control(self) -> None:
        """Listen on the control socket (after the loop exists: the API reads it)."""
        c = self.config.control
        if not c.enabled or self.loop is None:
            return
        from agentd.control.api import ControlApi
        from agentd.control.server import ControlServer
        from agentd.paths import socket_path

        daemon = self

        class Plugins:
            """`PluginsView` over the handles (until the PluginSupervisor provides it)."""

            def statuses(self) -> list[PluginStatus]:
                return daemon.plugin_statuses()

            def summary(self) -> str:
                return daemon.plugin_summary()

            def get(self, kind: str, name: str) -> PluginHandle | None:
                return daemon.handles.get(kind, {}).get(name)

            def all(self) -> list[PluginHandle]:
                return [h for by in daemon.handles.values() for h in by.values()]

        api = ControlApi(
            loop=self.loop,
            plugins=Plugins(),
            store=self.store,
            telemetry=self.telemetry,
            registry=self.registry,
            lifecycle=self,
        )
        self.loop.sinks.append(api.on_tick)
        self.loop.late_sinks.append(api.on_late_result)
        self.control = ControlServer(api, c, socket_path(self.runtime_dir, c.socket))
        await self.control.start()

    async def _stop_control(self) -> None:
        """First stage of shutdown: stop accepting requests, answer those in flight."""
        if self.control is not None:
            await self.control.stop(STOP_CONTROL_TIMEOUT * 0.9)

    # -- systemd (agentd/systemd.py) ---------------------------------------------------------
    def _start_systemd(self) -> None:
        """Tell systemd READY=1 after the first tick (the control socket already listens) and
        feed its watchdog from the loop's progress. A no-op outside a Type=notify unit."""
        notifier = Notifier.from_environ()
        watchdog = watchdog_period()
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(var, None)  # not for the programs plugins start
        if not notifier.enabled or self.loop is None:
            return
        self.systemd = ServiceNotifier(
            notifier,
            self.loop,
            watchdog=watchdog,
            describe=lambda: f"plugins {self.plugin_summary()}",
        )
        if watchdog:
            log.info(
                "systemd watchdog: %gs, fed while the perception loop makes progress", watchdog
            )
        self.spawn(self.systemd.run(), name="systemd-notify")

    def _notify_stopping(self) -> None:
        if self.systemd is not None:
            self.systemd.stopping()

    # -- the store (agentd/store/) ------------------------------------------------------------
    async def _open_store(self) -> None:
        """Open the database before any plugin is built (policy memory lives there). A newer
        schema refuses the start; a corrupt file is replaced and an unwritable disk leaves the
        store degraded, each logged in one line by the store."""
        c = self.config.store
        if c.enabled:
            self.store = Store(self.state_dir / c.path, c)
            await self.store.open()

    async def _attach_store(self) -> None:
        """Journal every tick and late action result, remember idempotency keys across
        restarts, and sweep expired sessions every ``store.sweep_interval``."""
        store, loop = self.store, self.loop
        if store is None or loop is None:
            return
        loop.sinks.append(self._journal_tick)
        loop.late_sinks.append(store.journal_result)
        loop.actions.manual_sinks.append(store.journal_result)  # agentctl act
        loop.actions.key_seen = store.key_seen
        loop.actions.key_claimed = store.claim_key
        self.spawn(self._sweep_sessions(store), name="session-sweep")

    async def _load_policy_state(self, handle: PluginHandle) -> None:
        """Restore a policy's memory from its session ``policy:<name>``."""
        if self.store is None or handle.kind != "policy":
            return
        try:
            session = await self.store.sessions.get(f"policy:{handle.name}")
        except StoreError as exc:
            log.warning("policy %r starts without its saved memory: %s", handle.name, exc)
            return
        if session is not None and isinstance(session.state, dict):
            handle.policy_state = PolicyState(session.state)

    def _journal_tick(self, report: TickReport) -> None:
        store = self.store
        assert store is not None
        store.journal_observation(report.observation)
        for result in report.results:
            store.journal_result(result)
        for name, handle in self.handles.get("policy", {}).items():
            state = handle.policy_state
            if not state.dirty:
                continue
            try:
                # a full queue returns False: the state stays dirty and goes next tick
                state.dirty = not store.sessions.put_nowait(f"policy:{name}", state.to_dict())
            except StoreError as exc:
                state.dirty = False  # unencodable: logged, not retried every tick
                log.error("policy %r: memory not saved: %s", name, exc)

    async def _sweep_sessions(self, store: Store) -> None:
        while True:
            await asyncio.sleep(self.config.store.sweep_interval)
            try:
                swept = await store.sessions.sweep()
            except StoreError as exc:
                log.debug("session sweep skipped: %s", exc)
                continue
            if swept:
                log.info("store: removed %d expired sessions", swept)

    async def _close_store(self) -> None:
        if self.store is not None:
            await self.store.close()

    # -- the facade the control plane and telemetry read ------------------------------------
    def _on_tick(self, report: TickReport) -> None:
        del report

    def _start_heartbeat(self) -> None:
        every = self.config.log.heartbeat
        if every <= 0:
            return

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.config.log.heartbeat or every)
                assert self.loop is not None
                s = self.loop.stats()
                log.info(
                    "heartbeat: %d ticks, lateness p50 %.2f ms p99 %.2f ms, %d overruns, "
                    "%d skipped, plugins %s",
                    s.ticks,
                    s.lateness_p50 * 1e3,
                    s.lateness_p99 * 1e3,
                    s.overruns,
                    s.skipped,
                    self.plugin_summary(),
                )

        self.spawn(beat(), name="heartbeat")

    def plugin_summary(self) -> str:
        states = [h.state for by in self.handles.values() for h in by.values()]
        states += [s.state for s in self.unstarted.values()]
        bad = sum(s != "ok" for s in states)
        return f"{len(states) - bad}/{len(states)} ok"

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono if self.started_mono else 0.0


def run_daemon(config: Config, options: DaemonOptions) -> int:
    """Run a Daemon on uvloop until it stops; returns the exit code."""
    import uvloop

    return uvloop.run(Daemon(config, options).serve())
