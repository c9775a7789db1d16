"""agentd watching itself: OpenTelemetry traces and metrics (docs/telemetry.md).

Cost is the design constraint: an SDK span costs tens of microseconds and an SDK histogram
record several, against a tick of a few hundred. So the hot path does almost nothing:

- **Traces.** Whether a tick is traced is decided up front (``tick_sample_ratio``); every tick
  gets a trace id in its context (cheap: no span) so its log lines carry it, and the loop notes
  each plugin call in a small list. After the tick, a span tree (tick -> stages -> plugin calls,
  with the real start and end times) is built only for a sampled tick, a failed one or one that
  overran. Control requests are always traced and continue the caller's ``traceparent``.
- **Metrics.** Per-tick histograms (lateness, stage durations) are bucketed in plain Python and
  handed to the SDK's readers at collection time; counters the loop already keeps are read by
  observable instruments; the rest (actions, control requests) are SDK counters on rare paths.
- **Export** runs in the SDK's threads with bounded queues; a collector that is down costs
  dropped (and counted) spans, never a late tick.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import msgspec
import psutil
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentd import __version__
from agentd.config import TelemetryConfig
from agentd.errors import ConfigError
from agentd.model import Action, ActionResult, MetricPoint, TickReport

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

    from agentd.loop import PerceptionLoop
    from agentd.plugins.handle import PluginHandle

__all__ = [
    "DURATION_BOUNDS",
    "Telemetry",
    "TickRecorder",
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
_NOT_OK: Final = frozenset({"failed", "timeout", "rejected"})
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
class _Produced:
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


class _InProcessReader(InMemoryMetricReader):
    """What `agentctl metrics` and health read: collected on demand, with the loop histograms."""

    def __init__(self, produced: _Produced) -> None:
        super().__init__()
        self.produced = produced

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(self.produced.merge(metrics_data), timeout_millis, **kwargs)


class _ExportingReader(PeriodicExportingMetricReader):
    def __init__(self, exporter: MetricExporter, interval: float, produced: _Produced):
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
class _PresetIds(RandomIdGenerator):
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
class _CountingExporter(SpanExporter):
    """Counts what the batch processor hands over and what fails to export (worker thread)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.taken = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - an exporter bug must not kill the worker
            log.warning("span export failed: %s: %s", type(exc).__name__, exc)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@final
