"""agentd's own metrics, aggregated cheaply in plain Python and handed to the SDK's readers at
collection time (they add what agentd produces itself to every collection), and MetricsData ->
MetricPoint rows (`agentctl metrics`, the file exporter)."""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final, final

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agentd import __version__
from agentd.model import MetricPoint

__all__ = [
    "DURATION_BOUNDS",
    "ExportingReader",
    "InProcessReader",
    "Points",
    "Produced",
    "metric_points",
]

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
_SCOPE = InstrumentationScope("agentd", __version__)


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
        ours = self.metrics()
        out: list[ResourceMetrics] = []
        for rm in data.resource_metrics:
            scopes = list(rm.scope_metrics)
            for i, sm in enumerate(scopes):
                if sm.scope.name == _SCOPE.name:
                    scopes[i] = ScopeMetrics(sm.scope, [*sm.metrics, *ours], sm.schema_url)
                    break
            else:
                scopes.append(ScopeMetrics(_SCOPE, ours, ""))
            out.append(ResourceMetrics(rm.resource, scopes, rm.schema_url))
            ours = []  # one resource carries them
        return MetricsData(out)


class InProcessReader(InMemoryMetricReader):
    """What `agentctl metrics` and health read: collected on demand, with the loop histograms."""

    def __init__(self, produced: Produced) -> None:
        super().__init__()
        self.produced = produced

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(self.produced.merge(metrics_data), timeout_millis, **kwargs)


class ExportingReader(PeriodicExportingMetricReader):
    def __init__(self, exporter: MetricExporter, interval: float, produced: Produced):
        super().__init__(
            exporter,
            export_interval_millis=interval * 1e3,
            export_timeout_millis=min(interval, 30.0) * 1e3,
        )
        self.produced = produced

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(self.produced.merge(metrics_data), timeout_millis, **kwargs)


# -- MetricsData -> MetricPoint rows (agentctl metrics, the file exporter) --------------------
def _quantile(point: HistogramDataPoint, q: float) -> float:
    """The upper bound of the bucket holding the q-quantile (the max for the last bucket)."""
    if point.count == 0:
        return 0.0
    rank = max(1, math.ceil(q * point.count))
    seen = 0
    bounds = point.explicit_bounds
    for i, n in enumerate(point.bucket_counts):
        seen += n
        if seen >= rank:
            return min(bounds[i], point.max) if i < len(bounds) else point.max
    return point.max


def metric_points(data: MetricsData) -> list[MetricPoint]:
    out: list[MetricPoint] = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                d = metric.data
                for p in d.data_points:
                    attrs = dict(p.attributes or {})
                    if isinstance(p, HistogramDataPoint):
                        out.append(
                            MetricPoint(
                                name=metric.name,
                                kind="histogram",
                                unit=metric.unit or "",
                                attributes=attrs,  # type: ignore[arg-type]
                                count=p.count,
                                sum=p.sum,
                                p50=_quantile(p, 0.5),
                                p99=_quantile(p, 0.99),
                            )
                        )
                    elif isinstance(p, NumberDataPoint):
                        if isinstance(d, Sum):
                            kind = "counter" if d.is_monotonic else "updowncounter"
                        else:
                            kind = "gauge"
                        out.append(
                            MetricPoint(
                                name=metric.name,
                                kind=kind,  # type: ignore[arg-type]
                                unit=metric.unit or "",
                                attributes=attrs,  # type: ignore[arg-type]
                                value=float(p.value),
                            )
                        )
    out.sort(key=lambda m: (m.name, sorted(m.attributes.items())))
    return out
