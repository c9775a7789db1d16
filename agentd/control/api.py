"""`ControlApi`: the typed view of a running daemon that the control handlers use. It reads and
commands; it never hands out the loop or the plugin objects, and it never sees the `Daemon`.

It is built from the collaborators themselves: the loop, a `PluginsView` (the plugin
supervisor), the store (or None), telemetry (or None, through `TelemetryView`), the registry
and a `Lifecycle` (the daemon's config, state, uptime and reload). Every result is a Struct
(agentd/model.py, agentd/control/protocol.py). What ``watch`` streams is a `WatchFeed`
(feed.py): pass one built before the loop (it is a tick observer), or let the API make its own
and wire ``api.on_tick`` / ``api.on_late_result`` to the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, TypeVar, cast

import msgspec

from agentd import __version__
from agentd.control.feed import Subscriber, WatchFeed
from agentd.control.protocol import EventKind, StateEvent
from agentd.model import (
    Action,
    ActionResult,
    ConfigVersion,
    FleetCommand,
    HealthReport,
    MetricPoint,
    PluginDetail,
    PluginInfo,
    PluginStatus,
    ProcessInfo,
    StatusReport,
    TickReport,
    UplinkStatus,
)
from agentd.plugins.executor import PluginExecutor
from agentd.secrets import redact

if TYPE_CHECKING:
    import psutil

    from agentd.config import Config
    from agentd.loop import PerceptionLoop
    from agentd.plugins.handle import PluginHandle
    from agentd.plugins.registry import Registry
    from agentd.store import Store

__all__ = ["ControlApi", "FleetView", "Lifecycle", "PluginsView", "TelemetryView"]

log = logging.getLogger("agentd.control")

T = TypeVar("T")
#: cached replies (one per plugin name asked for, at most)
MAX_CACHED: Final = 256


class PluginsView(Protocol):
    """The configured plugins, as the supervisor knows them."""

    def statuses(self) -> list[PluginStatus]:
        """Every configured, enabled instance, the ones that did not start included."""
        ...

    def summary(self) -> str:
        """``"3/4 ok"``."""
        ...

    def get(self, kind: str, name: str) -> PluginHandle | None: ...

    def all(self) -> list[PluginHandle]:
        """The running handles, every kind."""
        ...


class TelemetryView(Protocol):
    """What the control plane reads from `agentd.telemetry.Telemetry`."""

    def collect(self) -> list[MetricPoint]:
        """Current metric values (runs /proc reads: call it off the loop)."""
        ...

    def recent_lateness_p99(self, window: float) -> float | None: ...


class Lifecycle(Protocol):
    """The daemon as its lifecycle owner: what it runs and since when, and reload."""

    @property
    def config(self) -> Config: ...

    @property
    def state(self) -> enum.Enum: ...

    @property
    def started_at(self) -> float: ...

    @property
    def reload_generation(self) -> int: ...

    def uptime(self) -> float: ...

    async def reload(self, path: str | None = None) -> list[str]:
        """The SIGHUP path: the validation errors (empty: reloaded)."""
        ...


class FleetView(Protocol):
    """The fleet command channel's records (`agentd.fleet.FleetCommands`)."""

    def recent(self) -> list[FleetCommand]: ...

    def history(self) -> list[ConfigVersion]: ...


