"""The SDK's readers that add what agentd produces itself (agentd/telemetry/produced.py) to
every collection, and MetricsData -> MetricPoint rows (`agentctl metrics`, the file exporter).
This module imports the OpenTelemetry SDK: `Telemetry` imports it only when metrics are
collected or exported."""

from __future__ import annotations

import logging
import math
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    Sum,
)

from agentd.model import MetricPoint
from agentd.telemetry.produced import DURATION_BOUNDS, Points, Produced

__all__ = [
    "DURATION_BOUNDS",
    "ExportingReader",
    "InProcessReader",
    "Points",
    "Produced",
    "metric_points",
]

log = logging.getLogger("agentd.telemetry")


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
