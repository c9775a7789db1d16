"""Traces and metrics of real ticks, read with the SDK's own in-memory span exporter and metric
reader: the span tree of a tick, error status from a failing actuator, sampling, log records
carrying the tick's trace id."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agentd.config import TelemetryConfig
from agentd.logs import TraceIdFilter
from agentd.loop import LoopSettings, PerceptionLoop
from agentd.model import Action, Observation
from agentd.telemetry import Telemetry, metric_points
from tests.utils import handle


class OkSensor:
    async def perceive(self) -> dict[str, float]:
        return {"v": 1.0}


class BadSensor:
    async def perceive(self) -> dict[str, float]:
        raise OSError("no such device")


class GoPolicy:
    def decide(self, observation: Observation, state: object) -> list[Action]:
        return [Action(actuator="relay", name="switch")]


class OkActuator:
    async def act(self, action: Action) -> str:
        return "done"


class BrokenActuator:
    def __init__(self) -> None:
        self.calls = 0

    async def act(self, action: Action) -> str:
        self.calls += 1
        raise RuntimeError("relay stuck")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def make(tmp_path: Path, spans: InMemorySpanExporter) -> Iterator:
    made: list[Telemetry] = []

    def build(
        sensors: dict, policies: dict, actuators: dict, ratio: float = 1.0, **kw: object
    ) -> tuple[PerceptionLoop, Telemetry, InMemoryMetricReader]:
        reader = InMemoryMetricReader()
        tel = Telemetry(
            TelemetryConfig(tick_sample_ratio=ratio),
            tmp_path,
            span_processors=[SimpleSpanProcessor(spans)],
            metric_readers=[reader],
        )
        loop = PerceptionLoop(
            LoopSettings(interval=0.5),
            {n: handle("sensor", n, o) for n, o in sensors.items()},
            {n: handle("policy", n, o) for n, o in policies.items()},
            {n: handle("actuator", n, o, **kw) for n, o in actuators.items()},
            tracer=tel,
            action_hook=tel.run_action,
        )
        tel.observe(loop, lambda: [*loop.sensors.values(), *loop.policies.values()])
        made.append(tel)
        return loop, tel, reader

    yield build
    for tel in made:
        assert tel.shutdown(5.0)


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


async def test_a_tick_is_one_span_tree(make, spans: InMemorySpanExporter) -> None:
    loop, _, _ = make({"temp": OkSensor()}, {"rule": GoPolicy()}, {"relay": OkActuator()})
    report = await loop.tick_now()
    got = spans.get_finished_spans()
    names = _by_name(got)
    assert sorted(names) == [
        "agentd.act",
        "agentd.actuator.act",
        "agentd.decide",
        "agentd.perceive",
        "agentd.policy.decide",
        "agentd.sensor.perceive",
        "agentd.tick",
    ]
    assert all(len(v) == 1 for v in names.values())
    (root,) = names["agentd.tick"]
    assert root.parent is None
    assert root.attributes["agentd.tick"] == report.tick
    assert {s.context.trace_id for s in got} == {root.context.trace_id}
    stages = {n: names[n][0] for n in ("agentd.perceive", "agentd.decide", "agentd.act")}
    for stage in stages.values():
        assert stage.parent.span_id == root.context.span_id
        assert root.start_time <= stage.start_time <= stage.end_time <= root.end_time
    children = {
        "agentd.sensor.perceive": ("agentd.perceive", "temp"),
        "agentd.policy.decide": ("agentd.decide", "rule"),
        "agentd.actuator.act": ("agentd.act", "relay"),
    }
    for name, (stage, plugin) in children.items():
        (span,) = names[name]
        assert span.parent.span_id == stages[stage].context.span_id
        assert span.attributes["agentd.plugin"] == plugin
        assert span.attributes["agentd.status"] == "ok"
        assert span.attributes["agentd.attempts"] == 1
        assert span.status.status_code is StatusCode.UNSET
    assert root.status.status_code is StatusCode.UNSET


async def test_a_failed_actuator_sets_the_span_status(make, spans: InMemorySpanExporter) -> None:
    broken = BrokenActuator()
    loop, _, reader = make(
        {"temp": OkSensor()},
        {"rule": GoPolicy()},
        {"relay": broken},
        retries=1,
        backoff=0.0,
    )
    await loop.tick_now()
    assert broken.calls == 2
    names = _by_name(spans.get_finished_spans())
    (act,) = names["agentd.actuator.act"]
    assert act.status.status_code is StatusCode.ERROR
    assert "relay stuck" in (act.status.description or "")
    assert act.attributes["agentd.status"] == "failed"
    assert act.attributes["agentd.attempts"] == 2
    (root,) = names["agentd.tick"]
    assert root.status.status_code is StatusCode.ERROR
    assert "relay.switch: failed" in (root.status.description or "")
    # and the SDK's own reader sees the action counted by actuator and status
    points = metric_points(reader.get_metrics_data())
    actions = [p for p in points if p.name == "agentd.actions"]
    assert [(p.attributes, p.value) for p in actions] == [
        ({"agentd.actuator": "relay", "agentd.action.status": "failed"}, 1.0)
    ]


async def test_unsampled_ticks_make_no_spans_but_failed_ones_do(
    make, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    flip = {"bad": False}

    class Flaky:
        async def perceive(self) -> dict[str, float]:
            if flip["bad"]:
                raise OSError("unplugged")
            return {"v": 2.0}

    loop, tel, _ = make({"temp": OkSensor(), "flaky": Flaky()}, {}, {}, ratio=0.0)
    for _ in range(20):
        await loop.tick_now()
    assert spans.get_finished_spans() == ()
    flip["bad"] = True
    report = await loop.tick_now()
    names = _by_name(spans.get_finished_spans())
    (root,) = names["agentd.tick"]
    assert root.attributes["agentd.tick"] == report.tick
    assert root.attributes["agentd.tick.sampled_by"] == "failed"
    assert root.status.status_code is StatusCode.ERROR
    sensors = {s.attributes["agentd.plugin"]: s for s in names["agentd.sensor.perceive"]}
    assert sensors["flaky"].status.status_code is StatusCode.ERROR
    assert "unplugged" in sensors["flaky"].status.description
    assert sensors["temp"].status.status_code is StatusCode.UNSET
    # the histograms saw every tick, sampled or not
    points = {(p.name, tuple(p.attributes.items())): p for p in tel.collect()}
    assert points[("agentd.loop.stage.duration", (("agentd.loop.stage", "tick"),))].count == 21
    errors = points[
        ("agentd.plugin.errors", (("agentd.plugin", "flaky"), ("agentd.plugin.kind", "sensor")))
    ]
    assert errors.value == 1.0


async def test_log_records_carry_the_ticks_trace_id(
    make, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    loop, _, _ = make({"bad": BadSensor()}, {}, {}, ratio=0.0)
    caplog.handler.addFilter(TraceIdFilter())
    with caplog.at_level(logging.DEBUG, logger="agentd"):
        await loop.tick_now()
    (root,) = _by_name(spans.get_finished_spans())["agentd.tick"]
    failing = [r for r in caplog.records if "is failing" in r.getMessage()]
    assert failing
    assert failing[0].trace == f" trace_id={root.context.trace_id:032x}"
    # outside a tick: no trace id
    logging.getLogger("agentd.test").warning("after the tick")
    assert caplog.records[-1].trace == ""
