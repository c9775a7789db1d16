"""The `rules` and `rate` policies on real Observations, tick by tick."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agentd.model import Action, Observation
from agentd.plugins.base import PolicyState
from agentd.plugins.builtin import rate, rules, threshold


def policy(module, **raw: Any):  # type: ignore[no-untyped-def]
    return module.SPEC.factory(msgspec.convert(raw, module.SPEC.config_type))


def obs(tick: int, wall: float | None = None, **readings: dict[str, Any]) -> Observation:
    return Observation(
        tick=tick,
        monotonic=float(tick),
        wall=wall if wall is not None else 1000.0 + tick,
        readings=readings,
    )


def run(p, state: PolicyState, series: list[Observation]) -> list[list[Action]]:  # type: ignore[no-untyped-def]
    return [p.decide(o, state) for o in series]


HOT = [
    {"metric": "t.temp", "op": ">", "value": 70.0},
    {"metric": "f.fan", "op": "==", "value": "off"},
]


def test_rules_all_for_ticks_hysteresis_and_templated_params() -> None:
    p = policy(
        rules,
        conditions=HOT,
        for_ticks=2,
        hysteresis=5.0,
        actuator="fan",
        action="on",
        params={"why": "temp {t.temp:.1f} C at tick {tick}", "temp": "{t.temp}", "n": 1},
        clear_action="off",
    )
    st = PolicyState()
    temps = [75.0, 75.0, 76.0, 68.0, 66.0, 64.0, 71.0, 72.0]
    out = run(p, st, [obs(i, t={"temp": v}, f={"fan": "off"}) for i, v in enumerate(temps, 1)])
    fired = [(i + 1, a.name) for i, acts in enumerate(out) for a in acts]
    # fires on tick 2 (2 ticks in a row), holds at 76 and 68 (> 70 - 5), clears at 64,
    # fires again after two more hot ticks
    assert fired == [(2, "on"), (6, "off"), (8, "on")]
    first = out[1][0]
    assert first.actuator == "fan"
    assert first.params == {"why": "temp 75.0 C at tick 2", "temp": 75.0, "n": 1}
    assert st.dirty


def test_rules_any_and_missing_readings_neither_fire_nor_clear() -> None:
    p = policy(rules, conditions=HOT, match="any")
    st = PolicyState()
    assert p.decide(obs(1, t={"temp": 20.0}, f={"fan": "on"}), st) == []
    assert [a.name for a in p.decide(obs(2, t={"temp": 20.0}, f={"fan": "off"}), st)] == ["alert"]
    assert p.decide(obs(3), st) == []  # nothing read: still active
    assert st["active"] is True


def test_rules_cooldown() -> None:
    p = policy(rules, conditions=[{"metric": "s.x", "op": ">=", "value": 1}], cooldown=100)
    st = PolicyState()
    series = [obs(i, wall=1000.0 + i * 10, s={"x": v}) for i, v in enumerate([1, 0, 1, 0, 1], 1)]
    fired = [i for i, acts in enumerate(run(p, st, series), 1) if acts]
    assert fired == [1]  # cleared at 2 and 4 but the 100 s cooldown holds until wall 1110
    later = p.decide(obs(20, wall=1200.0, s={"x": 1}), st)
    assert [a.name for a in later] == ["alert"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"conditions": []}, "Expected `array` of length >= 1"),
        ({"conditions": [{"metric": "nodot", "op": ">", "value": 1}]}, "<sensor>.<metric>"),
        ({"conditions": [{"metric": "a.b", "op": ">", "value": "x"}]}, "compares with a number"),
        ({"conditions": [{"metric": "a.b", "op": "~", "value": 1}]}, "Invalid enum value '~'"),
        (
            {"conditions": [{"metric": "a.b", "op": ">", "value": 1}], "params": {"m": "{a.b:zz}"}},
            "bad format",
        ),
    ],
)
def test_rules_config_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(raw, rules.RulesConfig)


def test_rate_fires_on_change_per_second_and_clears() -> None:
    p = policy(
        rate,
        metric="d.used",
        window=10.0,
        above=5.0,
        params={"r": "{rate:.1f}/s"},
        clear_action="ok",
    )
    st = PolicyState()
    # 1 unit/s, then 10 units/s, then flat
    values = [0, 1, 2, 3, 4, 5, 15, 25, 35, 45, 55, 65, 75, 75, 75, 75, 75, 75, 75, 75, 75, 75]
    out = run(p, st, [obs(i, wall=float(i), d={"used": v}) for i, v in enumerate(values)])
    fired = [(i, a.name, a.params) for i, acts in enumerate(out) for a in acts]
    # tick 10: (55 - 0) / 10 s = 5.5/s > 5; tick 17: (75 - 25) / 10 s = 5.0/s, back
    assert [f[:2] for f in fired] == [(10, "alert"), (17, "ok")]
    assert fired[0][2]["r"] == "5.5/s"
    assert fired[0][2]["metric"] == "d.used"
    assert len(st["samples"]) <= 12


def test_rate_counter_reset_restarts_the_window() -> None:
    p = policy(rate, metric="n.rx", window=4.0, below=0.5, counter=True, min_span=0.5)
    st = PolicyState()
    values = [100, 101, 102, 3, 4, 5, 6]  # the counter reset at tick 3
    out = run(p, st, [obs(i, wall=float(i), n={"rx": v}) for i, v in enumerate(values)])
    assert all(acts == [] for acts in out)  # never a huge negative rate
    assert st["rate"] == pytest.approx(1.0)


def test_idempotency_keys_differ_between_policies_and_restarts() -> None:
    hot = [{"metric": "t.temp", "op": ">", "value": 70.0}]
    a = policy(rules, conditions=hot, actuator="x", action="go")
    b = policy(rules, conditions=hot, actuator="x", action="go", params={"n": 1})
    o = obs(5, wall=1000.0, t={"temp": 80.0})
    ka = a.decide(o, PolicyState())[0].key
    kb = b.decide(o, PolicyState())[0].key
    assert ka != kb  # the same action on the same tick from two policies
    again = policy(rules, conditions=hot, actuator="x", action="go")
    restarted = again.decide(obs(5, wall=5000.0, t={"temp": 80.0}), PolicyState())[0].key
    assert restarted != ka  # tick 5 again after a restart is another firing
    th = policy(threshold, metric="t.temp", above=70.0)
    first = th.decide(o, PolicyState())[0].key
    assert first != th.decide(obs(5, wall=9000.0, t={"temp": 80.0}), PolicyState())[0].key


# -- a sensor read less often than every tick -------------------------------------------------
# A sensor with `interval = 3 * agent.interval` appears in the observation one tick in three;
# on the other ticks its metric is missing. "A reading missing this tick neither fires nor
# clears": every policy must count its streak over the readings, not over the ticks.
def _slow(values: list[float], every: int = 3) -> list[Observation]:
    """The readings of a slow sensor `w.temp`, one every ``every`` ticks."""
    out = []
    for i, v in enumerate(values):
        for j in range(every):
            tick = i * every + j + 1
            out.append(obs(tick, w={"temp": v}) if j == 0 else obs(tick))
    return out


def test_rules_for_ticks_counts_readings_of_a_slow_sensor() -> None:
    p = policy(
        rules,
        conditions=[{"metric": "w.temp", "op": ">", "value": 30.0}],
        for_ticks=3,
        actuator="log",
        action="hot",
    )
    st = PolicyState()
    out = run(p, st, _slow([35.0, 36.0, 37.0, 38.0]))
    fired = [o.tick for o, acts in zip(_slow([35.0, 36.0, 37.0, 38.0]), out, strict=True) if acts]
    # the third reading above 30 (tick 7) fires; the missing ticks between kept the streak
    assert fired == [7]


def test_rules_a_reading_below_still_resets_the_streak_of_a_slow_sensor() -> None:
    p = policy(
        rules,
        conditions=[{"metric": "w.temp", "op": ">", "value": 30.0}],
        for_ticks=3,
        actuator="log",
        action="hot",
    )
    st = PolicyState()
    out = run(p, st, _slow([35.0, 36.0, 20.0, 37.0, 38.0]))
    assert not any(out)
    assert st["count"] == 2


def test_threshold_for_ticks_counts_readings_of_a_slow_sensor() -> None:
    p = policy(threshold, metric="w.temp", above=30.0, for_ticks=3, actuator="log")
    st = PolicyState()
    series = _slow([35.0, 36.0, 37.0, 38.0])
    out = run(p, st, series)
    assert [o.tick for o, acts in zip(series, out, strict=True) if acts] == [7]


def test_rate_over_a_slow_sensor_uses_its_readings_only() -> None:
    # +10 per reading, one reading every 3 s: 3.33/s; the missing ticks add no samples
    p = policy(rate, metric="w.temp", window=9.0, above=3.0, actuator="log", action="fast")
    st = PolicyState()
    series = _slow([0.0, 10.0, 20.0, 30.0, 40.0])
    out = run(p, st, series)
    fired = [o.tick for o, acts in zip(series, out, strict=True) if acts]
    assert fired == [7]
    assert len(st["samples"]) <= 4
    assert st["rate"] == pytest.approx(10 / 3)
