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
- **The SDK is loaded when something uses it**: an exporter (file, otlp), or the first
  collection (`agentctl metrics`). With ``exporter = "none"`` (the default) and nobody asking,
  the daemon never imports it: about 2 MiB of a ~30 MiB process (issue #18). Until then the
  action and control counters are plain `Tally`\\s, handed to the SDK's counters when it loads.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import psutil

from agentd import __version__
from agentd.config import TelemetryConfig
from agentd.model import MetricPoint, UplinkStatus
from agentd.telemetry.produced import Points, Produced, RecentTicks, Tally
from agentd.telemetry.spans import LoopFigures, TickRecorder, TickSpans

if TYPE_CHECKING:
    from opentelemetry import trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, MetricsData
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from agentd.loop import TickSpan
    from agentd.model import TickReport
    from agentd.plugins.handle import PluginHandle
    from agentd.telemetry.export import BoundedSpanProcessor, ExportState
    from agentd.telemetry.metrics import InProcessReader
    from agentd.telemetry.prometheus import PrometheusEndpoint

__all__ = ["LoopFigures", "Telemetry", "TickRecorder", "metric_points"]

log = logging.getLogger("agentd.telemetry")

_NOT_OK: Final = frozenset({"failed", "timeout", "rejected"})


@final
class Telemetry(TickSpans):
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
        #: what `observe` hands in: the loop's counters, the plugins, the store's figures
        self.loop: LoopFigures | None = None
        self.handles: Callable[[], Iterable[PluginHandle]] = tuple
        self.store: Callable[[], Any] | None = None
        self.produced = Produced()
        self.recent = RecentTicks(10_000)
        self._random = random.random
        self._ratio = config.tick_sample_ratio
        self._processor: BoundedSpanProcessor | None = None
        self._closed = False
        self._state_dir = state_dir
        self._actions = Tally()
        self._control = Tally()
        self._sdk_lock = threading.Lock()
        #: the SDK's providers and readers: built by `_load_sdk`, at once when something
        #: exports or extra readers/processors are given, else on the first `collect`
        self.meter_provider: MeterProvider | None = None
        self.reader: InProcessReader | None = None
        #: the periodic exporting reader (file, otlp), if any
        self.exporting: MetricReader | None = None
        self.tracer_provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        #: export failures, logged on state change (file: a full or read-only disk)
        self.export_state: ExportState | None = None
        #: [telemetry] prometheus: /metrics (agentd/telemetry/prometheus.py); its reader is
        #: an SDK reader, so the SDK loads at start when it is configured
        self.prometheus: PrometheusEndpoint | None = None
        self._sources()
        if config.exporter != "none" or span_processors or metric_readers or config.prometheus:
            self._load_sdk(span_processors, metric_readers)

    def _load_sdk(
        self,
        span_processors: Sequence[SpanProcessor] = (),
        metric_readers: Sequence[MetricReader] = (),
    ) -> InProcessReader:
        """Import the SDK and build the providers, the exporters and the instruments (once;
        from the loop at start, or from a `collect` thread). Returns the in-process reader."""
        with self._sdk_lock:
            if self.reader is not None:
                return self.reader
            from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            from agentd.telemetry.export import (
                BoundedSpanProcessor,
                ExportState,
                FileMetricExporter,
                FileSpanExporter,
                PresetIds,
                RotatingFile,
                WatchedMetricExporter,
                otlp_exporters,
            )
            from agentd.telemetry.metrics import ExportingReader, InProcessReader

            config, state_dir = self.config, self._state_dir
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
                span_exporter = FileSpanExporter(
                    RotatingFile(directory / "spans.jsonl", f.max_bytes, f.keep)
                )
                metric_exporter = FileMetricExporter(
                    RotatingFile(directory / "metrics.jsonl", f.max_bytes, f.keep)
                )
            elif config.exporter == "otlp":
                span_exporter, metric_exporter = otlp_exporters(config)
            self.export_state = ExportState(
                config.otlp.endpoint if config.exporter == "otlp" else str(state_dir / "telemetry")
            )
            if metric_exporter is not None:
                metric_exporter = WatchedMetricExporter(metric_exporter, self.export_state)

            reader = InProcessReader(self.produced)
            readers: list[MetricReader] = [reader, *metric_readers]
            if config.prometheus:
                from agentd.telemetry.prometheus import PrometheusEndpoint

                self.prometheus = PrometheusEndpoint(config.prometheus, self.produced)
                readers.append(self.prometheus.reader)
            if metric_exporter is not None:
                self.exporting = ExportingReader(
                    metric_exporter, config.metrics_interval, self.produced
                )
                readers.append(self.exporting)
            self.meter_provider = MeterProvider(
                metric_readers=readers,
                resource=resource,
                shutdown_on_exit=False,
                # exemplars would tie metric points to trace ids: a cost on every record
                exemplar_filter=AlwaysOffExemplarFilter(),
            )
            if span_exporter is not None or span_processors:
                self._ids = PresetIds()
                self.tracer_provider = TracerProvider(
                    sampler=ALWAYS_ON,  # sampling is decided here, per tick, up front
                    resource=resource,
                    id_generator=self._ids,
                    shutdown_on_exit=False,
                )
                if span_exporter is not None:
                    self._processor = BoundedSpanProcessor(
                        span_exporter, config.max_queue, config.batch_size, self.export_state
                    )
                    self.tracer_provider.add_span_processor(self._processor)
                for processor in span_processors:
                    self.tracer_provider.add_span_processor(processor)
                self._propagator = TraceContextTextMapPropagator()
                self.tracer = self.tracer_provider.get_tracer("agentd", __version__)
            self._instruments(self.meter_provider)
            self.reader = reader
            return reader

    # -- instruments -------------------------------------------------------------------------
    def _sources(self) -> None:
        """The figures read at collection time (no SDK needed until then)."""
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
        self._process = psutil.Process()
        self._proc_now: tuple[int, Any, int] = (0, None, 0)
        self._proc_at = -math.inf
        self._err_seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._err_base: dict[tuple[str, str], int] = {}

    def _instruments(self, provider: MeterProvider) -> None:
        """The SDK's own instruments: process gauges, and the action and control counters
        (what the tallies counted so far is handed over)."""
        m = provider.get_meter("agentd", __version__)
        counter = m.create_observable_counter
        gauge = m.create_observable_up_down_counter
        gauge("process.memory.usage", [self._rss], "By", "Resident set size")
        counter("process.cpu.time", [self._cpu], "s", "CPU time by mode")
        gauge("process.open_file_descriptor.count", [self._fds], "{file_descriptor}", "Open fds")
        gauge("process.thread.count", [self._threads], "{thread}", "Threads")
        actions = m.create_counter(
            "agentd.actions", "{action}", "Actions run, by actuator and result status"
        )
        control = m.create_counter(
            "agentd.control.requests", "{request}", "Control requests, by command and result"
        )
        for tally, sdk in ((self._actions, actions), (self._control, control)):
            if isinstance(tally, Tally):
                tally.forward(sdk)
        self._actions, self._control = actions, control

    def _ticks(self) -> Points:
        return [(self.loop.ticks, {})] if self.loop is not None else []

    def _overruns(self) -> Points:
        return [(self.loop.overruns, {})] if self.loop is not None else []

    def _skipped(self) -> Points:
        return [(self.loop.skipped, {})] if self.loop is not None else []

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

    def observe(
        self,
        loop: LoopFigures,
        plugins: Callable[[], Iterable[PluginHandle]],
        store: Any = None,
        uplinks: Callable[[], Iterable[UplinkStatus]] | None = None,
    ) -> None:
        """What the observable instruments read: the loop's counters, the current plugin
        handles (``plugins()``: the supervisor's, which a reload replaces), the uplinks'
        states (``uplinks()``) and, when there is a store, its figures (``store.health()``);
        its commits are timed through its ``on_commit`` hook (each commit's duration)."""
        self.loop = loop
        self.handles = plugins
        if store is not None:
            self.store = store.health
            store.on_commit = self.produced.store_write.add
        if uplinks is not None:
            from agentd.telemetry.uplink import uplink_sources

            self.produced.sources.update(uplink_sources(uplinks))
        if self.prometheus is not None:
            self.prometheus.readings.exported = self._exported_sensors
            self.prometheus.start()

    def _exported_sensors(self) -> list[str]:
        return [
            h.name
            for h in list(self.handles())
            if h.kind == "sensor" and getattr(h.config, "export", False)
        ]

    def end_tick(
        self, report: TickReport, span: TickSpan | None, t0: float, t1: float, t2: float
    ) -> None:
        super().end_tick(report, span, t0, t1, t2)
        if self.prometheus is not None:
            self.prometheus.readings.update(report.observation)

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
        from opentelemetry.metrics import Observation

        return [Observation(self._proc()[0])]

    def _cpu(self, _: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        t = self._proc()[1]
        return [
            Observation(t.user, {"cpu.mode": "user"}),
            Observation(t.system, {"cpu.mode": "system"}),
        ]

    def _fds(self, _: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        return [Observation(self._process.num_fds())]

    def _threads(self, _: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        return [Observation(self._proc()[2])]

    # -- reading -------------------------------------------------------------------------------
    def collect(self) -> list[MetricPoint]:
        """Current values from the in-process reader. Runs the observable callbacks (psutil):
        call it off the loop (``asyncio.to_thread``)."""
        data = self._load_sdk().get_metrics_data()
        return metric_points(data) if data is not None else []

    def recent_lateness_p99(self, window: float) -> float | None:
        """p99 tick lateness over the last ``window`` seconds (None without ticks in it)."""
        since = time.monotonic() - window
        values = sorted(self.recent.lateness_since(since))
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
        if self.prometheus is not None:
            self.prometheus.close()  # first: no scrape collects while the providers stop
        deadline = time.monotonic() + timeout
        closers: list[Callable[[], object]] = []
        meters = self.meter_provider
        if meters is not None:
            closers.append(lambda: meters.shutdown(timeout_millis=timeout * 1e3))
        if self.tracer_provider is not None:
            closers.append(self.tracer_provider.shutdown)
        threads = []
        for close in closers:
            # side by side, so a span export stuck on a dead collector does not keep the last
            # metrics from being written; daemon threads, so one that hangs past the timeout
            # does not hold process exit
            t = threading.Thread(
                target=_quietly, args=(close,), name="agentd-telemetry-close", daemon=True
            )
            t.start()
            threads.append(t)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            log.warning("telemetry: exporters still busy after %gs; giving up on them", timeout)
            return False
        return True


def metric_points(data: MetricsData) -> list[MetricPoint]:
    """MetricsData -> MetricPoint rows (agentd/telemetry/metrics.py, which imports the SDK)."""
    from agentd.telemetry.metrics import metric_points as convert

    return convert(data)


def _quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except Exception as exc:  # noqa: BLE001 - shutdown goes on
        log.warning("telemetry shutdown: %s: %s", type(exc).__name__, exc)


def _instance_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()
