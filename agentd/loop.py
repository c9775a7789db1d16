"""`PerceptionLoop`: the drift-free ticker and the perceive -> decide -> act pipeline.

Ticks run on absolute deadlines on the monotonic clock (``deadline += interval``, never
``sleep(interval)``), so there is no cumulative drift. A tick that runs past the next deadline
makes the loop skip the missed deadlines and count them: never a burst of catch-up ticks. Every
plugin call has a timeout and is isolated: an error is recorded against the plugin and the tick
goes on with the others.

Collaborators come through the constructor and nowhere else: ``observers`` (`TickObserver`:
the journal, the watch fan-out, the systemd notifier) see every tick report and every late
action result; an optional ``tracer`` (`TickTracer`: telemetry) brackets each tick; the
`ActionRunner` gets its key ledger, run hook and manual-result sinks the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, final

import msgspec

from agentd.actions import ActionRunner, KeyLedger, ResultSink, RunHook
from agentd.loop_contract import LoopSettings, TickObserver, TickSpan, TickTracer
from agentd.model import (
    Action,
    ActionResult,
    Observation,
    StageTimings,
    TickReport,
    TickStats,
    Value,
)
from agentd.plugins.executor import PluginExecutor, running_for
from agentd.plugins.handle import (
    ActuatorRunner,
    PluginHandle,
    PolicyRunner,
    SensorRunner,
    check_readings,
    wait_call,
)
from agentd.stats import Histogram

__all__ = [
    "LoopSettings",
    "PerceptionLoop",
    "TickObserver",
    "TickSpan",
    "TickTracer",
]

log = logging.getLogger("agentd.loop")


@final
class PerceptionLoop:
    def __init__(
        self,
        settings: LoopSettings,
        sensors: Mapping[str, SensorRunner],
        policies: Mapping[str, PolicyRunner],
        actuators: Mapping[str, ActuatorRunner],
        *,
        observers: Sequence[TickObserver] = (),
        tracer: TickTracer | None = None,
        ledger: KeyLedger | None = None,
        action_hook: RunHook | None = None,
        manual_sinks: Sequence[ResultSink] = (),
        executor: PluginExecutor | None = None,
    ) -> None:
        self.settings = settings
        #: the daemon's thread pool (the loop's default executor): which plugin calls still
        #: run in a thread after their timeout
        self.executor = executor
        self.sensors = dict(sensors)
        self.policies = dict(policies)
        self.actuators = dict(actuators)
        self.actions = ActionRunner(
            self.actuators,
            settings.interval,
            settings.max_concurrent_actions,
            ledger=ledger,
            hook=action_hook,
            manual_sinks=manual_sinks,
            executor=executor,
        )
        self._observers = tuple(observers)
        self._tracer = tracer
        #: the tick in progress, as the tracer records it
        self._rec: TickSpan | None = None
        self.ticks = 0
        self.overruns = 0
        self.skipped = 0
        self.dropped_actions = 0
        self.lateness = Histogram()
        self.last = StageTimings()
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._next: float | None = None
        self._lock = asyncio.Lock()
        self._running = False
        self._stopping = False
        self._paused = False
        #: monotonic time of the pause in force (agentctl health: a forgotten pause fails)
        self.paused_since: float | None = None
        self._resume = asyncio.Event()
        self._resume.set()
        self._wakeup: asyncio.Future[None] | None = None
        self._sink_failed: set[int] = set()
        self._apply_intervals()

    # -- configuration -----------------------------------------------------------------------
    @property
    def interval(self) -> float:
        return self.settings.interval

    @property
    def observers(self) -> tuple[TickObserver, ...]:
        """The observers given at construction (read-only)."""
        return self._observers

    def _apply_intervals(self) -> None:
        for handle in self.sensors.values():
            handle.set_interval(self.settings.interval)
        self.actions.default_timeout = self.settings.plugin_timeout or self.settings.interval

    def reconfigure(
        self,
        settings: LoopSettings,
        sensors: Mapping[str, SensorRunner],
        policies: Mapping[str, PolicyRunner],
        actuators: Mapping[str, ActuatorRunner],
    ) -> None:
        """Swap settings and plugins between ticks. The next deadline is kept, so the tick phase
        survives a reload; later deadlines follow the new interval (re-aligned if ``align``)."""
        old = self.settings
        self.settings = settings
        self.sensors = dict(sensors)
        self.policies = dict(policies)
        self.actuators.clear()
        self.actuators.update(actuators)
        self._apply_intervals()
        if settings.max_concurrent_actions != old.max_concurrent_actions:
            self.actions.limit = asyncio.Semaphore(settings.max_concurrent_actions)
        if (
            self._next is not None
            and (settings.align != old.align or settings.offset != old.offset)
            and settings.align
        ):
            self._next = self._first_deadline()
        if settings.interval != old.interval:
            self.lateness.reset()

    def attach(self, handle: PluginHandle) -> None:
        """Add a plugin that started late (``startup_error = "retry"``); it joins from the next
        tick. Sensor and policy maps are replaced, not mutated, so a tick in progress is safe."""
        if isinstance(handle, SensorRunner):
            handle.set_interval(self.settings.interval)
            self.sensors = {**self.sensors, handle.name: handle}
        elif isinstance(handle, PolicyRunner):
            self.policies = {**self.policies, handle.name: handle}
        elif isinstance(handle, ActuatorRunner):
            self.actuators[handle.name] = handle  # shared with the ActionRunner

    # -- control -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return after the current tick (or at once if it is sleeping)."""
        self._stopping = True
        self._resume.set()
        self._wake()

    def pause(self) -> None:
        if not self._paused:
            self.paused_since = time.monotonic()
        self._paused = True
        self._resume.clear()

    def resume(self) -> None:
        self._paused = False
        self.paused_since = None
        self._resume.set()
        self._wake()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def next_deadline(self) -> float | None:
        """Monotonic time the next scheduled tick is due (None before the first and while
        paused)."""
        return None if self._paused else self._next

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- the ticker --------------------------------------------------------------------------
    def _first_deadline(self) -> float:
        s = self.settings
        now = time.monotonic()
        if not s.align:
            return now + s.offset
        wall = time.time()
        target = math.ceil((wall - s.offset) / s.interval) * s.interval + s.offset
        return now + (target - wall)

    async def run(self) -> None:
        """Tick until stop(). Returns after the tick in progress has finished."""
        if self._running:
            raise RuntimeError("the perception loop is already running")
        self._running = True
        self._stopping = False
        loop = asyncio.get_running_loop()
        try:
            self._next = self._first_deadline()
            while not self._stopping:
                if self._paused:
                    await self._resume.wait()
                    if self.stopping:
                        break
                    self._next = self._realign(time.monotonic())
                delay = self._next - time.monotonic()
                if delay > 0:
                    self._wakeup = loop.create_future()
                    handle = loop.call_later(delay, self._wake)
                    try:
                        await self._wakeup
                    finally:
                        handle.cancel()
                        self._wakeup = None
                    if self.stopping:
                        break
                    if self._paused or time.monotonic() < self._next:
                        continue  # woken early by pause/resume: sleep again
                scheduled = self._next
                started = time.monotonic()
                self.lateness.add(started - scheduled)
                await self._tick(scheduled, started, manual=False)
                self._advance(scheduled)
        finally:
            self._running = False

    def _advance(self, scheduled: float) -> None:
        interval = self.settings.interval
        nxt = scheduled + interval
        now = time.monotonic()
        if now > nxt:
            missed = math.ceil((now - nxt) / interval)
            self.overruns += 1
            self.skipped += missed
            nxt += missed * interval
            log.debug(
                "tick overran by %.1f ms: skipped %d deadlines", (now - scheduled) * 1e3, missed
            )
        self._next = nxt

    def _realign(self, now: float) -> float:
        """The first deadline on the current grid at or after ``now`` (after a pause)."""
        assert self._next is not None
        interval = self.settings.interval
        if now <= self._next:
            return self._next
        return self._next + math.ceil((now - self._next) / interval) * interval

    async def tick_now(self) -> TickReport:
        """Run one perceive -> decide -> act now, outside the schedule (`agentctl tick`)."""
        now = time.monotonic()
        return await self._tick(now, now, manual=True)

    # -- the pipeline ------------------------------------------------------------------------
    async def _tick(self, scheduled: float, started: float, *, manual: bool) -> TickReport:
        async with self._lock:
            self.ticks += 1
            tick = self.ticks
            tel = self._tracer
            rec = self._rec = tel.begin_tick(tick) if tel is not None else None
            t0 = time.monotonic()
            observation = await self._perceive(tick)
            t1 = time.monotonic()
            actions = await self._decide(observation)
            t2 = time.monotonic()
            results = await self._act(actions, tick)
            t3 = time.monotonic()
            self._rec = None
        timings = StageTimings(perceive=t1 - t0, decide=t2 - t1, act=t3 - t2, total=t3 - t0)
        self.last = timings
        for i, v in enumerate((timings.perceive, timings.decide, timings.act, timings.total)):
            self._sums[i] += v
        report = TickReport(
            tick=tick,
            scheduled=scheduled,
            started=started,
            lateness=started - scheduled,
            timings=timings,
            observation=observation,
            results=results,
            manual=manual,
        )
        if log.isEnabledFor(logging.DEBUG):
            n = sum(len(r) for r in observation.readings.values())
            log.debug(
                "tick %d: %d readings, %d errors, %d actions, %.1f ms, late %.2f ms",
                tick,
                n,
                len(observation.errors),
                len(results),
                timings.total * 1e3,
                report.lateness * 1e3,
            )
        if tel is not None:
            tel.end_tick(report, rec, t0, t1, t2)
        for observer in self._observers:
            try:
                observer.on_tick(report)
            except Exception:  # a broken observer must not stop the loop; log it once
                if id(observer) not in self._sink_failed:
                    self._sink_failed.add(id(observer))
                    log.exception("tick observer %r failed (logged once)", observer)
        return report

    def _timeout(self, handle: PluginHandle) -> float:
        s = self.settings
        return handle.config.timeout or s.plugin_timeout or s.interval

    async def _perceive(self, tick: int) -> Observation:
        wall = time.time()
        mono = time.monotonic()
        readings: dict[str, dict[str, Value]] = {}
        errors: dict[str, str] = {}
        calls: dict[str, asyncio.Future[Any]] = {}
        loop = asyncio.get_running_loop()
        executor = self.executor
        for name, handle in self.sensors.items():
            if not handle.due(tick):
                continue
            # its task may be done (cancelled at its timeout) while its thread still runs:
            # the executor knows, and a second call would only take another thread
            hung = handle.pending is not None and not handle.pending.done()
            in_thread = executor is not None and executor.busy(handle.owner)
            if hung or in_thread:
                where = "in a thread " if in_thread else ""
                handle.fail(f"previous call is still running {where}(hung)", stuck=in_thread)
                handle.schedule_next(tick)
                errors[name] = handle.last_error or ""
                if self._rec is not None:
                    self._rec.call("sensor", name, mono, mono, errors[name])
                continue
            with running_for(handle.owner):
                # the task copies the context: its to_thread calls are tagged with the sensor
                fut: asyncio.Future[Any] = loop.create_task(handle.obj.perceive())
            handle.pending = fut
            calls[name] = fut
        if calls:
            # one bare yield lets every new task take its first step: sensors that answer
            # without waiting are done after it, and never pay for asyncio.wait's machinery
            await asyncio.sleep(0)
            # an explicit stage_timeout caps every sensor; by default each has its own
            stage = self.settings.stage_timeout
            stage_end = mono + stage if stage else math.inf
            for name, fut in calls.items():
                handle = self.sensors[name]
                end = min(mono + self._timeout(handle), stage_end)
                error = await wait_call(fut, max(0.0, end - time.monotonic()), end - mono)
                if error is None:
                    error, values = check_readings(fut.result())
                if error is None:
                    readings[name] = values
                    handle.ok()
                else:
                    # timed out (its cancellation is only delivered at the next turn)
                    gave_up = not fut.done() or fut.cancelled()
                    stuck = executor is not None and gave_up and _abandon(executor, handle)
                    handle.fail(error, stuck=stuck)
                    errors[name] = handle.last_error or error
                handle.schedule_next(tick)  # after ok()/fail(): backoff applies from now
                if self._rec is not None:
                    self._rec.call("sensor", name, mono, time.monotonic(), error)
        return Observation(tick=tick, monotonic=mono, wall=wall, readings=readings, errors=errors)

    async def _decide(self, observation: Observation) -> list[Action]:
        actions: list[Action] = []
        for name, handle in self.policies.items():
            if self._rec is not None:
                self._rec.policy(name, handle)
            try:
                out = handle.obj.decide(observation, handle.policy_state)
                if inspect.isawaitable(out):
                    async with asyncio.timeout(self._timeout(handle)):
                        out = await out
            except TimeoutError:
                handle.fail(f"timed out after {self._timeout(handle):g}s")
                continue
            except Exception as exc:  # noqa: BLE001 - isolate any policy failure
                handle.fail(f"{type(exc).__name__}: {exc}")
                continue
            if not isinstance(out, list) or not all(isinstance(a, Action) for a in out):
                handle.fail(f"returned {type(out).__name__}, expected a list of Action")
                continue
            handle.ok()
            actions.extend(a if a.source else msgspec.structs.replace(a, source=name) for a in out)
        return actions

    async def _act(self, actions: list[Action], tick: int) -> list[ActionResult]:
        """Start the tick's actions (highest priority first, at most ``max_concurrent_actions``
        at a time) and wait for them until the stage timeout. Actions still running then go
        on in the background; their results reach the observers when they finish, so a slow
        actuator never holds the loop."""
        if not actions:
            return []
        actions = sorted(actions, key=lambda a: -a.priority)
        room = max(0, self.settings.max_actions_per_tick - len(self.actions.in_flight))
        dropped, actions = actions[room:], actions[:room]
        self.dropped_actions += len(dropped)
        tasks = [self.actions.submit(a, tick) for a in actions]
        results: list[ActionResult] = []
        if tasks:
            done, pending = await asyncio.wait(
                tasks, timeout=self.settings.stage_timeout or self.settings.interval
            )
            results = [t.result() for t in tasks if t in done and not t.cancelled()]
            for task in pending:
                task.add_done_callback(self._late_result)
        now = time.time()
        results.extend(
            ActionResult(
                action=a,
                status="skipped",
                tick=tick,
                finished_at=now,
                error=f"more than {self.settings.max_actions_per_tick} actions in flight",
            )
            for a in dropped
        )
        return results

    def _late_result(self, task: asyncio.Task[ActionResult]) -> None:
        if task.cancelled():
            return
        result = task.result()
        for observer in self._observers:
            try:
                observer.on_late_result(result)
            except Exception:
                log.exception("late-result observer %r failed", observer)

    # -- statistics --------------------------------------------------------------------------
    def stats(self) -> TickStats:
        n = max(1, self.ticks)
        p, d, a, t = (s / n for s in self._sums)
        return TickStats(
            ticks=self.ticks,
            overruns=self.overruns,
            skipped=self.skipped,
            lateness_p50=self.lateness.percentile(0.50),
            lateness_p99=self.lateness.percentile(0.99),
            lateness_max=self.lateness.max,
            last=self.last,
            mean=StageTimings(perceive=p, decide=d, act=a, total=t),
            interval=self.settings.interval,
            paused=self._paused,
        )


def _abandon(executor: PluginExecutor, handle: PluginHandle) -> bool:
    """After a timed-out call: True if it is still running in a thread (now abandoned, and
    named in the log once)."""
    n = executor.abandon(handle.owner)
    if n:
        log.warning(
            "%s %r: a call is stuck in a thread past its timeout; abandoning it (the plugin is "
            "not called again until it returns)",
            handle.kind,
            handle.name,
        )
    return n > 0 or executor.busy(handle.owner)
