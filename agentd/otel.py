"""The OpenTelemetry plumbing under agentd.telemetry: agentd's own metric readers (they add the
metrics agentd produces itself to every collection), the span batch processor with its drops
counted, the file and OTLP exporters, and MetricsData -> MetricPoint rows."""

from __future__ import annotations

import bisect
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, final

import msgspec
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agentd import __version__
from agentd.config import OTLP_MISSING, TelemetryConfig
from agentd.errors import ConfigError
from agentd.model import MetricPoint

__all__ = [
    "DURATION_BOUNDS",
    "BoundedSpanProcessor",
    "ExportState",
    "ExportingReader",
    "FileMetricExporter",
    "FileSpanExporter",
    "InProcessReader",
    "Points",
    "PresetIds",
    "Produced",
    "RotatingFile",
    "WatchedMetricExporter",
    "metric_points",
    "otlp_exporters",
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


# -- spans: preset ids, bounded batching with counted drops ----------------------------------
@final
class PresetIds(RandomIdGenerator):
    """Lets a span built after the fact keep the ids its tick's context already carried (and
    its log lines already printed). Set and consumed in one synchronous call on one thread."""

    def __init__(self) -> None:
        self.next_span_id = 0
        self.next_trace_id = 0

    def generate_span_id(self) -> int:
        sid, self.next_span_id = self.next_span_id, 0
        return sid or super().generate_span_id()

    def generate_trace_id(self) -> int:
        tid, self.next_trace_id = self.next_trace_id, 0
        return tid or super().generate_trace_id()


@final
class ExportState:
    """Whether exports succeed, logged when that changes (like a failing plugin): one line when
    the destination stops answering, one when it answers again, not one per attempt. The
    SDK's own per-attempt warnings are quieted where this is used."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.failing: set[str] = set()
        self._lock = threading.Lock()

    def result(self, signal: str, ok: bool, why: str = "") -> None:
        with self._lock:
            if ok and signal in self.failing:
                self.failing.discard(signal)
                log.warning("telemetry: %s export to %s works again", signal, self.destination)
            elif not ok and signal not in self.failing:
                self.failing.add(signal)
                log.error(
                    "telemetry: %s export to %s failed%s; dropping and counting until it works",
                    signal,
                    self.destination,
                    f" ({why})" if why else "",
                )


class _CountingExporter(SpanExporter):
    """Counts what the batch processor hands over and what fails to export (worker thread)."""

    def __init__(self, inner: SpanExporter, state: ExportState | None = None) -> None:
        self.inner = inner
        self.state = state
        self.taken = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - an exporter bug must not kill the worker
            log.warning("span export failed: %s: %s", type(exc).__name__, exc)
            result = SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        if not ok:
            self.failed += len(spans)
        if self.state is not None:
            self.state.result("span", ok, getattr(self.inner, "last_error", ""))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@final
class WatchedMetricExporter(MetricExporter):
    """A metric exporter whose results feed an ExportState (the reader's thread)."""

    def __init__(self, inner: MetricExporter, state: ExportState) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.state = state

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        ok = result is MetricExportResult.SUCCESS
        self.state.result("metric", ok, getattr(self.inner, "last_error", ""))
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


@final
class BoundedSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor (bounded queue, its own thread) with drops counted: spans
    enqueued minus spans taken by the exporter is the queue length."""

    def __init__(
        self,
        exporter: SpanExporter,
        max_queue: int,
        batch_size: int,
        state: ExportState | None = None,
    ) -> None:
        self.counting = _CountingExporter(exporter, state)
        super().__init__(
            self.counting,
            max_queue_size=max_queue,
            schedule_delay_millis=5000,
            max_export_batch_size=min(batch_size, max_queue),
        )
        self.max_queue = max_queue
        self.enqueued = 0
        self.dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        if self.enqueued - self.counting.taken - self.dropped >= self.max_queue:
            self.dropped += 1  # the batch processor drops the oldest one
        self.enqueued += 1
        super().on_end(span)

    @property
    def queued(self) -> int:
        return max(0, self.enqueued - self.counting.taken - self.dropped)


# -- file exporters: JSON lines, rotated by size ---------------------------------------------
@final
class RotatingFile:
    """Appends lines; at ``max_bytes`` the file becomes ``name.1`` (``.2`` ...), keeping
    ``keep`` old files: at most ``(keep + 1) * max_bytes`` on disk."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()

    def write_lines(self, lines: Iterable[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        if not data:
            return
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            with open(self.path, "ab") as f:
                f.write(data)

    def _rotate(self) -> None:
        for i in range(self.keep, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i - 1}" if i > 1 else self.path.name)
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description,
        "attributes": dict(span.attributes or {}),
    }


@final
class FileSpanExporter(SpanExporter):
    def __init__(self, out: RotatingFile) -> None:
        self.out = out
        self.last_error = ""
        self._encode = msgspec.json.Encoder().encode

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.out.write_lines(self._encode(_span_json(s)) for s in spans)
        except OSError as exc:
            self.last_error = f"cannot write {self.out.path}: {exc.strerror}"
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@final
class FileMetricExporter(MetricExporter):
    """One JSON line per collection: ``{"time_unix_nano", "metrics": [MetricPoint...]}``."""

    def __init__(self, out: RotatingFile) -> None:
        super().__init__()
        self.out = out
        self.last_error = ""
        self._encode = msgspec.json.Encoder().encode

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        line = {"time_unix_nano": time.time_ns(), "metrics": metric_points(metrics_data)}
        try:
            self.out.write_lines([self._encode(line)])
        except OSError as exc:
            self.last_error = f"cannot write {self.out.path}: {exc.strerror}"
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def otlp_exporters(config: TelemetryConfig) -> tuple[SpanExporter, MetricExporter]:
    try:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError([OTLP_MISSING]) from None
    # the exporters log every failed attempt; ExportState logs the state changes instead
    for name in ("opentelemetry.exporter", "opentelemetry.sdk._shared_internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    o = config.otlp
    base = o.endpoint.rstrip("/")
    compression = Compression.Gzip if o.compression == "gzip" else Compression.NoCompression
    exporters: list[Any] = []
    for cls, path in ((OTLPSpanExporter, "v1/traces"), (OTLPMetricExporter, "v1/metrics")):
        url = f"{base}/{path}"
        kw: dict[str, Any] = {
            "endpoint": url,
            "compression": compression,
            "headers": o.headers,
            "timeout": o.timeout,
        }
        try:
            exporters.append(cls(**kw, **_transport(url)))
        except TypeError:  # an exporter version without the transport argument
            exporters.append(cls(**kw, session=_session(url)))
    return exporters[0], exporters[1]


def _transport(url: str) -> dict[str, Any]:
    """Plain urllib3 when no proxy applies to the collector: the requests layer costs ~0.3 ms
    of CPU per export here (the OTLP exporter's own transport; requests when a proxy is set)."""
    from requests.utils import get_environ_proxies

    if get_environ_proxies(url):
        return {"session": _session(url)}
    try:
        from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
    except ImportError:
        return {"session": _session(url)}
    return {"_transport": Urllib3HTTPTransport()}


def _session(url: str) -> Any:
    """A requests session that reads the proxy environment (HTTPS_PROXY, NO_PROXY...) once,
    here, instead of scanning the whole environment on every export."""
    import requests
    from requests.utils import get_environ_proxies

    session = requests.Session()
    session.proxies = dict(get_environ_proxies(url))
    session.trust_env = False
    return session


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
