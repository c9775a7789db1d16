"""agentd's own metrics, aggregated cheaply in plain Python (`Produced`) and handed to the
SDK's readers at collection time. Importing this module does not import the OpenTelemetry
SDK: its data classes are imported when a collection is made, so a daemon whose metrics
nothing reads or exports never loads the SDK (issue #18: about 2 MiB)."""

from __future__ import annotations

import bisect
import logging
import math
import time
from array import array
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, Final, final

from agentd import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import HistogramDataPoint, Metric, MetricsData
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["DURATION_BOUNDS", "Points", "Produced", "RecentTicks", "Tally"]

log = logging.getLogger("agentd.telemetry")

#: histogram bucket bounds in seconds (lateness, durations): 100 us .. 10 s
DURATION_BOUNDS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_STAGES: Final = ("perceive", "decide", "act", "tick")


@final
class RecentTicks:
    """The last ``size`` ticks' (start, lateness), for the health check's p99 over a window:
    two float arrays used as a ring, 16 bytes a tick where a deque of tuples costs about 110
    (1 MiB at 10,000 ticks, kept for good: issue #18). They grow as ticks come, up to
    ``size``, then the oldest entry is overwritten."""

    __slots__ = ("_lateness", "_next", "_started", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._started = array("d")
        self._lateness = array("d")
        self._next = 0  # where the next entry goes once the arrays are full

    def append(self, started: float, lateness: float) -> None:
        if len(self._started) < self.size:
            self._started.append(started)
            self._lateness.append(lateness)
            return
        i = self._next
        self._started[i] = started
        self._lateness[i] = lateness
        self._next = i + 1 if i + 1 < self.size else 0

    def lateness_since(self, since: float) -> list[float]:
        """The lateness of each kept tick that started at or after ``since`` (any order)."""
        started, lateness = self._started, self._lateness
        return [lateness[i] for i in range(len(lateness)) if started[i] >= since]

    def __len__(self) -> int:
        return len(self._started)


@cache
def scope() -> InstrumentationScope:
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    return InstrumentationScope("agentd", __version__)


# -- cheap local aggregation, exported as OpenTelemetry histograms ---------------------------
@final
class _Buckets:
    """An explicit-bucket histogram in plain Python: ``add`` is a bisect and three updates,
    written by the loop thread only and read by the readers' threads."""

    __slots__ = ("counts", "max", "min", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BOUNDS, value)] += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def point(self, attributes: dict[str, Any], start: int, now: int) -> HistogramDataPoint:
        from opentelemetry.sdk.metrics.export import HistogramDataPoint

        counts = list(self.counts)
        n = sum(counts)
        return HistogramDataPoint(
            attributes=attributes,
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=n,
            sum=self.sum,
            bucket_counts=counts,
            explicit_bounds=DURATION_BOUNDS,
            min=self.min if n else 0.0,
            max=self.max if n else 0.0,
        )


#: (value, attributes) pairs of one metric
Points = list[tuple[float, dict[str, Any]]]


@final
class Produced:
    """Metrics made here rather than by SDK instruments, added to every collection the readers
    make: the per-tick histograms (an SDK histogram record costs microseconds, a bucket add
    here a fraction of one) and the counters the loop, the store and the span processor keep
    anyway (read at collection time; an SDK observable instrument would cost more per export).
    The SDK still aggregates the process gauges and the action and control counters."""

    def __init__(self) -> None:
        self.start = time.time_ns()
        self.lateness = _Buckets()
        self.stages = {stage: _Buckets() for stage in _STAGES}
        self.store_write = _Buckets()
        #: name -> (kind, unit, description, read()): sums and gauges read at collection time
        self.sources: dict[str, tuple[str, str, str, Callable[[], Points]]] = {}

    def _read(self, now: int) -> list[Metric]:
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Metric,
            NumberDataPoint,
            Sum,
        )

        out = []
        for name, (kind, unit, description, read) in self.sources.items():
            try:
                points = read()
            except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the rest
                log.debug("metric %s: %s: %s", name, type(exc).__name__, exc)
                continue
            if not points:
                continue
            data = [NumberDataPoint(a, self.start, now, v) for v, a in points]
            out.append(
                Metric(
                    name=name,
                    description=description,
                    unit=unit,
                    data=Sum(
                        data_points=data,
                        aggregation_temporality=AggregationTemporality.CUMULATIVE,
                        is_monotonic=kind == "counter",
                    ),
                )
            )
        return out

    def metrics(self) -> list[Metric]:
        from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram, Metric

        now = time.time_ns()
        cumulative = AggregationTemporality.CUMULATIVE
        return [
            *self._read(now),
            Metric(
                name="agentd.loop.tick.lateness",
                description="How late each scheduled tick started (actual - scheduled start)",
                unit="s",
                data=Histogram(
                    data_points=[self.lateness.point({}, self.start, now)],
                    aggregation_temporality=cumulative,
                ),
            ),
            Metric(
                name="agentd.loop.stage.duration",
                description="Duration of each tick stage (perceive, decide, act) and the tick",
                unit="s",
                data=Histogram(
                    data_points=[
                        b.point({"agentd.loop.stage": stage}, self.start, now)
                        for stage, b in self.stages.items()
                    ],
                    aggregation_temporality=cumulative,
                ),
            ),
            Metric(
                name="agentd.store.write.duration",
                description="Duration of each store transaction (a batch of queued writes)",
                unit="s",
                data=Histogram(
                    data_points=[self.store_write.point({}, self.start, now)],
                    aggregation_temporality=cumulative,
                ),
            ),
        ]

    def merge(self, data: MetricsData) -> MetricsData:
        from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics

        ours = self.metrics()
        _scope = scope()
        out: list[ResourceMetrics] = []
        for rm in data.resource_metrics:
            scopes = list(rm.scope_metrics)
            for i, sm in enumerate(scopes):
                if sm.scope.name == _scope.name:
                    scopes[i] = ScopeMetrics(sm.scope, [*sm.metrics, *ours], sm.schema_url)
                    break
            else:
                scopes.append(ScopeMetrics(_scope, ours, ""))
            out.append(ResourceMetrics(rm.resource, scopes, rm.schema_url))
            ours = []  # one resource carries them
        return MetricsData(out)


@final
class Tally:
    """A counter by attributes with the SDK counter's ``add``, kept in plain Python until
    the SDK is loaded (`Telemetry` builds it on the first collection or export), then handing
    its totals and every later ``add`` to the SDK counter it ``forward``\\s to. The lock covers
    the hand-over: an ``add`` from the loop thread is counted once, here or there."""

    __slots__ = ("_counts", "_lock", "_target")

    def __init__(self) -> None:
        import threading

        self._counts: dict[tuple[tuple[str, Any], ...], int] = {}
        self._lock = threading.Lock()
        self._target: Any = None

    def add(self, amount: int, attributes: dict[str, Any]) -> None:
        with self._lock:
            if self._target is not None:
                self._target.add(amount, attributes)
                return
            key = tuple(sorted(attributes.items()))
            self._counts[key] = self._counts.get(key, 0) + amount

    def forward(self, target: Any) -> None:
        """From now on count into ``target`` (an SDK counter), starting with the totals."""
        with self._lock:
            for key, n in self._counts.items():
                target.add(n, dict(key))
            self._counts.clear()
            self._target = target
