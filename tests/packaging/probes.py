"""Probe plugins bundled into the test suite's frozen binary (with tests.testplugins): they
exercise, inside the frozen process, what only breaks frozen, and write what they saw to a
JSON file the test reads. Importing this module registers them as built-ins.

- ``otelprobe`` (sensor): uses OpenTelemetry the way its entry points wire it: the tracer
  and meter providers named by ``OTEL_PYTHON_TRACER_PROVIDER``/``OTEL_PYTHON_METER_PROVIDER``,
  the propagators named by ``OTEL_PROPAGATORS``, the runtime context, and the detectors named by
  ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS``. Without the bundled metadata these fail or
  silently fall back (e.g. "Propagator tracecontext not found").
- ``envprobe`` (sensor): starts ``env`` as a child program and records its environment (a
  frozen bundle must not leak its private ``LD_LIBRARY_PATH`` to programs agentd starts).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import msgspec

from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin import EXTRA


class ProbeConfig(msgspec.Struct, forbid_unknown_fields=True):
    out: str


def _write(path: str, report: dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
    tmp.replace(path)


def otel_report() -> dict[str, Any]:
    from opentelemetry import baggage, context, metrics, propagate, trace
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider: Any = trace.get_tracer_provider()  # loaded from OTEL_PYTHON_TRACER_PROVIDER
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agentd.probe")
    carrier: dict[str, str] = {}
    token = context.attach(baggage.set_baggage("site", "frozen"))
    try:
        with tracer.start_as_current_span("probe") as span:
            propagate.inject(carrier)
            ids = span.get_span_context()
    finally:
        context.detach(token)
    extracted = propagate.extract(carrier)
    remote = trace.get_current_span(extracted).get_span_context()

    meter_provider: Any = metrics.get_meter_provider()  # loaded from OTEL_PYTHON_METER_PROVIDER
    reader = InMemoryMetricReader()
    sdk_provider = type(meter_provider)(metric_readers=[reader], resource=Resource.create())
    sdk_provider.get_meter("agentd.probe").create_counter("probe.ticks").add(3)
    data = reader.get_metrics_data()
    points = [
        p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    ]
    resource = dict(Resource.create().attributes)
    sdk_provider.shutdown()
    try:  # the OTLP/HTTP exporter's protobuf encoding, when it is bundled
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        otlp_bytes = len(encode_spans(exporter.get_finished_spans()).SerializeToString())
    except ImportError as exc:
        otlp_bytes = f"not bundled: {exc}"
    return {
        "tracer_provider": f"{type(provider).__module__}.{type(provider).__name__}",
        "meter_provider": f"{type(meter_provider).__module__}.{type(meter_provider).__name__}",
        "propagator_fields": sorted(propagate.get_global_textmap().fields),
        "carrier": carrier,
        "trace_id": f"{ids.trace_id:032x}",
        "span_id": f"{ids.span_id:016x}",
        "extracted_trace_id": f"{remote.trace_id:032x}",
        "extracted_baggage": dict(baggage.get_all(extracted)),
        "spans_exported": [s.name for s in exporter.get_finished_spans()],
        "metric_points": points,
        "resource": {k: str(v) for k, v in resource.items()},
        "pid": os.getpid(),
        "otlp_bytes": otlp_bytes,
    }


class OtelProbe:
    def __init__(self, config: ProbeConfig) -> None:
        self.out = config.out
        self.done = False

    async def perceive(self) -> dict[str, float]:
        if not self.done:
            self.done = True
            try:
                report = otel_report()
            except Exception as exc:
                report = {"error": f"{type(exc).__name__}: {exc}"}
            _write(self.out, report)
        return {"ok": 1.0}


class EnvProbe:
    def __init__(self, config: ProbeConfig) -> None:
        self.out = config.out
        self.done = False

    async def perceive(self) -> dict[str, float]:
        if not self.done:
            proc = await asyncio.create_subprocess_exec(
                "env", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            out, _ = await proc.communicate()
            env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
            _write(self.out, {"env": env, "pid": os.getpid(), "returncode": proc.returncode})
            self.done = True  # only now: a call cut short by its timeout is tried again
        return {"ok": 1.0}


PROBES = [
    PluginSpec(
        name="otelprobe",
        kind="sensor",
        factory=OtelProbe,
        config_type=ProbeConfig,
        description="test: exercises OpenTelemetry through its entry points",
    ),
    PluginSpec(
        name="envprobe",
        kind="sensor",
        factory=EnvProbe,
        config_type=ProbeConfig,
        description="test: records the environment of a program agentd starts",
    ),
]

EXTRA.extend(p for p in PROBES if p not in EXTRA)
