"""The shared vocabulary: what flows through the perception loop, the store and the wire."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "HEALTH_EXIT_CODES",
    "Action",
    "ActionResult",
    "ActionStatus",
    "ConfigVersion",
    "ControlStats",
    "FleetCommand",
    "HealthReport",
    "HealthStatus",
    "MetricPoint",
    "Observation",
    "PluginDetail",
    "PluginInfo",
    "PluginKind",
    "PluginState",
    "PluginStatus",
    "ProcessInfo",
    "Reading",
    "Session",
    "StageTimings",
    "StatusReport",
    "StoreHealth",
    "Stream",
    "TickReport",
    "TickStats",
    "UplinkStatus",
    "UplinkStreamStatus",
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
    output: object = None
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
    state: object
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


PluginKind = Literal["sensor", "policy", "actuator", "uplink"]
PluginState = Literal["starting", "ok", "failing", "degraded", "stopped", "disabled"]


class PluginStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Health of one configured plugin instance."""

    name: str
    plugin: str
    kind: PluginKind
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


#: `agentctl health` exit codes: ok, degraded, failing (for ExecStartPost, cron, fleet tools);
#: apart from agentctl's own (1 error, 2 usage, 3 not running, 4 forbidden)
HEALTH_EXIT_CODES: dict[HealthStatus, int] = {"ok": 0, "degraded": 5, "failing": 6}


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


# -- replies of the control plane (agentd/control/handlers.py -> agentctl) --------------------
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
    kind: PluginKind
    state: PluginState
    calls: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    origin: str = "builtin"
    version: str = ""
    description: str = ""
    actions: list[str] = []


class PluginDetail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``plugin NAME``: a configured instance (every field) or, failing that, a registered
    plugin (``configured`` false: name, plugin and schema only; the rest left out)."""

    configured: bool
    name: str
    plugin: str
    kind: PluginKind | None = None
    state: PluginState | None = None
    calls: int | None = None
    errors: int | None = None
    consecutive_failures: int | None = None
    #: UNSET (left out) for a registered plugin; None or the message for an instance
    last_error: str | msgspec.UnsetType | None = msgspec.UNSET
    origin: str | None = None
    version: str | None = None
    description: str | None = None
    actions: list[str] | None = None
    #: the instance's config as TOML would give it (common keys first)
    config: dict[str, object] | None = None
    #: the plugin's JSON Schema (config and action params)
    schema: dict[str, object] | None = None


class ControlStats(msgspec.Struct, frozen=True, kw_only=True):
    """The control server's connection and request counters (in `StatusReport.control`)."""

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


#: the journals an uplink forwards (the store's and the uplink's ``Stream``)
Stream = Literal["observations", "actions", "events"]


#: an uplink engine's phase, and its health as `agentctl uplink`, health and metrics see it
UplinkPhase = Literal["stopped", "connecting", "connected", "backoff", "stopping"]
UplinkHealth = Literal["ok", "degraded"]


class UplinkStreamStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``uplink``: one stream of one uplink (made by `agentd.uplink.UplinkEngine.state`)."""

    stream: Stream
    #: the durable cursor: every id <= acked is acknowledged by the broker (or was a gap)
    acked: int
    #: the highest committed id of the journal
    head: int
    #: end_to_end: the fleet consumer's watermark (None without end_to_end)
    confirmed: int | None = None
    #: rows committed and not yet acknowledged, their bytes, the oldest one's age in seconds
    backlog: int = 0
    backlog_bytes: int = 0
    oldest_age: float | None = None
    #: batches sent and not yet answered
    in_flight: int = 0
    #: rows acknowledged since the uplink started, in how many batches
    delivered: int = 0
    batches: int = 0
    #: rows sent again after a lost link or a refused batch (the bound on duplicates seen)
    duplicates: int = 0
    #: rows reported lost (gap records), in how many records
    gap_rows: int = 0
    gaps: int = 0
    #: batches the broker refused (a PUBACK with a failure reason code)
    refused: int = 0
    last_error: str | None = None


class UplinkStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``uplink``: one configured uplink (`agentd.uplink.UplinkEngine.state`; also the
    ``uplink`` field of a fleet ``status`` reply)."""

    name: str
    node: str
    phase: UplinkPhase
    health: UplinkHealth
    #: why it is degraded (None when ok)
    reason: str | None = None
    connected: bool = False
    #: wall time of the last connect (when connected) or of the loss of the link
    since: float | None = None
    protocol: str = ""
    #: batches allowed in flight: min(window, the broker's Receive Maximum - 1)
    window: int = 0
    reconnects: int = 0
    last_error: str | None = None
    epoch: str = ""
    streams: list[UplinkStreamStatus] = []


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """``status``: everything `agentctl status` shows."""

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
    #: None when the store is disabled
    store: StoreHealth | None = None
    #: filled in by the control server: its connection and request counters
    control: ControlStats | None = None
    #: the configured uplinks (empty when there are none)
    uplinks: list[UplinkStatus] = []


class FleetCommand(msgspec.Struct, frozen=True, kw_only=True):
    """One command from the fleet and its outcome (`agentctl commands`)."""

    id: str
    verb: str
    sender: str
    topic: str
    received: float
    finished: float
    ok: bool
    code: str | None = None
    message: str | None = None
    #: the recorded outcome of an earlier delivery of the same id (nothing ran again)
    duplicate: bool = False
    #: why the reply did not reach the broker, if it did not
    reply_error: str | None = None


ConfigOutcome = Literal["probation", "committed", "rolled_back", "refused", "abandoned"]


class ConfigVersion(msgspec.Struct, frozen=True, kw_only=True):
    """A config version from the fleet and what became of it (`agentctl config history`)."""

    version: str
    outcome: ConfigOutcome
    at: float
    id: str = ""
    sender: str = ""
    reason: str = ""
    sha256: str = ""
