"""A configured, built plugin instance with its health: the loop talks to these, never to the
raw plugin objects. State changes (failing, degraded, recovered) are logged once, not every tick.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Mapping
from typing import Any, final

from agentd.config import ActuatorInstance, PluginInstance, PolicyInstance, SensorInstance
from agentd.errors import PluginError
from agentd.model import PluginState, PluginStatus
from agentd.plugins.base import PluginKind, PluginSpec, PolicyState

__all__ = ["DEGRADED_AFTER", "MAX_BACKOFF_FACTOR", "PluginHandle", "build_handle", "kind_of"]

log = logging.getLogger("agentd.plugins")

#: consecutive failures after which a sensor or actuator is `degraded` and backs off
#: (default of the per-instance ``degraded_after`` key)
DEGRADED_AFTER = 3
#: backoff doubles the poll interval up to this factor (collectd's MaxReadInterval idea), or up
#: to the instance's ``max_interval`` when set
MAX_BACKOFF_FACTOR = 64


@final
class PluginHandle:
    __slots__ = (
        "backoff",
        "calls",
        "config",
        "consecutive_failures",
        "errors",
        "every",
        "instance",
        "kind",
        "last_error",
        "name",
        "next_tick",
        "obj",
        "pending",
        "period",
        "policy_state",
        "retry_at",
        "spec",
        "state",
    )

    def __init__(self, kind: PluginKind, instance: PluginInstance, spec: PluginSpec, obj: Any):
        self.kind = kind
        self.name = instance.name
        self.instance = instance
        self.config = instance.common
        self.spec = spec
        self.obj = obj
        self.state: PluginState = "ok"
        self.calls = 0
        self.errors = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        #: sensors: poll every N ticks; ``backoff`` multiplies it while degraded
        self.every = 1
        self.backoff = 1
        self.next_tick = 0
        #: seconds between two calls when healthy (sensors: every x loop interval; actuators: 1 s)
        self.period = 1.0
        #: actuators: while degraded, calls before this monotonic time are skipped, not made
        self.retry_at = 0.0
        #: a sensor call still running from an earlier tick (hung); never start a second one
        self.pending: asyncio.Future[Any] | None = None
        self.policy_state = PolicyState()

    def set_interval(self, loop_interval: float) -> None:
        interval = getattr(self.config, "interval", None)
        self.every = max(1, round(interval / loop_interval)) if interval else 1
        self.period = self.every * loop_interval

    @property
    def max_backoff(self) -> int:
        cap = self.config.max_interval
        if cap is None:
            return MAX_BACKOFF_FACTOR
        return max(1, int(cap / self.period))

    def backing_off(self) -> float:
        """Actuators: seconds left before a degraded actuator may be called again (0: now)."""
        return max(0.0, self.retry_at - time.monotonic()) if self.state == "degraded" else 0.0

    def due(self, tick: int) -> bool:
        return tick >= self.next_tick

    def schedule_next(self, tick: int) -> None:
        self.next_tick = tick + self.every * self.backoff

    def ok(self) -> None:
        self.calls += 1
        if self.state != "ok":
            log.warning(
                "%s %r recovered after %d failures", self.kind, self.name, self.consecutive_failures
            )
        self.state = "ok"
        self.consecutive_failures = 0
        self.backoff = 1
        self.retry_at = 0.0

    def fail(self, error: str) -> None:
        self.calls += 1
        self.errors += 1
        self.consecutive_failures += 1
        self.last_error = error
        if self.state == "ok":
            self.state = "failing"
            log.error("%s %r is failing: %s", self.kind, self.name, error)
        if self.kind != "policy" and self.consecutive_failures >= self.config.degraded_after:
            if self.state != "degraded":
                self.state = "degraded"
                log.error(
                    "%s %r degraded after %d failures in a row; backing off: %s",
                    self.kind,
                    self.name,
                    self.consecutive_failures,
                    error,
                )
            self.backoff = min(self.backoff * 2, self.max_backoff)
            cap = self.config.max_interval
            delay = self.period * self.backoff
            self.retry_at = time.monotonic() + (min(delay, cap) if cap else delay)

    def status(self) -> PluginStatus:
        return PluginStatus(
            name=self.name,
            plugin=self.spec.name,
            kind=self.kind,
            state=self.state,
            calls=self.calls,
            errors=self.errors,
            consecutive_failures=self.consecutive_failures,
            last_error=self.last_error,
        )

    async def start(self) -> None:
        hook = getattr(self.obj, "start", None)
        if callable(hook):
            result = hook()
            if inspect.isawaitable(result):
                await result

    async def stop(self) -> None:
        hook = getattr(self.obj, "stop", None)
        if callable(hook):
            result = hook()
            if inspect.isawaitable(result):
                await result
        self.state = "stopped"


_KIND_OF: dict[type[PluginInstance], PluginKind] = {
    SensorInstance: "sensor",
    PolicyInstance: "policy",
    ActuatorInstance: "actuator",
}


def kind_of(instance: PluginInstance) -> PluginKind:
    return _KIND_OF[type(instance)]


def build_handle(
    instance: PluginInstance, spec: PluginSpec, capabilities: Mapping[str, Any] | None = None
) -> PluginHandle:
    """Instantiate a plugin from its validated config, passing it the capabilities it declared
    in ``spec.requires`` (and nothing else); errors name the instance."""
    kind = kind_of(instance)
    granted: dict[str, Any] = {}
    for need in spec.requires:
        if capabilities is None or capabilities.get(need) is None:
            raise PluginError(
                instance.name, f"needs {need!r}, which this agentd does not provide", spec.origin
            )
        granted[need] = capabilities[need]
    try:
        obj = spec.factory(instance.config, **granted)
    except Exception as exc:
        raise PluginError(
            instance.name, f"cannot be built: {type(exc).__name__}: {exc}", spec.origin
        ) from exc
    return PluginHandle(kind, instance, spec, obj)
