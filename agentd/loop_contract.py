"""What `agentd.loop.PerceptionLoop` is given: its `LoopSettings` and the protocols of the
collaborators that come through its constructor (`TickObserver`, `TickTracer` and the
`TickSpan` it hands out). Kept apart so the loop's module holds only the loop; `agentd.loop`
re-exports these names."""

from __future__ import annotations

from typing import Protocol

import msgspec

from agentd.model import ActionResult, TickReport
from agentd.plugins.handle import PolicyRunner

__all__ = ["LoopSettings", "TickObserver", "TickSpan", "TickTracer"]


class TickObserver(Protocol):
    """Sees every tick's report and every action result that came after its tick's act stage
    ended. Called on the loop: must not block (enqueue and return); one that raises is logged
    once and keeps being called."""

    def on_tick(self, report: TickReport) -> None: ...

    def on_late_result(self, result: ActionResult) -> None: ...


class TickSpan(Protocol):
    """One tick in progress, as the tracer records it."""

    def call(self, kind: str, name: str, start: float, end: float, error: str | None) -> None: ...

    def policy(self, name: str, handle: PolicyRunner) -> None: ...


class TickTracer(Protocol):
    """Brackets every tick (telemetry: spans and tick metrics). ``begin_tick`` returns None
    for a tick it does not trace in detail."""

    def begin_tick(self, tick: int) -> TickSpan | None: ...

    def end_tick(
        self, report: TickReport, span: TickSpan | None, t0: float, t1: float, t2: float
    ) -> None: ...


class LoopSettings(msgspec.Struct, frozen=True, kw_only=True):
    interval: float = 1.0
    align: bool = False
    offset: float = 0.0
    stage_timeout: float | None = None
    plugin_timeout: float | None = None
    max_actions_per_tick: int = 64
    max_concurrent_actions: int = 8
