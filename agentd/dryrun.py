"""``agentd test``: a config tried out the way ``telegraf --test`` does it.

The plugins are built and started by the daemon's own `PluginSupervisor` and ticked by its own
`PerceptionLoop` (``tick_now``, N times, one loop interval apart), but there is no store, no
control socket, no telemetry and no lock: nothing is written under a state or runtime
directory. Every plugin gets ``startup_error = "skip"`` so one that fails to start is reported
and the others still run. Actions go through the `ActionRunner`'s validation and stop there:
each is printed with its validated params as what *would* run; with ``act`` they really run
(the caller says so first). The session actuator gets an in-memory session store.

The exit status is 0 when everything started, read, decided and (would have) acted, else 1.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec

from agentd.config import Config, PluginInstance
from agentd.loop import LoopSettings, PerceptionLoop
from agentd.model import Action, ActionResult, TickReport, Value
from agentd.plugins.registry import Registry
from agentd.plugins.supervisor import PluginSupervisor

__all__ = ["MemorySessions", "dry_run"]

#: how long stopping the plugins may take at the end
_STOP_TIMEOUT = 5.0


class MemorySessions:
    """The `SessionAccess` handle of a dry run: sessions live in this process only."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[int, Any]] = {}

    async def put(self, session_id: str, state: Any, ttl: float | None = None) -> int:
        version = self.data.get(session_id, (0, None))[0] + 1
        self.data[session_id] = (version, state)
        return version

    async def delete(self, session_id: str) -> bool:
        return self.data.pop(session_id, None) is not None


@dataclass(slots=True)
class _Out:
    stream: TextIO
    failures: int = 0
    units: dict[str, Mapping[str, str]] = field(default_factory=dict)

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def fail(self, text: str) -> None:
        self.failures += 1
        self.line(text)


def _skipping(config: Config) -> Config:
    """The config with every instance's ``startup_error`` set to "skip"."""

    def skip(inst: PluginInstance) -> PluginInstance:
        common = msgspec.structs.replace(inst.common, startup_error="skip")
        return msgspec.structs.replace(inst, common=common)

    sections = {
        section: {name: skip(inst) for name, inst in by_name.items()}
        for section, by_name in config.plugin_sections.items()
    }
    return msgspec.structs.replace(config, plugin_sections=sections)


def _unit(units: Mapping[str, str] | None, metric: str) -> str:
    if not units:
        return ""
    if metric in units:
        return units[metric]
    for name, unit in units.items():
        if name.endswith(".*") and metric.startswith(name[:-1]):
            return unit
    return ""


def _show(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _action(action: Action) -> str:
    params = json.dumps(action.params, sort_keys=True, default=str)
    source = f" (from {action.source})" if action.source else ""
    return f"{action.actuator}.{action.name}{source} {params}"


RunHook = Callable[
    [Action, "int | None", Callable[[Action, "int | None"], Awaitable[ActionResult]]],
    Awaitable[ActionResult],
]


def _validate_only(runner: Callable[[Action], str | None]) -> RunHook:
    """An action hook that validates an action and stops there (no side effect)."""

    async def hook(
        action: Action,
        tick: int | None,
        run: Callable[[Action, int | None], Awaitable[ActionResult]],
    ) -> ActionResult:
        problem = runner(action)
        return ActionResult(
            action=action,
            status="rejected" if problem else "skipped",
            error=problem or "dry run: not run (agentd test --act runs it)",
            tick=tick,
            finished_at=time.time(),
        )

    return hook


def _report(out: _Out, report: TickReport, loop: PerceptionLoop, act: bool) -> None:
    obs = report.observation
    out.line(f"tick {report.tick} ({report.timings.total * 1e3:.1f} ms)")
    rows = [
        (sensor, metric, _show(value), _unit(out.units.get(sensor), metric))
        for sensor, metrics in obs.readings.items()
        for metric, value in metrics.items()
    ]
    if rows:
        widths = [
            max(len(r[i]) for r in [("SENSOR", "METRIC", "VALUE", "UNIT"), *rows]) for i in range(3)
        ]
        out.line(
            f"  {'SENSOR':<{widths[0]}}  {'METRIC':<{widths[1]}}  {'VALUE':>{widths[2]}}  UNIT"
        )
        w0, w1, w2 = widths
        for sensor, metric, value, unit in rows:
            out.line(f"  {sensor:<{w0}}  {metric:<{w1}}  {value:>{w2}}  {unit}".rstrip())
    for sensor, error in obs.errors.items():
        out.fail(f"  sensor {sensor!r} failed to read: {error}")
    for name, handle in loop.policies.items():
        if handle.state != "ok" and handle.last_error and handle.consecutive_failures:
            out.fail(f"  policy {name!r} failed: {handle.last_error}")
    for result in report.results:
        if result.status == "rejected":
            out.fail(f"  rejected {_action(result.action)}: {result.error}")
        elif not act and result.status == "skipped" and result.error and "dry run" in result.error:
            out.line(f"  would run {_action(result.action)}")
        elif result.status == "ok":
            attempts = "1 attempt" if result.attempts == 1 else f"{result.attempts} attempts"
            shown = json.dumps(result.output, default=str)[:200] if result.output else ""
            out.line(
                f"  ran {_action(result.action)}: ok ({attempts})" + (f": {shown}" if shown else "")
            )
        else:
            out.fail(f"  {result.status} {_action(result.action)}: {result.error}")


async def dry_run(
    config: Config,
    registry: Registry,
    settings: LoopSettings,
    *,
    ticks: int = 1,
    act: bool = False,
    out: TextIO,
    problems: Sequence[str] = (),
) -> tuple[int, bool]:
    """Build, start and tick the config's plugins ``ticks`` times. Returns the exit status (0
    if nothing failed) and whether a sensor call is still stuck (in a worker thread, which the
    caller must not wait for)."""
    o = _Out(out)
    for problem in problems:
        o.fail(problem)
    sessions = MemorySessions()
    supervisor = PluginSupervisor(
        registry, capabilities=lambda needs: {"sessions": sessions} if "sessions" in needs else {}
    )
    try:
        await supervisor.start_all(_skipping(config))
        for status in supervisor.statuses():
            if status.state != "ok":
                why = (status.last_error or "").partition("failed to start: ")[2]
                o.fail(f"{status.kind} {status.name!r} failed to start: {why or status.last_error}")
        sensors = supervisor.sensors()
        o.units = {
            name: units
            for name, h in sensors.items()
            if (units := h.spec.metrics(h.instance.config)) is not None
        }
        loop = PerceptionLoop(settings, sensors, supervisor.policies(), supervisor.actuators())
        if not act:
            loop.actions.hook = _validate_only(loop.actions.validate)
        for i in range(ticks):
            if i:
                await asyncio.sleep(settings.interval)
            _report(o, await loop.tick_now(), loop, act)
        if loop.actions.in_flight:
            await asyncio.wait(loop.actions.in_flight, timeout=settings.interval)
        stuck = any(h.pending is not None and not h.pending.done() for h in sensors.values())
    finally:
        await supervisor.stop_all(_STOP_TIMEOUT)
    o.line(
        f"{'ok' if not o.failures else 'FAILED'}: {ticks} tick{'s' if ticks != 1 else ''}"
        + (f", {o.failures} problem{'s' if o.failures != 1 else ''}" if o.failures else "")
    )
    return (1 if o.failures else 0), stuck
