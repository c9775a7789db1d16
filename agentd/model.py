"""The shared vocabulary: what flows through the perception loop, the store and the wire."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Action",
    "ActionResult",
    "ActionStatus",
    "HealthReport",
    "HealthStatus",
    "MetricPoint",
    "Observation",
    "PluginState",
    "PluginStatus",
    "Reading",
    "Session",
    "StageTimings",
    "StoreHealth",
    "TickReport",
    "TickStats",
    "Value",
]

#: A single sensor value. Sensors return ``{metric: Value}``.
Value = float | int | bool | str

ActionStatus = Literal["ok", "failed", "timeout", "skipped", "rejected"]


class Reading(msgspec.Struct, frozen=True, array_like=True):
    """One value of one metric from one sensor (the flat form of an Observation)."""

    sensor: str
    metric: str
    value: Value


class Observation(msgspec.Struct, frozen=True):
    """Everything the sensors perceived in one tick.

    ``readings[sensor][metric]`` is a value; a sensor that failed this tick appears in ``errors``
    instead, with a one-line reason.
    """

    tick: int
    monotonic: float
    wall: float
    readings: dict[str, dict[str, Value]] = {}
    errors: dict[str, str] = {}

    def get(self, ref: str) -> Value | None:
        """Look a reading up by ``"<sensor>.<metric>"`` (the metric name may contain dots)."""
        sensor, _, metric = ref.partition(".")
        return self.readings.get(sensor, {}).get(metric)

    def flat(self) -> list[Reading]:
        return [
            Reading(sensor, metric, value)
            for sensor, metrics in self.readings.items()
            for metric, value in metrics.items()
        ]


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """A request to an actuator, produced by a policy or by an operator (`agentctl act`).

    ``deadline`` is a wall-clock (Unix) time after which the action is skipped, not run late.
    ``key`` is an idempotency key: an actuator that declares itself non-idempotent never runs
    the same key twice, even across a restart.
    """

    actuator: str
    name: str
    params: dict[str, Any] = {}
    priority: int = 0
    deadline: float | None = None
    source: str = ""
    key: str | None = None


class ActionResult(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one Action."""

    action: Action
    status: ActionStatus
    attempts: int = 0
    duration: float = 0.0
    error: str | None = None
    output: Any = None
    tick: int | None = None
    finished_at: float = 0.0


class StageTimings(msgspec.Struct, frozen=True):
    """Durations in seconds of one tick's stages."""

    perceive: float = 0.0
    decide: float = 0.0
    act: float = 0.0
    total: float = 0.0


class TickStats(msgspec.Struct, frozen=True, kw_only=True):
    """Loop statistics since start (lateness and durations in seconds)."""

    ticks: int = 0
    overruns: int = 0
    skipped: int = 0
    lateness_p50: float = 0.0
    lateness_p99: float = 0.0
    lateness_max: float = 0.0
    last: StageTimings = StageTimings()
    mean: StageTimings = StageTimings()
    interval: float = 1.0
    paused: bool = False


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """Agent state that outlives a restart. ``state`` is any msgpack-able value (a Struct is
    stored as its msgpack form); ``version`` starts at 1 and grows by one per write."""

    id: str
    state: Any
    version: int
    created_at: float
    updated_at: float
    expires_at: float | None = None


class StoreHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The local database's health (`Store.health()`). Per-journal counts are keyed by journal
    name (``observations``, ``actions``); ``dropped`` counts rows removed by retention since
    start (``dropped_total``: over the database's life), ``queue_dropped`` rows never written
    because the write queue was full or the store unavailable."""

    state: Literal["ok", "degraded", "closed"]
    path: str
    size_bytes: int = 0
    schema_version: int = 0
    synchronous: str = "full"
    queue_depth: int = 0
    queue_capacity: int = 0
    rows: dict[str, int] = {}
    journal_bytes: dict[str, int] = {}
    dropped: dict[str, int] = {}
    dropped_total: dict[str, int] = {}
    queue_dropped: dict[str, int] = {}
    back_pressure: int = 0
    commits: int = 0
    last_error: str | None = None
    #: wall-clock time of the last successful commit
    last_commit: float | None = None


PluginState = Literal["starting", "ok", "failing", "degraded", "stopped", "disabled"]


class PluginStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Health of one configured plugin instance."""

    name: str
    plugin: str
    kind: Literal["sensor", "policy", "actuator"]
    state: PluginState
    calls: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None


class TickReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one tick did; handed to the tick sinks (journal, watch, telemetry)."""

    tick: int
    #: monotonic time the tick was due and actually started; ``lateness = started - scheduled``
    scheduled: float
    started: float
    lateness: float
    timings: StageTimings
    observation: Observation
    results: list[ActionResult] = []
    manual: bool = False


HealthStatus = Literal["ok", "degraded", "failing"]


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """`agentctl health`: the verdict and every reason for it (empty when ok)."""

    status: HealthStatus
    reasons: list[str] = []
    checked_at: float = 0.0


class MetricPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One current value of one metric (`agentctl metrics`). Histograms carry ``count``,
    ``sum`` and bucket-estimated ``p50``/``p99`` instead of ``value``."""

    name: str
    kind: Literal["counter", "updowncounter", "gauge", "histogram"]
    unit: str = ""
    attributes: dict[str, str | int | float | bool] = {}
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    p50: float | None = None
    p99: float | None = None
