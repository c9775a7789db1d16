"""The `otlp` exporter against a real local HTTP endpoint: a tiny collector that counts and
decodes the OTLP requests it gets; and a collector that accepts connections but never answers,
which must cost dropped (and counted) spans, never a late or blocked loop."""

from __future__ import annotations

import asyncio
import gzip
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentd.config import TelemetryConfig, TelemetryOtlpConfig, loads
from agentd.errors import ConfigError
from agentd.loop import LoopSettings, PerceptionLoop
from agentd.model import Action, Observation
from agentd.plugins.registry import default_registry
from agentd.telemetry import Telemetry
from tests.utils import handle


class Sensor:
    async def perceive(self) -> dict[str, float]:
        return {"v": 1.0}


class Policy:
    def decide(self, observation: Observation, state: object) -> list[Action]:
        return [Action(actuator="out", name="set")]


class Actuator:
    async def act(self, action: Action) -> None:
        return None


def _loop(interval: float, tel: Telemetry, observers: tuple = ()) -> PerceptionLoop:  # type: ignore[type-arg]
    loop = PerceptionLoop(
        LoopSettings(interval=interval),
        {"s": handle("sensor", "s", Sensor())},
        {"p": handle("policy", "p", Policy())},
        {"out": handle("actuator", "out", Actuator())},
        observers=observers,
        tracer=tel,
        action_hook=tel.run_action,
    )
    tel.observe(loop, tuple)
    return loop


def _telemetry(state: Path, max_queue: int = 2048, **otlp: object) -> Telemetry:
    config = TelemetryConfig(
        exporter="otlp",
        tick_sample_ratio=1.0,
        max_queue=max_queue,
        batch_size=4,
        otlp=TelemetryOtlpConfig(**otlp),  # type: ignore[arg-type]
    )
    return Telemetry(config, state)


class Collector:
    """OTLP/HTTP on 127.0.0.1: counts requests by path, decodes spans and metric names."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.span_names: Counter[str] = Counter()
        self.metric_names: set[str] = set()
        self.resource: dict[str, str] = {}
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.requests[self.path] += 1
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest.FromString(body)
                    for rs in req.resource_spans:
                        collector.resource = {
                            a.key: a.value.string_value for a in rs.resource.attributes
                        }
                        for ss in rs.scope_spans:
                            collector.span_names.update(s.name for s in ss.spans)
                elif self.path == "/v1/metrics":
                    mreq = ExportMetricsServiceRequest.FromString(body)
                    for rm in mreq.resource_metrics:
                        for sm in rm.scope_metrics:
                            collector.metric_names.update(m.name for m in sm.metrics)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="collector")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A collector that is 'down' the nasty way: it accepts TCP connections (the kernel does,
    into the backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


async def test_spans_and_metrics_reach_a_real_collector(tmp_path: Path) -> None:
    with Collector() as collector:
        tel = _telemetry(tmp_path, endpoint=collector.endpoint + "/", timeout=5.0)
        loop = _loop(0.5, tel)
        for _ in range(5):
            await loop.tick_now()
        assert await asyncio.to_thread(tel.shutdown, 10.0)
    assert tel.export_state.failing == set()
    assert collector.requests["/v1/traces"] >= 1
    assert collector.requests["/v1/metrics"] >= 1
    assert collector.span_names["agentd.tick"] == 5
    assert collector.span_names["agentd.actuator.act"] == 5
    assert collector.resource["service.name"] == "agentd"
    assert {
        "agentd.loop.ticks",
        "agentd.loop.tick.lateness",
        "agentd.loop.stage.duration",
        "agentd.actions",
        "process.memory.usage",
    } <= collector.metric_names


async def test_collector_down_costs_counted_drops_not_loop_time(
    tmp_path: Path, blackhole: str, caplog: pytest.LogCaptureFixture
) -> None:
    interval = 0.02
    tel = _telemetry(tmp_path, max_queue=16, endpoint=blackhole, timeout=1.0)
    totals: list[float] = []
    queued: list[int] = []

    class Sink:
        def on_tick(self, report: object) -> None:
            totals.append(report.timings.total)  # type: ignore[attr-defined]
            queued.append(tel.spans_queued)

        def on_late_result(self, result: object) -> None:
            pass

    loop = _loop(interval, tel, observers=(Sink(),))
    task = asyncio.create_task(loop.run())
    run_for = 2.0
    await asyncio.sleep(run_for)
    loop.stop()
    await task
    # the exporter was stuck in a 1 s request the whole time; the loop never waited for it
    assert max(totals) < 0.5, max(totals)
    assert loop.ticks >= 0.5 * run_for / interval
    # every tick made 7 spans, far more than the queue holds: bounded, and the drops counted
    assert max(queued) <= 16
    assert tel.spans_dropped > 0
    points = {(p.name, tuple(p.attributes.items())): p for p in tel.collect()}
    dropped = points[("agentd.telemetry.spans.dropped", (("agentd.reason", "queue_full"),))]
    assert dropped.value > 0
    # the operator is told once, not once per attempt
    down = [r for r in caplog.records if "span export to" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in caplog.records]
    assert down[0].getMessage().startswith(f"telemetry: span export to {blackhole} failed")
    # and shutdown gives up on the dead collector within its bound
    t0 = time.monotonic()
    await asyncio.to_thread(tel.shutdown, 2.0)
    assert time.monotonic() - t0 < 3.5


def test_without_the_otlp_extra_the_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a default install (no agentd[otlp]) looks like to the import system
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)
    with pytest.raises(ConfigError) as caught:
        Telemetry(TelemetryConfig(exporter="otlp"), tmp_path)
    assert str(caught.value) == (
        "telemetry.exporter: 'otlp' needs the optional OTLP exporter, which is not installed "
        "(pip install 'agentd[otlp]')"
    )
    # `none` and `file` do not need it
    Telemetry(TelemetryConfig(exporter="file"), tmp_path).shutdown(5.0)
    # and `agentd check-config` says the same before anything starts
    with pytest.raises(ConfigError) as checked:
        loads('[telemetry]\nexporter = "otlp"\n[sensors.system]\n', default_registry)
    assert checked.value.errors == [str(caught.value)]
    loads('[telemetry]\nexporter = "file"\n[sensors.system]\n', default_registry)
