"""The perception loop with real clocks and real (test) plugins."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from agentd.fanout import TickFanout
from agentd.loop import LoopSettings, PerceptionLoop
from agentd.model import Action, Observation, TickReport
from agentd.plugins.base import PolicyState
from tests.utils import handle


class Counter:
    def __init__(self) -> None:
        self.n = 0

    async def perceive(self) -> dict[str, float]:
        self.n += 1
        return {"n": float(self.n)}


class Sleeper:
    def __init__(self, seconds: float, every: int = 1) -> None:
        self.seconds = seconds
        self.every = every
        self.calls = 0

    async def perceive(self) -> dict[str, float]:
        self.calls += 1
        if self.calls % self.every == 0:
            await asyncio.sleep(self.seconds)
        return {"x": 1.0}


class Flaky:
    """Raises while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False

    async def perceive(self) -> dict[str, float]:
        if self.failing:
            raise OSError("no such device: /dev/i2c-1")
        return {"t": 21.5}


class Garbage:
    async def perceive(self) -> object:
        return ["not", "a", "mapping"]


async def run_for(loop: PerceptionLoop, ticks: int, timeout: float = 30.0) -> list[TickReport]:
    reports: list[TickReport] = []

    class Sink:
        def on_tick(self, report: TickReport) -> None:
            reports.append(report)
            if len(reports) >= ticks:
                loop.stop()

        def on_late_result(self, result: object) -> None:
            pass

    fanout = next(o for o in loop.observers if isinstance(o, TickFanout))
    unsubscribe = fanout.subscribe(Sink())
    try:
        await asyncio.wait_for(loop.run(), timeout)
    finally:
        unsubscribe()
    return reports


def make_loop(interval: float, sensors=None, policies=None, actuators=None, **kw) -> PerceptionLoop:
    # built with a fan-out, as the daemon builds it, so run_for can watch any loop
    return PerceptionLoop(
        LoopSettings(interval=interval, **kw),
        sensors or {},
        policies or {},
        actuators or {},
        observers=[TickFanout()],
    )


@pytest.mark.slow
async def test_no_drift_over_200_ticks() -> None:
    interval = 0.02
    loop = make_loop(interval, {"c": handle("sensor", "c", Counter())})
    t0 = time.monotonic()
    reports = await run_for(loop, 200)
    stats = loop.stats()
    first = reports[0].scheduled
    # every deadline sits exactly on the grid start + k * interval: no drift at all. On a loaded
    # machine a tick may overrun; then whole deadlines are skipped and counted, never shifted.
    slots = [(r.scheduled - first) / interval for r in reports]
    for k in slots:
        assert k == pytest.approx(round(k), abs=1e-6)
    assert round(slots[-1]) == 199 + stats.skipped
    # the last tick started within one interval of its grid deadline
    assert 0 <= reports[-1].started - reports[-1].scheduled < interval
    assert stats.ticks == 200
    assert stats.skipped <= 10, "more than 5 % of the deadlines were skipped"
    assert 0 < stats.lateness_p99 <= stats.lateness_max
    assert stats.lateness_p50 <= stats.lateness_p99
    assert time.monotonic() - t0 < (200 + stats.skipped) * interval + 2.0


async def test_overrun_skips_missed_ticks_without_burst() -> None:
    interval = 0.05
    # every 5th call sleeps 3 intervals (+ a little): the tick overruns 3 deadlines
    slow = Sleeper(3 * interval + 0.01, every=5)
    loop = make_loop(interval, {"slow": handle("sensor", "slow", slow, timeout=10 * interval)})
    seen: list[tuple[int, int]] = []  # (overruns, skipped) as each report is delivered
    fanout = next(o for o in loop.observers if isinstance(o, TickFanout))

    class Counts:
        def on_tick(self, report: TickReport) -> None:
            st = loop.stats()
            seen.append((st.overruns, st.skipped))

        def on_late_result(self, result: object) -> None:
            pass

    fanout.subscribe(Counts())
    reports = await run_for(loop, 11)
    gaps = [b.scheduled - a.scheduled for a, b in itertools.pairwise(reports)]
    slots = [round(g / interval) for g in gaps]
    for g, k in zip(gaps, slots, strict=True):  # still on the original grid
        assert g == pytest.approx(k * interval, abs=1e-6)
    assert min(gaps) == pytest.approx(interval, abs=1e-9)  # never a catch-up burst
    # the two slow ticks (5 and 10) each skipped at least the 3 deadlines they slept through
    assert slots[4] >= 4
    assert slots[9] >= 4
    # every skipped deadline is counted exactly: when tick 11 is reported the counters hold
    # the overruns of ticks 1-10, which are the gaps between the reports. On a quiet machine
    # that is 2 overruns and 6 deadlines; a loaded one may add an overrun, counted the same way.
    overruns, skipped = seen[-1]
    assert overruns == sum(1 for k in slots if k > 1) >= 2
    assert skipped == sum(k - 1 for k in slots) >= 6


