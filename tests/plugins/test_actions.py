"""The action path (ActionRunner): params validation, retries with backoff and jitter,
retry_on, idempotency keys (in memory and through the store's hook), the concurrency bound with
priority order, and actuator backoff/recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from agentd.actions import ActionRunner
from agentd.model import Action
from agentd.plugins.base import ActuatorReply
from agentd.plugins.builtin.file_actuator import WriteParams
from tests.utils import handle


class Recorder:
    def __init__(self, fail: int = 0, exc: type[Exception] = OSError) -> None:
        self.calls: list[tuple[float, Action]] = []
        self.fail = fail
        self.exc = exc

    async def act(self, action: Action) -> ActuatorReply:
        self.calls.append((time.monotonic(), action))
        if self.fail:
            self.fail -= 1
            raise self.exc("device busy")
        return ActuatorReply(output=len(self.calls))


class Hang:
    def __init__(self) -> None:
        self.calls = 0

    async def act(self, action: Action) -> None:
        self.calls += 1
        await asyncio.sleep(3600)


class Ledger:
    """A key ledger from two plain or async functions, as the store provides one."""

    def __init__(self, seen, claimed=None) -> None:  # type: ignore[no-untyped-def]
        self.key_seen = seen
        self.claim_key = claimed or (lambda actuator, key: None)


def runner(*handles, concurrency: int = 8, key_seen=None, key_claimed=None, **kw) -> ActionRunner:  # type: ignore[no-untyped-def]
    if key_seen is not None:
        kw["ledger"] = Ledger(key_seen, key_claimed)
    return ActionRunner({h.name: h for h in handles}, 1.0, concurrency, **kw)


async def test_params_are_validated_against_the_actions_struct() -> None:
    rec = Recorder()
    r = runner(handle("actuator", "led", rec, actions={"write": WriteParams}))
    bad = await r.run(Action(actuator="led", name="write", params={"target": "led0"}))
    assert bad.status == "rejected"
    assert bad.error == "actuator 'led': write.params.value: required key is missing"
    wrong = await r.run(
        Action(actuator="led", name="write", params={"target": 3, "value": 1, "x": 1})
    )
    assert wrong.status == "rejected"
    assert wrong.error == "actuator 'led': write.params.target: expected a string, got 3"
    extra = await r.run(
        Action(actuator="led", name="write", params={"target": "a", "value": 1, "x": 1})
    )
    assert extra.error == "actuator 'led': write.params.x: unknown key"
    other = await r.run(Action(actuator="led", name="blink"))
    assert other.error == "actuator 'led' has no action 'blink' (offers: write)"
    assert rec.calls == []  # nothing bad reached the actuator
    ok = await r.run(Action(actuator="led", name="write", params={"target": "a", "value": 1}))
    assert (ok.status, ok.attempts, ok.output) == ("ok", 1, 1)
    assert ok.duration >= 0


async def test_an_actuators_own_validate_hook_rejects(caplog: pytest.LogCaptureFixture) -> None:
    class Picky(Recorder):
        def validate(self, action: Action) -> str | None:
            return None if action.params.get("n", 0) < 5 else "params.n: at most 4"

    rec = Picky()
    r = runner(handle("actuator", "p", rec))
    for _ in range(3):
        res = await r.run(Action(actuator="p", name="go", params={"n": 9}, source="pol"))
    assert (res.status, res.error) == ("rejected", "actuator 'p': params.n: at most 4")
    assert rec.calls == []
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # logged once, not every time a policy sends the same bad action
    assert warned == ["action 'go' from pol rejected: actuator 'p': params.n: at most 4"]


async def test_retries_back_off_exponentially_with_jitter() -> None:
    rec = Recorder(fail=3)
    r = runner(handle("actuator", "a", rec, retries=3, backoff=0.05, backoff_max=1.0))
    res = await r.run(Action(actuator="a", name="go"))
    assert (res.status, res.attempts) == ("ok", 4)
    gaps = [b[0] - a[0] for a, b in zip(rec.calls, rec.calls[1:], strict=False)]
    # delay n is backoff * 2**(n-1) scaled by a jitter in [0.5, 1]: never above, never below half
    for n, gap in enumerate(gaps):
        nominal = 0.05 * 2**n
        assert gap >= nominal * 0.5, (n, gaps)
    assert sum(gaps) >= (0.05 + 0.1 + 0.2) * 0.5


async def test_retries_exhausted_report_failed_with_attempts() -> None:
    rec = Recorder(fail=10)
    r = runner(handle("actuator", "a", rec, retries=2, backoff=0.001))
    res = await r.run(Action(actuator="a", name="go"))
    assert (res.status, res.attempts, len(rec.calls)) == ("failed", 3, 3)
    assert res.error == "OSError: device busy"


async def test_retry_on_limits_what_is_retried() -> None:
    # errors only: a timeout is not retried
    hang = Hang()
    r = runner(handle("actuator", "h", hang, timeout=0.05, retries=3, retry_on=("error",)))
    res = await r.run(Action(actuator="h", name="go"))
    assert (res.status, res.attempts, hang.calls) == ("timeout", 1, 1)
    # timeouts only: an error is not retried
    rec = Recorder(fail=5)
    r2 = runner(handle("actuator", "e", rec, retries=3, retry_on=("timeout",), backoff=0.001))
    res2 = await r2.run(Action(actuator="e", name="go"))
    assert (res2.status, res2.attempts) == ("failed", 1)


async def test_deadline_passed_is_skipped() -> None:
    rec = Recorder()
    r = runner(handle("actuator", "a", rec))
    res = await r.run(Action(actuator="a", name="go", deadline=time.time() - 1))
    assert res.status == "skipped"
    assert rec.calls == []


def _non_idempotent(obj: object, name: str = "x"):  # type: ignore[no-untyped-def]
    h = handle("actuator", name, obj)
    h.spec = dataclasses.replace(h.spec, idempotent=False)
    return h


async def test_idempotency_key_runs_once_for_non_idempotent_actuators() -> None:
    rec = Recorder()
    r = runner(_non_idempotent(rec))
    first = await r.run(Action(actuator="x", name="go", key="k1"))
    again = await r.run(Action(actuator="x", name="go", key="k1"))
    other = await r.run(Action(actuator="x", name="go", key="k2"))
    nokey = [await r.run(Action(actuator="x", name="go")) for _ in range(2)]
    assert first.status == "ok"
    assert (again.status, again.error) == ("skipped", "already done (idempotency key 'k1')")
    assert other.status == "ok"
    assert [n.status for n in nokey] == ["ok", "ok"]
    assert len(rec.calls) == 4
    # an idempotent actuator runs the same key every time
    rec2 = Recorder()
    r2 = runner(handle("actuator", "y", rec2))
    for _ in range(2):
        await r2.run(Action(actuator="y", name="go", key="k1"))
    assert len(rec2.calls) == 2


async def test_idempotency_holds_across_a_restart_through_the_store_hooks() -> None:
    """A new runner (a restarted daemon) asks the journal; the claim is made before acting."""
    journal: set[tuple[str, str]] = set()
    order: list[str] = []

    async def seen(actuator: str, key: str) -> bool:
        await asyncio.sleep(0)
        return (actuator, key) in journal

    def claimed(actuator: str, key: str) -> None:
        order.append("claim")
        journal.add((actuator, key))

    class Rec(Recorder):
        async def act(self, action: Action) -> ActuatorReply:
            order.append("act")
            return await super().act(action)

    rec = Rec()
    before = runner(_non_idempotent(rec), key_seen=seen, key_claimed=claimed)
    assert (await before.run(Action(actuator="x", name="go", key="boot-1"))).status == "ok"
    assert order == ["claim", "act"]
    after = runner(_non_idempotent(rec), key_seen=seen, key_claimed=claimed)  # "restart"
    res = await after.run(Action(actuator="x", name="go", key="boot-1"))
    assert res.status == "skipped"
    assert len(rec.calls) == 1
    # a plain (sync) hook works too, and a rejected action does not use up its key
    sync = runner(_non_idempotent(rec), key_seen=lambda a, k: (a, k) in journal)
    assert (await sync.run(Action(actuator="x", name="go", key="boot-1"))).status == "skipped"
    bad = await sync.run(Action(actuator="x", name="nope", key="k9", deadline=0.5))
    assert bad.status == "skipped"
    assert (await sync.run(Action(actuator="x", name="go", key="k9"))).status == "ok"


async def test_concurrency_bound_and_priority_order() -> None:
    running = 0
    peak = 0
    started: list[int] = []

    class Busy:
        async def act(self, action: Action) -> None:
            nonlocal running, peak
            started.append(action.priority)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1

    from tests.test_loop import make_loop

    busy = handle("actuator", "b", Busy())
    loop = make_loop(5.0, actuators={"b": busy}, max_concurrent_actions=2)
    actions = [Action(actuator="b", name="go", priority=p) for p in (1, 5, 3, 9, 0, 7)]
    results = await loop._act(actions, tick=1)
    assert [r.status for r in results] == ["ok"] * 6
    assert peak == 2
    assert started == [9, 7, 5, 3, 1, 0]


async def test_failing_actuator_degrades_backs_off_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(fail=3)
    h = handle("actuator", "a", rec, degraded_after=3, max_interval=0.2)
    r = runner(h)
    for tick in range(3):
        assert (await r.run(Action(actuator="a", name="go"), tick)).status == "failed"
    assert h.state == "degraded"
    assert 0 < h.backing_off() <= 0.2
    skipped = await r.run(Action(actuator="a", name="go"), tick=4)
    assert skipped.status == "skipped"
    assert str(skipped.error).startswith("actuator is degraded")
    assert len(rec.calls) == 3  # the loop makes no call while backing off
    await asyncio.sleep(h.backing_off() + 0.01)
    ok = await r.run(Action(actuator="a", name="go"), tick=5)
    assert ok.status == "ok"
    assert (h.state, h.consecutive_failures, h.backoff) == ("ok", 0, 1)
    assert "recovered after 3 failures" in caplog.text


async def test_sensor_backoff_is_capped_by_max_interval() -> None:
    class Broken:
        async def perceive(self) -> dict[str, float]:
            raise OSError("gone")

    h = handle("sensor", "s", Broken(), degraded_after=2, max_interval=0.8)
    h.set_interval(0.1)
    for _ in range(10):
        h.fail("gone")
    assert h.state == "degraded"
    assert h.backoff == 8  # 0.1 s x 8 = the 0.8 s cap
    h.ok()
    assert (h.state, h.backoff) == ("ok", 1)


async def test_manual_results_reach_the_manual_sinks_tick_results_do_not() -> None:
    seen: list[tuple[str, int | None]] = []
    sinks = [
        lambda res: seen.append((res.status, res.tick)),
        lambda res: 1 / 0,  # a broken sink loses nobody their result
    ]
    r = runner(handle("actuator", "a", Recorder()), manual_sinks=sinks)
    assert (await r.run(Action(actuator="a", name="go"))).status == "ok"
    assert (await r.run(Action(actuator="nope", name="go"))).status == "rejected"
    assert (await r.run(Action(actuator="a", name="go"), tick=7)).status == "ok"
    assert seen == [("ok", None), ("rejected", None)]


async def test_a_manual_call_probes_a_degraded_actuator() -> None:
    rec = Recorder(fail=3)
    h = handle("actuator", "a", rec, degraded_after=3, max_interval=60.0)
    r = runner(h)
    for tick in range(3):
        await r.run(Action(actuator="a", name="go"), tick)
    assert h.backing_off() > 1
    assert (await r.run(Action(actuator="a", name="go"), tick=4)).status == "skipped"
    manual = await r.run(Action(actuator="a", name="go"))  # agentctl act
    assert manual.status == "ok"
    assert h.state == "ok"
    assert (await r.run(Action(actuator="a", name="go"), tick=5)).status == "ok"
