"""Spans: the per-tick notes the loop makes while telemetry traces (`TickRecorder`), the span
tree built after a tick that is sampled, failed or overran, the actuator span inside a traced
request, and the control request's span (the `TickTracer` half of `Telemetry`).

The OpenTelemetry API is imported only where a tracer exists (`Telemetry` makes one along with
the SDK, when spans are exported): with ``exporter = "none"`` every hook returns before it is
needed, and the daemon does not load it (0.3 MiB, issue #18; tests/telemetry/test_lazy.py)."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, final

from agentd.config import TelemetryConfig
from agentd.model import Action, ActionResult, TickReport
from agentd.telemetry.produced import Produced, RecentTicks, Tally

if TYPE_CHECKING:
    from opentelemetry import trace
    from opentelemetry.metrics import Counter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from agentd.loop import TickSpan
    from agentd.plugins.handle import PolicyRunner

    # export.py imports the SDK; `Telemetry` makes the ids only along with a tracer
    from agentd.telemetry.export import PresetIds

__all__ = ["ActionRun", "LoopFigures", "RequestLike", "TickRecorder", "TickSpans"]

_NOT_OK: Final = frozenset({"failed", "timeout", "rejected"})


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
        self.policies: list[tuple[str, PolicyRunner, float, int]] = []

    def call(self, kind: str, name: str, start: float, end: float, error: str | None) -> None:
        self.calls.append((kind, name, start, end, error))

    def policy(self, name: str, handle: PolicyRunner) -> None:
        self.policies.append((name, handle, time.monotonic(), handle.errors))


ActionRun = Callable[[Action, "int | None"], Awaitable[ActionResult]]


class _Request(Protocol):
    @property
    def cmd(self) -> str: ...

    @property
    def traceparent(self) -> str | None: ...


class RequestLike(Protocol):
    """What a request hook reads of the control plane's request context (telemetry does not
    import the control room)."""

    @property
    def request(self) -> _Request: ...


class LoopFigures(Protocol):
    """The perception loop's counters the instruments read."""

    @property
    def ticks(self) -> int: ...

    @property
    def overruns(self) -> int: ...

    @property
    def skipped(self) -> int: ...

    @property
    def interval(self) -> float: ...


class TickSpans:
    """The span-making half of `Telemetry` (the loop's `TickTracer`, the action runner's hook,
    the control server's request hook); `Telemetry.__init__` sets these attributes."""

    config: TelemetryConfig
    tracer: trace.Tracer | None
    loop: LoopFigures | None
    produced: Produced
    recent: RecentTicks
    _closed: bool
    _random: Callable[[], float]
    _ratio: float
    _ids: PresetIds
    _propagator: TraceContextTextMapPropagator
    _actions: Counter | Tally
    _control: Counter | Tally

    # -- the loop's hooks ----------------------------------------------------------------------
    def begin_tick(self, tick: int) -> TickRecorder | None:
        """Called as a tick starts. Returns None when nothing traces (or after shutdown)."""
        if self.tracer is None or self._closed:
            return None
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

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
        self, report: TickReport, span: TickSpan | None, t0: float, t1: float, t2: float
    ) -> None:
        """Called after each tick (before the sinks): metrics, and spans when they are due."""
        timings = report.timings
        produced = self.produced
        if not report.manual:
            produced.lateness.add(report.lateness)
            self.recent.append(report.started, report.lateness)
        stages = produced.stages
        stages["perceive"].add(timings.perceive)
        stages["decide"].add(timings.decide)
        stages["act"].add(timings.act)
        stages["tick"].add(timings.total)
        if not isinstance(span, TickRecorder):
            return
        rec = span
        from opentelemetry import context as otel_context

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
        from opentelemetry import trace

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
            _set_error(root, _failure_summary(report))
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
                _set_error(span, r.error or r.status)
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
            _set_error(span, error)
        span.end(end_time=end)

    async def run_action(self, action: Action, tick: int | None, run: ActionRun) -> ActionResult:
        """The action runner's hook: counts every action; inside a traced request (e.g.
        `agentctl act`) the actuator call is a live child span."""
        if self._closed:  # shut down: the providers are gone, the action still runs
            return await run(action, tick)
        span = None
        token = None
        tracer = self.tracer
        if tracer is not None:
            from opentelemetry import context as otel_context
            from opentelemetry import trace

            if trace.get_current_span().is_recording():
                span = tracer.start_span(
                    "agentd.actuator.act",
                    attributes={"agentd.plugin": action.actuator, "agentd.action": action.name},
                )
                token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = await run(action, tick)
        except BaseException as exc:
            if span is not None:
                _set_error(span, type(exc).__name__)
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
                _set_error(span, result.error or result.status)
            span.end()
        return result

    # -- the control plane's hook ------------------------------------------------------------
    def request_hook(self, ctx: RequestLike) -> Callable[[str | None], None]:
        """A `ControlServer` request hook: runs in the request's own copied context, so the span
        set current here is the parent of everything the request does (an `act`, a `tick`).
        The span continues the caller's W3C ``traceparent`` and is always sampled. Returns the
        finisher the server calls with the error code (None: ok) once the reply is sent."""
        command: str = ctx.request.cmd
        traceparent: str | None = ctx.request.traceparent
        span = None
        tracer = self.tracer
        if tracer is not None:
            from opentelemetry import context as otel_context
            from opentelemetry import trace

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
                    _set_error(span, code)
                span.end()
            self._control.add(
                1, {"agentd.control.command": command, "agentd.control.result": result}
            )

        return finish


def _set_error(span: trace.Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))


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