class ControlApi:
    """What the control plane may see and do. Built once per daemon, after the loop exists."""

    def __init__(
        self,
        *,
        loop: PerceptionLoop,
        plugins: PluginsView,
        store: Store | None,
        telemetry: TelemetryView | None,
        registry: Registry,
        lifecycle: Lifecycle,
        feed: WatchFeed | None = None,
        uplinks: Callable[[], list[UplinkStatus]] | None = None,
        fleet: FleetView | None = None,
    ) -> None:
        self.loop = loop
        self.plugins_view = plugins
        self.store = store
        self.telemetry = telemetry
        self.registry = registry
        self.lifecycle = lifecycle
        self.feed = feed or WatchFeed()
        #: the uplink engines' states (`agentd.uplinking.Uplinks.states`), if any
        self._uplinks = uplinks
        #: the fleet's commands and config versions (`agentd.fleet.FleetCommands`), if any
        self.fleet = fleet
        self._proc: psutil.Process | None = None
        #: replies that cost something to build (psutil reads, JSON Schemas), kept while the
        #: daemon they describe has not changed (`_epoch`): a flood of `status` or `plugin`
        #: requests builds each once per tick, not once per request
        self._cache: dict[object, tuple[object, object]] = {}
        self._schemas: dict[tuple[str, int], dict[str, object] | None] = {}
        #: the control plane's own thread (never the plugins' pool): metrics read /proc
        self._executor = PluginExecutor(max_workers=1, name="agentd-control")
        self._metrics: asyncio.Future[list[MetricPoint]] | None = None

    def _epoch(self) -> tuple[object, ...]:
        loop, d = self.loop, self.lifecycle
        return (
            loop.ticks,
            d.reload_generation,
            loop.paused,
            len(loop.actions.in_flight),
            d.state,
            int(time.monotonic()),  # a paused loop does not tick: at least once a second
        )

    def _cached(self, what: object, build: Callable[[], T]) -> T:
        epoch = self._epoch()
        hit = self._cache.get(what)
        if hit is not None and hit[0] == epoch:
            return cast(T, hit[1])
        value = build()
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[what] = (epoch, value)
        return value

    # -- scheduling facts for the control server's tick guard -------------------------------
    def next_deadline(self) -> float | None:
        loop = self.loop
        return None if loop.stopping else loop.next_deadline

    def ticks(self) -> int:
        return self.loop.ticks

    def interval(self) -> float:
        return self.lifecycle.config.agent.interval

    # -- reads -------------------------------------------------------------------------------
    def status(self) -> StatusReport:
        return self._cached("status", self._status)

    def _status(self) -> StatusReport:
        d, loop, store = self.lifecycle, self.loop, self.store
        return StatusReport(
            version=__version__,
            pid=os.getpid(),
            state=str(d.state.value),
            started_at=d.started_at,
            uptime=d.uptime(),
            config=d.config.source,
            reload_generation=d.reload_generation,
            loop=loop.stats(),
            dropped_actions=loop.dropped_actions,
            actions_in_flight=len(loop.actions.in_flight),
            plugins=self.plugins_view.statuses(),
            process=self.process(),
            store=None if store is None else store.health(),
            uplinks=self.uplinks(),
        )

    def uplinks(self) -> list[UplinkStatus]:
        """Per uplink and stream: connected, cursor, backlog, in flight, counters."""
        return self._uplinks() if self._uplinks is not None else []

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
        up = max(self.lifecycle.uptime(), 1e-9)
        return ProcessInfo(
            rss=rss,
            cpu_user=cpu.user,
            cpu_system=cpu.system,
            cpu_percent=100.0 * (cpu.user + cpu.system) / up,
            threads=threads,
            fds=fds,
        )

    def plugins(self) -> list[PluginInfo]:
        return self._cached("plugins", lambda: [_info(h) for h in self.plugins_view.all()])

    def plugin(self, name: str) -> PluginDetail | None:
        """One configured instance (or, failing that, a registered plugin): status, config and
        JSON Schema. None if neither exists."""
        return self._cached(("plugin", name), lambda: self._plugin(name))

    def _plugin(self, name: str) -> PluginDetail | None:
        from agentd.schema import plugin_schema

        for h in self.plugins_view.all():
            if h.name != name:
                continue
            info = _info(h)
            return PluginDetail(
                configured=True,
                name=info.name,
                plugin=info.plugin,
                kind=info.kind,
                state=info.state,
                calls=info.calls,
                errors=info.errors,
                consecutive_failures=info.consecutive_failures,
                last_error=info.last_error,
                origin=info.origin,
                version=info.version,
                description=info.description,
                actions=info.actions,
                # the read role sees this: secret fields (a webhook's headers) are hidden
                config={**redact(h.instance.common), **redact(h.instance.config)},
                schema=self._schema(f"{h.kind}:{h.spec.name}", plugin_schema),
            )
        schema = self._schema(name, plugin_schema)
        if schema is None:
            return None
        return PluginDetail(configured=False, name=name, plugin=name, schema=schema)

    def _schema(
        self, name: str, fn: Callable[[str, Registry], dict[str, object]]
    ) -> dict[str, object] | None:
        # the registry changes only with a reload
        key = (name, self.lifecycle.reload_generation)
        if key in self._schemas:
            return self._schemas[key]
        try:
            schema: dict[str, object] | None = fn(name, self.registry)
        except KeyError:
            schema = None
        if len(self._schemas) >= MAX_CACHED:
            self._schemas.clear()
        self._schemas[key] = schema
        return schema

    def health(self) -> HealthReport:
        """ok / degraded / failing from the ``[health]`` thresholds (cheap: no I/O but one
        psutil read of this process, once per tick)."""
        return self._cached("health", self._health)

    def _health(self) -> HealthReport:
        import psutil

        from agentd.health import evaluate

        config = self.lifecycle.config.health
        loop = self.loop
        if self.telemetry is not None:
            p99 = self.telemetry.recent_lateness_p99(config.window)
        else:
            p99 = loop.stats().lateness_p99 if loop.ticks else None
        deadline = loop.next_deadline
        overdue = max(0.0, time.monotonic() - deadline) if deadline is not None else 0.0
        store = self.store
        return evaluate(
            config,
            interval=loop.interval,
            paused=loop.paused,
            paused_for=time.monotonic() - (loop.paused_since or time.monotonic()),
            overdue=overdue,
            lateness_p99=p99,
            plugins=[h.status() for h in self.plugins_view.all()],
            store_state=None if store is None else store.state,
            store_error=None if store is None else store.last_error,
            rss=psutil.Process().memory_info().rss,
            uplinks=self.uplinks(),
        )

    async def metrics(self) -> list[MetricPoint] | None:
        """Current metric values; None when telemetry is off."""
        telemetry = self.telemetry
        if telemetry is None:
            return None
        epoch = self._epoch()
        hit = self._cache.get("metrics")
        if hit is not None and hit[0] == epoch:
            return cast(list[MetricPoint], hit[1])
        # one collection at a time, shared by whoever asks meanwhile; the observable callbacks
        # read /proc (psutil): in the control plane's own thread, never the plugins' pool
        if self._metrics is None:
            loop = asyncio.get_running_loop()
            self._metrics = fut = asyncio.ensure_future(
                loop.run_in_executor(self._executor, telemetry.collect)
            )
            fut.add_done_callback(lambda f: self._metrics_done(f, epoch))
        return await asyncio.shield(self._metrics)

    def _metrics_done(self, fut: asyncio.Future[list[MetricPoint]], epoch: object) -> None:
        self._metrics = None
        if not fut.cancelled() and fut.exception() is None:
            self._cache["metrics"] = (epoch, fut.result())

    # -- commands ----------------------------------------------------------------------------
    async def tick(self) -> TickReport:
        return await self.loop.tick_now()

    def pause(self) -> bool:
        """Pause the loop; False if it already was."""
        loop = self.loop
        if loop.paused:
            return False
        loop.pause()
        log.info("loop paused by the control plane")
        self.publish("state", StateEvent(state="paused"))
        return True

    def resume(self) -> bool:
        loop = self.loop
        if not loop.paused:
            return False
        loop.resume()
        log.info("loop resumed by the control plane")
        self.publish("state", StateEvent(state="running"))
        return True

    @property
    def paused(self) -> bool:
        return self.loop.paused

    async def reload(self) -> tuple[list[str], int]:
        """Same path as SIGHUP. Returns (validation errors, reload generation)."""
        d = self.lifecycle
        errors = await d.reload()
        if not errors:
            self.publish("state", StateEvent(state="reloaded", generation=d.reload_generation))
        return errors, d.reload_generation

    def validate_action(self, action: Action) -> str | None:
        return self.loop.actions.validate(action)

    def has_actuator(self, name: str) -> bool:
        return name in self.loop.actuators

    async def act(self, action: Action) -> ActionResult:
        """A manual tool call through the same path as the act stage (validation, timeout,
        retries, concurrency limit); the result is also published to watchers."""
        result = await self.loop.actions.submit(action)
        self.publish("action", result)
        return result

    # -- watch -------------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        return self.feed.subscribe(fn)

    def publish(self, kind: EventKind, data: msgspec.Struct) -> None:
        self.feed.publish(kind, data)

    def on_tick(self, report: TickReport) -> None:
        """A tick observer (the feed's): each finished tick, then its results, to watchers."""
        self.feed.on_tick(report)

    def on_late_result(self, result: ActionResult) -> None:
        """An action that finished after its tick (a slow actuator)."""
        self.feed.on_late_result(result)


def _info(h: PluginHandle) -> PluginInfo:
    s, spec = h.status(), h.spec
    return PluginInfo(
        name=s.name,
        plugin=s.plugin,
        kind=s.kind,
        state=s.state,
        calls=s.calls,
        errors=s.errors,
        consecutive_failures=s.consecutive_failures,
        last_error=s.last_error,
        origin=spec.origin,
        version=spec.version,
        description=spec.description,
        actions=sorted(spec.actions),
    )