class _BoundedSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor (bounded queue, its own thread) with drops counted: spans
    enqueued minus spans taken by the exporter is the queue length."""

    def __init__(self, exporter: SpanExporter, max_queue: int, batch_size: int) -> None:
        self.counting = _CountingExporter(exporter)
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
class _RotatingFile:
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
class _FileSpanExporter(SpanExporter):
    def __init__(self, out: _RotatingFile) -> None:
        self.out = out
        self._encode = msgspec.json.Encoder().encode

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.out.write_lines(self._encode(_span_json(s)) for s in spans)
        except OSError as exc:
            log.warning("cannot write spans to %s: %s", self.out.path, exc.strerror)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@final
class _FileMetricExporter(MetricExporter):
    """One JSON line per collection: ``{"time_unix_nano", "metrics": [MetricPoint...]}``."""

    def __init__(self, out: _RotatingFile) -> None:
        super().__init__()
        self.out = out
        self._encode = msgspec.json.Encoder().encode

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        line = {"time_unix_nano": time.time_ns(), "metrics": metric_points(metrics_data)}
        try:
            self.out.write_lines([self._encode(line)])
        except OSError as exc:
            log.warning("cannot write metrics to %s: %s", self.out.path, exc.strerror)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _otlp_exporters(config: TelemetryConfig) -> tuple[SpanExporter, MetricExporter]:
    try:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            [
                "telemetry.exporter: 'otlp' needs the optional OTLP exporter, which is not "
                "installed (pip install 'agentd[otlp]')"
            ]
        ) from None
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


# -- what the loop and the control plane call ------------------------------------------------
@final
class TickRecorder:
    """One tick's notes, kept only while telemetry traces: the ids its context carries, and a
    tuple per plugin call. Building spans from them happens after the tick, and only if the
    tick is sampled, failed or overran."""

    __slots__ = ("calls", "parent", "policies", "sampled", "span_id", "token", "trace_id")

    def __init__(self, trace_id: int, span_id: int, sampled: bool, parent: Any) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.parent = parent
        self.token: object = None
        #: (kind, name, start, end, error) with monotonic times
        self.calls: list[tuple[str, str, float, float, str | None]] = []
        #: (name, handle, start, errors before): a policy's end is the next one's start
        self.policies: list[tuple[str, PluginHandle, float, int]] = []

    def call(self, kind: str, name: str, start: float, end: float, error: str | None) -> None:
        self.calls.append((kind, name, start, end, error))

    def policy(self, name: str, handle: PluginHandle) -> None:
        self.policies.append((name, handle, time.monotonic(), handle.errors))


ActionRun = Callable[[Action, "int | None"], Awaitable[ActionResult]]


@final
class Telemetry:
    """Providers, instruments and exporters for one daemon. ``Telemetry(config, state_dir)``;
    extra span processors and metric readers (tests: the SDK's in-memory ones) may be added."""

    def __init__(
        self,
        config: TelemetryConfig,
        state_dir: Path,
        *,
        span_processors: Sequence[SpanProcessor] = (),
        metric_readers: Sequence[MetricReader] = (),
    ) -> None:
        self.config = config
        self.loop: PerceptionLoop | None = None
        #: the current plugin handles (the daemon replaces them on reload)
        self.handles: Callable[[], Iterable[PluginHandle]] = tuple
        #: the store's figures (`Store.health`), when there is a store
        self.store: Callable[[], Any] | None = None
        self.produced = _Produced()
        self.recent: deque[tuple[float, float]] = deque(maxlen=10_000)
        self._random = random.random
        self._ratio = config.tick_sample_ratio
        self._ids = _PresetIds()
        self._propagator = TraceContextTextMapPropagator()
        self._processor: _BoundedSpanProcessor | None = None
        self._closed = False
        resource = Resource.create(
            {
                "service.name": "agentd",
                "service.version": __version__,
                "service.instance.id": _instance_id(),
                "host.name": socket.gethostname(),
                **config.resource,
            }
        )
        span_exporter: SpanExporter | None = None
        metric_exporter: MetricExporter | None = None
        if config.exporter == "file":
            directory = state_dir / "telemetry"
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            f = config.file
            span_exporter = _FileSpanExporter(
                _RotatingFile(directory / "spans.jsonl", f.max_bytes, f.keep)
            )
            metric_exporter = _FileMetricExporter(
                _RotatingFile(directory / "metrics.jsonl", f.max_bytes, f.keep)
            )
        elif config.exporter == "otlp":
            span_exporter, metric_exporter = _otlp_exporters(config)

        self.reader = _InProcessReader(self.produced)
        readers: list[MetricReader] = [self.reader, *metric_readers]
        #: the periodic exporting reader (file, otlp), if any
        self.exporting: MetricReader | None = None
        if metric_exporter is not None:
            self.exporting = _ExportingReader(
                metric_exporter, config.metrics_interval, self.produced
            )
            readers.append(self.exporting)
        self.meter_provider = MeterProvider(
            metric_readers=readers,
            resource=resource,
            shutdown_on_exit=False,
            # exemplars would tie metric points to trace ids: a cost on every record, no use here
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        self.tracer_provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        if span_exporter is not None or span_processors:
            self.tracer_provider = TracerProvider(
                sampler=ALWAYS_ON,  # sampling is decided here, per tick, up front
                resource=resource,
                id_generator=self._ids,
                shutdown_on_exit=False,
            )
            if span_exporter is not None:
                self._processor = _BoundedSpanProcessor(
                    span_exporter, config.max_queue, config.batch_size
                )
                self.tracer_provider.add_span_processor(self._processor)
            for processor in span_processors:
                self.tracer_provider.add_span_processor(processor)
            self.tracer = self.tracer_provider.get_tracer("agentd", __version__)
        self._instruments()

    # -- instruments -------------------------------------------------------------------------
    def _instruments(self) -> None:
        m = self.meter_provider.get_meter("agentd", __version__)
        counter = m.create_observable_counter
        gauge = m.create_observable_up_down_counter
        src = self.produced.sources
        src["agentd.loop.ticks"] = ("counter", "{tick}", "Ticks run", self._ticks)
        src["agentd.loop.overruns"] = (
            "counter",
            "{tick}",
            "Ticks that ran past the next deadline",
            self._overruns,
        )
        src["agentd.loop.skipped_ticks"] = (
            "counter",
            "{tick}",
            "Deadlines skipped after overruns",
            self._skipped,
        )
        src["agentd.plugin.errors"] = (
            "counter",
            "{error}",
            "Failed plugin calls, by plugin instance",
            self._plugin_errors,
        )
        src["agentd.telemetry.span.queue.size"] = (
            "updowncounter",
            "{span}",
            "Spans waiting for export",
            self._span_queue,
        )
        src["agentd.telemetry.spans.dropped"] = (
            "counter",
            "{span}",
            "Spans lost: queue full or export failed",
            self._spans_dropped,
        )
        src["agentd.store.queue.depth"] = (
            "updowncounter",
            "{write}",
            "Store writes queued",
            self._store_queue,
        )
        src["agentd.store.journal.dropped"] = (
            "counter",
            "{row}",
            "Journal rows dropped by retention or because the write queue was full",
            self._store_dropped,
        )
        gauge("process.memory.usage", [self._rss], "By", "Resident set size")
        counter("process.cpu.time", [self._cpu], "s", "CPU time by mode")
        gauge("process.open_file_descriptor.count", [self._fds], "{file_descriptor}", "Open fds")
        gauge("process.thread.count", [self._threads], "{thread}", "Threads")
        self._actions = m.create_counter(
            "agentd.actions", "{action}", "Actions run, by actuator and result status"
        )
        self._control = m.create_counter(
            "agentd.control.requests", "{request}", "Control requests, by command and result"
        )
        self._process = psutil.Process()
        self._proc_now: tuple[int, Any, int] = (0, None, 0)
        self._proc_at = -math.inf
        self._err_seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._err_base: dict[tuple[str, str], int] = {}

    def _loop_value(self, name: str) -> Points:
        loop = self.loop
        return [(getattr(loop, name), {})] if loop is not None else []

    def _ticks(self) -> Points:
        return self._loop_value("ticks")

    def _overruns(self) -> Points:
        return self._loop_value("overruns")

    def _skipped(self) -> Points:
        return self._loop_value("skipped")

    def _plugin_errors(self) -> Points:
        out: Points = []
        for h in list(self.handles()):
            key = (h.kind, h.name)
            seen = self._err_seen.get(key)
            if seen is not None and seen[0] != id(h):  # rebuilt by a reload: keep counting up
                self._err_base[key] = self._err_base.get(key, 0) + seen[1]
            self._err_seen[key] = (id(h), h.errors)
            total = self._err_base.get(key, 0) + h.errors
            out.append((total, {"agentd.plugin": h.name, "agentd.plugin.kind": h.kind}))
        return out

    def _span_queue(self) -> Points:
        p = self._processor
        return [(p.queued, {})] if p is not None else []

    def _spans_dropped(self) -> Points:
        p = self._processor
        if p is None:
            return []
        return [
            (p.dropped, {"agentd.reason": "queue_full"}),
            (p.counting.failed, {"agentd.reason": "export_failed"}),
        ]

    def _store_health(self) -> Any:
        return self.store() if self.store is not None else None

    def _store_queue(self) -> Points:
        h = self._store_health()
        return [(h.queue_depth, {})] if h is not None else []

    def _store_dropped(self) -> Points:
        h = self._store_health()
        if h is None:
            return []
        out: Points = [
            (n, {"agentd.journal": name, "agentd.reason": "retention"})
            for name, n in h.dropped.items()
        ]
        out += [
            (n, {"agentd.journal": name, "agentd.reason": "queue_full"})
            for name, n in h.queue_dropped.items()
        ]
        return out

    def watch_store(self, store: Any) -> None:
        """Read the store's figures (``store.health()``) and time its commits: through its
        ``on_commit`` hook if it has one, else by wrapping its batch commit."""
        self.store = store.health
        buckets = self.produced.store_write
        if hasattr(store, "on_commit"):
            store.on_commit = buckets.add
            return
        commit = getattr(store, "_commit_batch", None)
        if commit is None:
            return

        async def timed() -> Any:
            start = time.perf_counter()
            try:
                return await commit()
            finally:
                buckets.add(time.perf_counter() - start)

        store._commit_batch = timed

    def _proc(self) -> tuple[int, Any, int]:
        """One read of /proc/self shared by the process instruments of one collection."""
        now = time.monotonic()
        if now - self._proc_at > 0.5:
            p = self._process
            with p.oneshot():
                self._proc_now = (p.memory_info().rss, p.cpu_times(), p.num_threads())
            self._proc_at = now
        return self._proc_now

    def _rss(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._proc()[0])]

    def _cpu(self, _: CallbackOptions) -> Iterable[Observation]:
        t = self._proc()[1]
        return [
            Observation(t.user, {"cpu.mode": "user"}),
            Observation(t.system, {"cpu.mode": "system"}),
        ]

    def _fds(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._process.num_fds())]

    def _threads(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._proc()[2])]

    # -- the loop's hooks ----------------------------------------------------------------------
    def begin_tick(self, tick: int) -> TickRecorder | None:
        """Called as a tick starts. Returns None when nothing traces."""
        if self.tracer is None:
            return None
        current = trace.get_current_span()
        if current.is_recording():  # a control request (`agentctl tick`): traced, in its trace
            rec = TickRecorder(
                current.get_span_context().trace_id,
                random.getrandbits(64) or 1,
                True,
                otel_context.get_current(),
            )
        else:
            rec = TickRecorder(
                random.getrandbits(128) or 1,
                random.getrandbits(64) or 1,
                self._random() < self._ratio,
                None,
            )
        flags = TraceFlags(TraceFlags.SAMPLED if rec.sampled else TraceFlags.DEFAULT)
        span = NonRecordingSpan(SpanContext(rec.trace_id, rec.span_id, False, flags))
        rec.token = otel_context.attach(trace.set_span_in_context(span))
        return rec

    def end_tick(
        self, report: TickReport, rec: TickRecorder | None, t0: float, t1: float, t2: float
    ) -> None:
        """Called after each tick (before the sinks): metrics, and spans when they are due."""
        timings = report.timings
        produced = self.produced
        if not report.manual:
            produced.lateness.add(report.lateness)
            self.recent.append((report.started, report.lateness))
        stages = produced.stages
        stages["perceive"].add(timings.perceive)
        stages["decide"].add(timings.decide)
        stages["act"].add(timings.act)
        stages["tick"].add(timings.total)
        if rec is None:
            return
        otel_context.detach(rec.token)  # type: ignore[arg-type]
        failed = bool(report.observation.errors) or any(r.status in _NOT_OK for r in report.results)
        if not failed:
            failed = any(h.errors != before for _, h, _, before in rec.policies)
        loop = self.loop
        slow = loop is not None and timings.total > loop.interval
        if rec.sampled or slow or (failed and self.config.sample_failed_ticks):
            self._build_tick(report, rec, (t0, t1, t2, t0 + timings.total), failed, slow)

    def _build_tick(
        self,
        report: TickReport,
        rec: TickRecorder,
        marks: tuple[float, float, float, float],
        failed: bool,
        slow: bool,
    ) -> None:
        tracer = self.tracer
        assert tracer is not None
        offset = time.time_ns() - time.monotonic_ns()

        def ns(mono: float) -> int:
            return int(mono * 1e9) + offset

        t0, t1, t2, t3 = marks
        reason = "control" if rec.parent is not None else "ratio" if rec.sampled else "failed"
        if slow and not rec.sampled:
            reason = "overrun"
        self._ids.next_trace_id, self._ids.next_span_id = rec.trace_id, rec.span_id
        root = tracer.start_span(
            "agentd.tick",
            context=rec.parent,
            start_time=ns(t0),
            attributes={
                "agentd.tick": report.tick,
                "agentd.tick.manual": report.manual,
                "agentd.tick.lateness": report.lateness,
                "agentd.tick.sampled_by": reason,
                "agentd.tick.actions": len(report.results),
            },
        )
        self._ids.next_trace_id = self._ids.next_span_id = 0
        if failed:
            root.set_status(Status(StatusCode.ERROR, _failure_summary(report)))
        in_root = trace.set_span_in_context(root)
        errors = report.observation.errors
        stage_spans = []
        for name, start, end in (("perceive", t0, t1), ("decide", t1, t2), ("act", t2, t3)):
            stage = tracer.start_span(f"agentd.{name}", context=in_root, start_time=ns(start))
            stage_spans.append((stage, end))
        perceive, decide, act = (trace.set_span_in_context(s) for s, _ in stage_spans)
        for kind, name, start, end, error in rec.calls:
            self._call_span(tracer, perceive, kind, name, ns(start), ns(end), error)
        policies = rec.policies
        for i, (name, handle, start, before) in enumerate(policies):
            end = policies[i + 1][2] if i + 1 < len(policies) else t2
            error = handle.last_error if handle.errors != before else None
            self._call_span(tracer, decide, "policy", name, ns(start), ns(end), error)
        for r in report.results:
            end_ns = int(r.finished_at * 1e9)
            span = tracer.start_span(
                "agentd.actuator.act",
                context=act,
                start_time=end_ns - int(r.duration * 1e9),
                attributes=_action_attributes(r),
            )
            if r.status in _NOT_OK:
                span.set_status(Status(StatusCode.ERROR, r.error or r.status))
            span.end(end_time=end_ns)
        del errors
        for stage, end in stage_spans:
            stage.end(end_time=ns(end))
        root.end(end_time=ns(t3))

    @staticmethod
    def _call_span(
        tracer: trace.Tracer,
        parent: Any,
        kind: str,
        name: str,
        start: int,
        end: int,
        error: str | None,
    ) -> None:
        span = tracer.start_span(
            f"agentd.{kind}.{'perceive' if kind == 'sensor' else 'decide'}",
            context=parent,
            start_time=start,
            attributes={
                "agentd.plugin": name,
                "agentd.plugin.kind": kind,
                "agentd.status": "ok" if error is None else "error",
                "agentd.attempts": 1,
            },
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

    async def run_action(self, action: Action, tick: int | None, run: ActionRun) -> ActionResult:
        """The action runner's hook: counts every action; inside a traced request (e.g.
        `agentctl act`) the actuator call is a live child span."""
        span = None
        token = None
        tracer = self.tracer
        if tracer is not None and trace.get_current_span().is_recording():
            span = tracer.start_span(
                "agentd.actuator.act",
                attributes={"agentd.plugin": action.actuator, "agentd.action": action.name},
            )
            token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = await run(action, tick)
        except BaseException as exc:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
        self._actions.add(
            1, {"agentd.actuator": action.actuator, "agentd.action.status": result.status}
        )
        if span is not None:
            span.set_attributes(_action_attributes(result))
            if result.status in _NOT_OK:
                span.set_status(Status(StatusCode.ERROR, result.error or result.status))
            span.end()
        return result

    # -- the control plane's hook ------------------------------------------------------------
    def request_hook(self, ctx: Any) -> Callable[[str | None], None]:
        """`ControlServer.hooks` entry: runs in the request's own copied context, so the span
        set current here is the parent of everything the request does (an `act`, a `tick`).
        The span continues the caller's W3C ``traceparent`` and is always sampled. Returns the
        finisher the server calls with the error code (None: ok) once the reply is sent."""
        command: str = ctx.request.cmd
        traceparent: str | None = ctx.request.traceparent
        span = None
        tracer = self.tracer
        if tracer is not None:
            parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
            span = tracer.start_span(
                f"agentd.control {command}",
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={"agentd.control.command": command},
            )
            # not detached: the server discards this request's copied context afterwards
            otel_context.attach(trace.set_span_in_context(span))

        def finish(code: str | None) -> None:
            result = code or "ok"
            if span is not None:
                span.set_attribute("agentd.control.result", result)
                if code is not None:
                    span.set_status(Status(StatusCode.ERROR, code))
                span.end()
            self._control.add(
                1, {"agentd.control.command": command, "agentd.control.result": result}
            )

        return finish

    # -- reading -------------------------------------------------------------------------------
    def collect(self) -> list[MetricPoint]:
        """Current values from the in-process reader. Runs the observable callbacks (psutil):
        call it off the loop (``asyncio.to_thread``)."""
        data = self.reader.get_metrics_data()
        return metric_points(data) if data is not None else []

    def recent_lateness_p99(self, window: float) -> float | None:
        """p99 tick lateness over the last ``window`` seconds (None without ticks in it)."""
        since = time.monotonic() - window
        values = sorted(lat for started, lat in list(self.recent) if started >= since)
        if not values:
            return None
        return values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)]

    @property
    def spans_dropped(self) -> int:
        p = self._processor
        return p.dropped + p.counting.failed if p is not None else 0

    @property
    def spans_queued(self) -> int:
        p = self._processor
        return p.queued if p is not None else 0

    def shutdown(self, timeout: float) -> bool:
        """Flush and stop the providers, giving up after ``timeout`` seconds (a collector that
        is down must not hold shutdown). Blocking: run it in a thread. True if finished."""
        if self._closed:
            return True
        self._closed = True
        done = threading.Event()

        def close() -> None:
            try:
                if self.tracer_provider is not None:
                    self.tracer_provider.shutdown()
                self.meter_provider.shutdown(timeout_millis=timeout * 1e3)
            except Exception as exc:  # noqa: BLE001 - shutdown must go on
                log.warning("telemetry shutdown: %s: %s", type(exc).__name__, exc)
            finally:
                done.set()

        # a daemon thread: if an exporter hangs past the timeout, process exit is not held
        threading.Thread(target=close, name="agentd-telemetry-close", daemon=True).start()
        if not done.wait(timeout):
            log.warning("telemetry: exporters still busy after %gs; giving up on them", timeout)
            return False
        return True


def _action_attributes(r: ActionResult) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "agentd.plugin": r.action.actuator,
        "agentd.plugin.kind": "actuator",
        "agentd.action": r.action.name,
        "agentd.status": r.status,
        "agentd.attempts": r.attempts,
    }
    if r.action.source:
        attrs["agentd.action.source"] = r.action.source
    return attrs


def _failure_summary(report: TickReport) -> str:
    parts = [f"sensor {name}: {err}" for name, err in report.observation.errors.items()]
    parts += [
        f"action {r.action.actuator}.{r.action.name}: {r.status}"
        for r in report.results
        if r.status in _NOT_OK
    ]
    return "; ".join(parts)[:500] or "a policy failed"


def _instance_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()


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
