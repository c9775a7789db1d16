"""Export: the span batch processor with its drops counted, preset span ids, the export state
(failures logged on change), the file exporters (JSON lines, rotated by size) and the OTLP/HTTP
exporters (an optional extra)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, final

import msgspec
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from agentd.config import OTLP_MISSING, TelemetryConfig
from agentd.errors import ConfigError
from agentd.telemetry.metrics import metric_points

__all__ = [
    "BoundedSpanProcessor",
    "ExportState",
    "FileMetricExporter",
    "FileSpanExporter",
    "PresetIds",
    "RotatingFile",
    "WatchedMetricExporter",
    "otlp_exporters",
]

log = logging.getLogger("agentd.telemetry")


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
