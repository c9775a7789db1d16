"""`DaemonFacade`: the narrow view of a running `Daemon` that the control plane (and later
telemetry) uses. It reads and commands; it never hands out the loop or the plugin objects.

Results are msgspec Structs (rendered generically by the server with ``msgspec.to_builtins``,
so a field added to a Struct shows up in `agentctl --json` without touching the control plane).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from agentd import __version__
from agentd.model import Action, ActionResult, PluginStatus, TickReport, TickStats

if TYPE_CHECKING:
    from agentd.daemon import Daemon
    from agentd.loop import PerceptionLoop

__all__ = ["DaemonFacade", "EventKind", "PluginInfo", "ProcessInfo", "StatusReport"]

log = logging.getLogger("agentd.control")

EventKind = Literal["tick", "action", "state"]
#: a watch subscriber: called synchronously from the loop's sinks; must not block
Subscriber = Callable[[str, Any], None]


class ProcessInfo(msgspec.Struct, frozen=True, kw_only=True):
    rss: int
    cpu_user: float
    cpu_system: float
    #: CPU time / uptime since start, in percent of one core
    cpu_percent: float
    threads: int
    fds: int


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A configured plugin instance: its status plus where the plugin comes from."""

    name: str
    plugin: str
    kind: str
    state: str
    calls: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    origin: str = "builtin"
    version: str = ""
    description: str = ""
    actions: list[str] = []


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    pid: int
    state: str
    started_at: float
    uptime: float
    config: str
    reload_generation: int
    loop: TickStats
    dropped_actions: int
    actions_in_flight: int
    plugins: list[PluginStatus]
    process: ProcessInfo
    #: the store's health (its own Struct), or None when the store is disabled
    store: Any = None
    #: filled in by the control server: its connection and request counters
    control: Any = None


class DaemonFacade:
    """What the control plane may see and do. Built once per daemon, after the loop exists."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._subscribers: list[Subscriber] = []
        self._proc: Any = None
        # a TickObserver of the loop through the daemon's fan-out (agentd/fanout.py)
        daemon.fanout.subscribe(self)

    # -- helpers -----------------------------------------------------------------------------
    @property
    def _loop(self) -> PerceptionLoop:
        loop = self._daemon.loop
        if loop is None:
            raise RuntimeError("the perception loop is not running")
        return loop

    @property
    def store(self) -> Any:
        """The Store, or None when it is disabled (or not built)."""
        return getattr(self._daemon, "store", None)

    @property
    def registry(self) -> Any:
        return self._daemon.registry

    # -- scheduling facts for the control server's tick guard -------------------------------
    def next_deadline(self) -> float | None:
        loop = self._daemon.loop
        return None if loop is None or loop.stopping else loop.next_deadline

    def ticks(self) -> int:
        loop = self._daemon.loop
        return 0 if loop is None else loop.ticks

    def interval(self) -> float:
        return self._daemon.config.agent.interval

    # -- reads -------------------------------------------------------------------------------
    async def status(self) -> StatusReport:
        d = self._daemon
        loop = self._loop
        store_health: Any = None
        store = self.store
        if store is not None:
            health = store.health()
            store_health = await health if inspect.isawaitable(health) else health
        return StatusReport(
            version=__version__,
            pid=os.getpid(),
            state=d.state.value,
            started_at=d.started_at,
            uptime=d.uptime(),
            config=d.config.source,
            reload_generation=d.reload_generation,
            loop=loop.stats(),
            dropped_actions=loop.dropped_actions,
            actions_in_flight=len(loop.actions.in_flight),
            plugins=d.supervisor.statuses(),
            process=self.process(),
            store=store_health,
        )

    def process(self) -> ProcessInfo:
        import psutil

        if self._proc is None:
            self._proc = psutil.Process()
        p = self._proc
        with p.oneshot():
            cpu = p.cpu_times()
            rss = p.memory_info().rss
            threads = p.num_threads()
            fds = p.num_fds()
        up = max(self._daemon.uptime(), 1e-9)
        return ProcessInfo(
            rss=rss,
            cpu_user=cpu.user,
            cpu_system=cpu.system,
            cpu_percent=100.0 * (cpu.user + cpu.system) / up,
            threads=threads,
            fds=fds,
        )

    def plugins(self) -> list[PluginInfo]:
        out = []
        for h in self._daemon.supervisor.all():
            s, spec = h.status(), h.spec
            out.append(
                PluginInfo(
                    **msgspec.structs.asdict(s),
                    origin=spec.origin,
                    version=spec.version,
                    description=spec.description,
                    actions=sorted(spec.actions),
                )
            )
        return out

    def plugin(self, name: str) -> dict[str, Any] | None:
        """One configured instance (or, failing that, a registered plugin): status, config and
        JSON Schema. None if neither exists."""
        from agentd.schema import plugin_schema

        for h in self._daemon.supervisor.all():
            if h.name == name:
                info = next(p for p in self.plugins() if p.name == name and p.kind == h.kind)
                return {
                    "configured": True,
                    **msgspec.to_builtins(info),
                    "config": {
                        **msgspec.to_builtins(h.instance.common),
                        **msgspec.to_builtins(h.instance.config),
                    },
                    "schema": _schema_of(plugin_schema, f"{h.kind}:{h.spec.name}", self.registry),
                }
        schema = _schema_of(plugin_schema, name, self.registry)
        if schema is None:
            return None
        return {"configured": False, "name": name, "plugin": name, "schema": schema}

    # -- commands ----------------------------------------------------------------------------
    async def tick(self) -> TickReport:
        return await self._loop.tick_now()

    def pause(self) -> bool:
        """Pause the loop; False if it already was."""
        loop = self._loop
        if loop.paused:
            return False
        loop.pause()
        log.info("loop paused by the control plane")
        self.publish("state", {"state": "paused"})
        return True

    def resume(self) -> bool:
        loop = self._loop
        if not loop.paused:
            return False
        loop.resume()
        log.info("loop resumed by the control plane")
        self.publish("state", {"state": "running"})
        return True

    @property
    def paused(self) -> bool:
        return self._loop.paused

    async def reload(self) -> tuple[list[str], int]:
        """Same path as SIGHUP. Returns (validation errors, reload generation)."""
        errors = await self._daemon.reload()
        if not errors:
            self.publish(
                "state", {"state": "reloaded", "generation": self._daemon.reload_generation}
            )
        return errors, self._daemon.reload_generation

    def validate_action(self, action: Action) -> str | None:
        return self._loop.actions.validate(action)

    def has_actuator(self, name: str) -> bool:
        return name in self._loop.actuators

    async def act(self, action: Action) -> ActionResult:
        """A manual tool call through the same path as the act stage (validation, timeout,
        retries, concurrency limit); the result is also published to watchers."""
        result = await self._loop.actions.submit(action)
        self.publish("action", result)
        return result

    # -- watch -------------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def publish(self, kind: str, data: Any) -> None:
        for fn in list(self._subscribers):
            try:
                fn(kind, data)
            except Exception:
                log.exception("watch subscriber %r failed", fn)

    def on_tick(self, report: TickReport) -> None:
        if not self._subscribers:
            return
        self.publish("tick", report)
        for result in report.results:
            self.publish("action", result)

    def on_late_result(self, result: ActionResult) -> None:
        if self._subscribers:
            self.publish("action", result)


def _schema_of(fn: Callable[..., Any], name: str, registry: Any) -> Any:
    try:
        return fn(name, registry)
    except KeyError:
        return None
