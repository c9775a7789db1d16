"""A configured, built plugin instance with its health: the loop talks to these, never to the
raw plugin objects. State changes (failing, degraded, recovered) are logged once, not every tick.

State changes are damped (home-assistant's update coordinator logs on change only; we also
refuse to flap): a plugin is `failing` after ``failing_after`` failures in a row and
`recovered` after ``recovered_after`` successes in a row. One that fails again within
`FLAP_WINDOW` seconds of recovering must succeed twice as many times in a row before it is
reported recovered again (up to `MAX_RECOVERED_AFTER`), so a sensor that times out now and then
says so once instead of logging a failing/recovered pair each time. Every error line goes
through `PluginHandle.redact` first: a message never carries a configured secret.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from agentd.config import PluginInstance, SensorCommon
from agentd.errors import PluginError
from agentd.model import PluginState, PluginStatus, Value
from agentd.plugins.base import EventSink, PluginKind, PluginSpec, PolicyState
from agentd.secrets import redact_text, secret_values

__all__ = [
    "DEGRADED_AFTER",
    "FLAP_WINDOW",
    "MAX_BACKOFF_FACTOR",
    "MAX_RECOVERED_AFTER",
    "ActuatorRunner",
    "PluginHandle",
    "PolicyRunner",
    "SensorRunner",
    "build_handle",
    "check_readings",
    "wait_call",
]

log = logging.getLogger("agentd.plugins")

#: consecutive failures after which a sensor or actuator is `degraded` and backs off
#: (default of the per-instance ``degraded_after`` key)
DEGRADED_AFTER = 3
#: backoff doubles the poll interval up to this factor (collectd's MaxReadInterval idea), or up
#: to the instance's ``max_interval`` when set
MAX_BACKOFF_FACTOR = 64
#: a plugin failing again this soon (seconds) after recovering is flapping: the successes it
#: needs to be reported recovered double
FLAP_WINDOW = 60.0
MAX_RECOVERED_AFTER = 1024


class PluginHandle:
    """What every kind shares: the instance, its spec and object, health and backoff. One
    subclass per kind (as Telegraf's ``running_input``/``running_output``) adds what the loop
    needs of that kind; `agentd.plugins.kinds` maps each kind to its runner type."""

    __slots__ = (
        "_secrets",
        "backoff",
        "calls",
        "config",
        "consecutive_failures",
        "episode",
        "errors",
        "events",
        "inputs",
        "instance",
        "last_error",
        "name",
        "obj",
        "owner",
        "period",
        "recover_need",
        "recovered_at",
        "retry_at",
        "spec",
        "state",
        "successes",
    )

    kind: ClassVar[PluginKind]
    #: whether consecutive failures make it `degraded` and back off (a policy never does)
    degrades: ClassVar[bool] = True

    def __init__(
        self, instance: PluginInstance, spec: PluginSpec, obj: Any, events: EventSink | None = None
    ) -> None:
        self.name = instance.name
        #: where its state changes are journalled (the store's events stream), if anywhere
        self.events = events
        self.instance = instance
        self.config = instance.common
        self.spec = spec
        self.obj = obj
        self.state: PluginState = "ok"
        self.calls = 0
        self.errors = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        #: multiplies the period while degraded
        self.backoff = 1
        #: seconds between two calls when healthy (sensors: every x loop interval; actuators: 1 s)
        self.period = 1.0
        #: while degraded, calls before this monotonic time are skipped, not made
        self.retry_at = 0.0
        #: failures since the state was last `ok`; successes in a row while not `ok`
        self.episode = 0
        self.successes = 0
        #: successes in a row needed to be `ok` again (doubles while flapping)
        self.recover_need = self.config.recovered_after
        self.recovered_at = 0.0
        #: what its thread calls are tagged with (`agentd.plugins.executor`)
        self.owner = f"{self.kind}:{self.name}"
        self._secrets = secret_values(instance.config)
        #: what the instance read from outside its table when it was built (its config's
        #: ``reload_key()``, e.g. a document's or a token file's digest): a reload with the
        #: same table rebuilds it when this changed
        self.inputs = reload_key(instance.config)

    def redact(self, text: str) -> str:
        """``text`` without this instance's configured secrets (for errors and log lines)."""
        return redact_text(text, self._secrets) if self._secrets else text

    @property
    def max_backoff(self) -> int:
        cap = self.config.max_interval
        if cap is None:
            return MAX_BACKOFF_FACTOR
        return max(1, int(cap / self.period))

    def ok(self) -> None:
        self.calls += 1
        self.consecutive_failures = 0
        self.backoff = 1
        self.retry_at = 0.0
        if self.state == "ok":
            self.episode = 0
            return
        self.successes += 1
        if self.successes < self.recover_need:
            return
        log.warning("%s %r recovered after %d failures", self.kind, self.name, self.episode)
        self._event("plugin.recovered", None)
        self.state = "ok"
        self.episode = 0
        self.successes = 0
        self.recovered_at = time.monotonic()

    def fail(self, error: str, *, stuck: bool = False) -> None:
        """Record a failed call; ``stuck``: it is still running in a thread past its timeout,
        so the plugin is degraded at once (calling it again would only take another thread)."""
        error = self.redact(error)
        self.calls += 1
        self.errors += 1
        self.consecutive_failures += 1
        self.episode += 1
        self.successes = 0
        self.last_error = error
        config = self.config
        if self.state == "ok":
            if self.consecutive_failures < config.failing_after and not stuck:
                log.debug(
                    "%s %r failed (%d of %d before failing): %s",
                    self.kind,
                    self.name,
                    self.consecutive_failures,
                    config.failing_after,
                    error,
                )
            else:
                self.state = "failing"
                now = time.monotonic()
                flapping = self.recovered_at and now - self.recovered_at < FLAP_WINDOW
                if flapping:
                    self.recover_need = min(self.recover_need * 2, MAX_RECOVERED_AFTER)
                    log.error(
                        "%s %r is failing again %.3gs after it recovered (it is reported "
                        "recovered after %d successes in a row now): %s",
                        self.kind,
                        self.name,
                        now - self.recovered_at,
                        self.recover_need,
                        error,
                    )
                else:
                    self.recover_need = config.recovered_after
                    log.error("%s %r is failing: %s", self.kind, self.name, error)
                self._event("plugin.failing", error)
        if self.degrades and (stuck or self.consecutive_failures >= config.degraded_after):
            if self.state != "degraded":
                self.state = "degraded"
                log.error(
                    "%s %r degraded after %d failures in a row; backing off: %s",
                    self.kind,
                    self.name,
                    self.consecutive_failures,
                    error,
                )
                self._event("plugin.degraded", error)
            self.backoff = min(self.backoff * 2, self.max_backoff)
            cap = config.max_interval
            delay = self.period * self.backoff
            self.retry_at = time.monotonic() + (min(delay, cap) if cap else delay)

    def _event(self, kind: str, error: str | None) -> None:
        if self.events is not None:
            data = {"kind": self.kind, "name": self.name, "plugin": self.spec.name}
            self.events.journal_event(kind, {**data, "error": error} if error else data)

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


class SensorRunner(PluginHandle):
    """A sensor: polled every N ticks (its own ``interval``), never called twice at once."""

    __slots__ = ("every", "next_tick", "pending")
    kind: ClassVar[PluginKind] = "sensor"

    def __init__(
        self, instance: PluginInstance, spec: PluginSpec, obj: Any, events: EventSink | None = None
    ) -> None:
        super().__init__(instance, spec, obj, events)
        #: poll every N ticks; ``backoff`` multiplies it while degraded
        self.every = 1
        self.next_tick = 0
        #: a call still running from an earlier tick (hung); never start a second one
        self.pending: asyncio.Future[Any] | None = None

    def set_interval(self, loop_interval: float) -> None:
        common = self.instance.common
        interval = common.interval if isinstance(common, SensorCommon) else None
        self.every = max(1, round(interval / loop_interval)) if interval else 1
        self.period = self.every * loop_interval

    def due(self, tick: int) -> bool:
        return tick >= self.next_tick

    def schedule_next(self, tick: int) -> None:
        self.next_tick = tick + self.every * self.backoff


class PolicyRunner(PluginHandle):
    """A policy: its memory (``policy_state``) lives here, across ticks and reloads."""

    __slots__ = ("policy_state",)
    kind: ClassVar[PluginKind] = "policy"
    degrades: ClassVar[bool] = False

    def __init__(
        self, instance: PluginInstance, spec: PluginSpec, obj: Any, events: EventSink | None = None
    ) -> None:
        super().__init__(instance, spec, obj, events)
        self.policy_state = PolicyState()


class ActuatorRunner(PluginHandle):
    """An actuator: a degraded one is left alone until its backoff ends."""

    __slots__ = ()
    kind: ClassVar[PluginKind] = "actuator"

    def backing_off(self) -> float:
        """Seconds left before a degraded actuator may be called again (0: now)."""
        return max(0.0, self.retry_at - time.monotonic()) if self.state == "degraded" else 0.0


def build_handle(
    runner: type[PluginHandle],
    instance: PluginInstance,
    spec: PluginSpec,
    capabilities: Mapping[str, Any] | None = None,
    events: EventSink | None = None,
) -> PluginHandle:
    """Instantiate a plugin from its validated config, passing it the capabilities it declared
    in ``spec.requires`` (and nothing else); errors name the instance."""
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
        why = redact_text(f"{type(exc).__name__}: {exc}", secret_values(instance.config))
        raise PluginError(instance.name, f"cannot be built: {why}", spec.origin) from exc
    return runner(instance, spec, obj, events)


def reload_key(config: object) -> object:
    """A config's ``reload_key()`` (None when it declares none)."""
    key = getattr(config, "reload_key", None)
    return key() if callable(key) else None


_VALUE_TYPES = (float, int, bool, str)


async def wait_call(fut: asyncio.Future[Any], timeout: float, nominal: float) -> str | None:
    """Wait for a plugin call; None when it finished without raising, else the error line.
    A call that times out is cancelled; if it cannot be (a hung thread) it stays `pending` and
    no second call to that plugin is started."""
    if not fut.done():
        await asyncio.wait((fut,), timeout=timeout)
    if not fut.done():
        fut.cancel()
        return f"timed out after {nominal:.3g}s"
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception()
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_readings(value: object) -> tuple[str | None, dict[str, Value]]:
    if not isinstance(value, Mapping):
        return f"returned {type(value).__name__}, expected a mapping of metric to value", {}
    if type(value) is dict:
        # the common case, every sensor every tick (issue #18): exact types by identity,
        # one copy in C; anything else (a subclass, a bad or non-finite value) goes the long
        # way for its error line
        for k, v in value.items():
            t = type(v)
            if type(k) is not str or not (
                t is int or t is str or t is bool or (t is float and math.isfinite(v))
            ):
                break
        else:
            return None, dict(value)
    out: dict[str, Value] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, _VALUE_TYPES):
            return (
                f"returned a bad reading {k!r}: {type(v).__name__} "
                "(expected a number, bool or string)"
            ), {}
        if isinstance(v, float) and not math.isfinite(v):
            return f"returned a non-finite reading {k!r}: {v}", {}
        out[k] = v
    return None, out
