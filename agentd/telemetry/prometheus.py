"""The Prometheus / OpenMetrics endpoint (``[telemetry] prometheus = "127.0.0.1:9464"``, off by
default): ``GET /metrics`` serves the instruments `agentctl metrics` shows, through
OpenTelemetry's Prometheus reader (names, units and ``_total`` suffixes as the OpenTelemetry
compatibility spec says), plus the latest readings of the sensors with ``export = true`` as
``agentd_sensor_reading{sensor, metric}`` gauges. prometheus_client encodes the text (classic or
OpenMetrics, by the scraper's ``Accept`` header).

Bounded: a listener in its own thread (a scrape never runs on the event loop), at most
``MAX_CONNECTIONS`` connections being served at once (one more is answered 503 and closed), a
``TIMEOUT`` on every socket read and write, http.server's bounds on the request line (64 KiB)
and headers (100), one scrape collected at a time. A bare port listens on loopback only: another
address must be written out.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, final

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import Histogram, MetricsData, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.metrics.export import Metric as OtelMetric
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from agentd.errors import ConfigError
from agentd.model import Observation, Value
from agentd.telemetry.produced import Produced

__all__ = [
    "MAX_CONNECTIONS",
    "TIMEOUT",
    "PrometheusEndpoint",
    "SensorReadings",
    "parse_listen",
]

log = logging.getLogger("agentd.telemetry")

#: connections served at once; more are answered 503 and closed
MAX_CONNECTIONS: Final = 4
#: seconds a connection may take per read or write
TIMEOUT: Final = 5.0
#: readings exported at most (sensor x metric); more are left out and counted in the log
MAX_SERIES: Final = 10_000


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"`` or ``"9464"`` (loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.removeprefix("[").removesuffix("]")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError([f"telemetry.prometheus: {text!r}: the port is not a number"]) from None
    if not 0 <= number <= 65535:
        raise ConfigError([f"telemetry.prometheus: {text!r}: the port is out of range"])
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                [f"telemetry.prometheus: {text!r}: write an IP address (127.0.0.1, [::1], ...)"]
            ) from None
    return host, number


@final
class SensorReadings:
    """The latest numeric readings of the exported sensors, as one gauge family. Written by
    the loop (one dict swap per sensor read), read by the scrape thread."""

    def __init__(self) -> None:
        #: the names of the sensors to export (the running ones with ``export = true``)
        self.exported: Callable[[], Iterable[str]] = tuple
        self._latest: dict[str, Mapping[str, Value]] = {}
        self._warned = False

    def update(self, observation: Observation) -> None:
        if not (observation.readings or observation.errors):
            return
        latest = dict(self._latest)
        latest.update(observation.readings)
        for sensor in observation.errors:
            latest.pop(sensor, None)  # a failed read: no value, rather than an old one
        self._latest = latest

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "agentd_sensor_reading",
            "The latest reading of each metric of the sensors configured with export = true",
            labels=["sensor", "metric"],
        )
        n = 0
        exported = set(self.exported())  # read now: a reload may have changed it
        for sensor, readings in sorted(self._latest.items()):
            if sensor not in exported:
                continue
            for metric, value in sorted(readings.items()):
                if isinstance(value, str) or not math.isfinite(float(value)):
                    continue
                if n >= MAX_SERIES:
                    if not self._warned:
                        self._warned = True
                        log.warning("prometheus: more than %d readings; the rest left out", n)
                    break
                family.add_metric([sensor, metric], float(value))
                n += 1
        yield family


#: OpenTelemetry gauges named ``*.count`` (semantic conventions) under the names Prometheus'
#: own process collector uses: a ``_count`` suffix is a histogram's there (promtool refuses it)
RENAMED: Final = {
    "process.open_file_descriptor.count": "process.open_fds",
    "process.thread.count": "process.threads",
}


def _renamed(data: MetricsData) -> MetricsData:
    def metric(m: OtelMetric) -> OtelMetric:
        name = RENAMED.get(m.name)
        if name is None and m.name.endswith(".count") and not isinstance(m.data, Histogram):
            name = m.name.removesuffix(".count")
        return m if name is None else OtelMetric(name, m.description, m.unit, m.data)

    return MetricsData(
        [
            ResourceMetrics(
                rm.resource,
                [
                    ScopeMetrics(sm.scope, [metric(m) for m in sm.metrics], sm.schema_url)
                    for sm in rm.scope_metrics
                ],
                rm.schema_url,
            )
            for rm in data.resource_metrics
        ]
    )


class _Reader(PrometheusMetricReader):
    """OpenTelemetry's Prometheus reader with agentd's own histograms and counters merged in,
    as the in-process reader behind `agentctl metrics` has them."""

    def __init__(self, produced: Produced, registry: CollectorRegistry) -> None:
        super().__init__(registry=registry)
        self.produced = produced

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        merged = _renamed(self.produced.merge(metrics_data))
        super()._receive_metrics(merged, timeout_millis, **kwargs)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], endpoint: PrometheusEndpoint) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.endpoint = endpoint
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "agentd"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            self._reply(404, b"agentd: see /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body, ctype = self.server.endpoint.render(self.headers.get("Accept", ""))
        except Exception as exc:  # noqa: BLE001 - a failed collection is a 500, not a crash
            log.warning("prometheus: collection failed: %s: %s", type(exc).__name__, exc)
            self._reply(500, b"collection failed\n", "text/plain; charset=utf-8")
            return
        self._reply(200, body, ctype)

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("prometheus: %s %s", self.address_string(), format % args)


@final
class PrometheusEndpoint:
    """``reader`` joins the MeterProvider; ``readings`` is fed every tick; `start` serves in a
    thread, `close` stops it. The port is bound when it is made (so a port in use is an error
    at startup, named)."""

    def __init__(self, listen: str, produced: Produced) -> None:
        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.reader = _Reader(produced, self.registry)
        self.readings = SensorReadings()
        self.registry.register(self.readings)
        self._lock = threading.Lock()
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            raise ConfigError(
                [f"telemetry.prometheus: cannot listen on {listen}: {exc.strerror or exc}"]
            ) from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, ctype = choose_encoder(accept)
        with self._lock:  # the reader's collector keeps one collection's data at a time
            return encoder(self.registry), ctype

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="agentd-prometheus",
            daemon=True,
        )
        self._thread.start()
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        log.info("prometheus: serving /metrics on %s:%d", shown, port)

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(TIMEOUT)
        self._server.server_close()