async def test_failing_plugins_are_isolated_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentd")
    flaky = Flaky()
    sensors = {
        "good": handle("sensor", "good", Counter()),
        "flaky": handle("sensor", "flaky", flaky),
        "hang": handle("sensor", "hang", Sleeper(3600), timeout=0.02),
        "junk": handle("sensor", "junk", Garbage()),
    }
    loop = make_loop(0.05, sensors)
    flaky.failing = True
    reports = await run_for(loop, 4)
    flaky.failing = False
    reports += await run_for(loop, 3)
    for r in reports:
        assert "n" in r.observation.readings["good"]
    first = reports[0].observation
    assert first.errors["flaky"] == "OSError: no such device: /dev/i2c-1"
    assert first.errors["hang"] == "timed out after 0.02s"
    assert first.errors["junk"].startswith("returned list, expected a mapping")
    assert reports[-1].observation.readings["flaky"] == {"t": 21.5}
    records = [r.getMessage() for r in caplog.records if r.name == "agentd.plugins"]
    assert sum("sensor 'flaky' is failing" in m for m in records) == 1
    assert sum("sensor 'flaky' recovered" in m for m in records) == 1
    assert sum("sensor 'junk' is failing" in m for m in records) == 1
    assert sum("sensor 'hang' is failing" in m for m in records) == 1
    # three failures in a row: degraded, logged once, polled less often
    assert sum("sensor 'junk' degraded" in m for m in records) == 1
    assert sensors["junk"].state == "degraded"
    assert sensors["junk"].backoff > 1
    assert loop.stats().ticks == 7


async def test_decide_and_act_pipeline() -> None:
    done: list[Action] = []

    class Policy:
        def decide(self, obs: Observation, state: PolicyState) -> list[Action]:
            state["seen"] = state.get("seen", 0) + 1
            return [
                Action(actuator="act", name="ping", params={"n": obs.get("c.n")}, priority=p)
                for p in (1, 5)
            ]

    class Act:
        async def act(self, action: Action) -> None:
            done.append(action)

    class Broken:
        def decide(self, obs: Observation, state: PolicyState) -> object:
            return "nonsense"

    policy = handle("policy", "p", Policy())
    broken = handle("policy", "b", Broken())
    loop = make_loop(
        0.02,
        {"c": handle("sensor", "c", Counter())},
        {"p": policy, "b": broken},
        {"act": handle("actuator", "act", Act())},
        max_concurrent_actions=1,
    )
    reports = await run_for(loop, 3)
    assert [a.priority for a in done[:2]] == [5, 1]  # higher priority first
    assert all(r.status == "ok" and r.attempts == 1 for rep in reports for r in rep.results)
    assert reports[0].results[0].action.source == "p"
    assert policy.policy_state.get("seen") == 3
    assert broken.state == "failing"
    assert broken.last_error == "returned str, expected a list of Action"


async def test_actuator_retries_then_reports_timeout() -> None:
    calls = 0

    class Slow:
        async def act(self, action: Action) -> None:
            nonlocal calls
            calls += 1
            await asyncio.sleep(10)

    act = handle("actuator", "slow", Slow(), timeout=0.02, retries=2, backoff=0.001)
    loop = make_loop(0.05, actuators={"slow": act})
    result = await loop.actions.run(Action(actuator="slow", name="go"))
    assert (result.status, result.attempts, calls) == ("timeout", 3, 3)
    assert result.error == "timed out after 0.02s"
    rejected = await loop.actions.run(Action(actuator="nope", name="go"))
    assert rejected.status == "rejected"
    assert rejected.error == "no actuator named 'nope' (configured: slow)"


async def test_pause_resume_and_tick_now() -> None:
    loop = make_loop(0.02, {"c": handle("sensor", "c", Counter())})
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.1)
    loop.pause()
    await asyncio.sleep(0.03)
    paused_at = loop.stats().ticks
    await asyncio.sleep(0.1)
    assert loop.stats().ticks == paused_at
    assert loop.stats().paused
    report = await loop.tick_now()
    assert report.manual
    assert report.tick == paused_at + 1
    loop.resume()
    await asyncio.sleep(0.1)
    assert loop.stats().ticks > paused_at + 2
    assert loop.stats().skipped == 0  # a pause is not an overrun
    loop.stop()
    await asyncio.wait_for(task, 2)
