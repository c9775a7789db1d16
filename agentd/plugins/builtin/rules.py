"""`rules` policy: several conditions joined by ``all``/``any`` that must hold ``for_ticks`` in
a row; fires an action once (with params templated from the readings), clears with hysteresis
(numeric conditions must be back past their bound by ``hysteresis``), waits ``cooldown`` seconds
between firings. Its counters live in the policy state, so they survive a restart with the
store on. A reading missing this tick neither fires nor clears."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agentd.model import Action, Observation, Value
from agentd.plugins.base import PluginSpec, PolicyState
from agentd.plugins.builtin._firing import FiringConfig
from agentd.plugins.builtin._template import check_template, config_ident, firing_key, render

__all__ = ["SPEC", "Condition", "RulesConfig", "RulesPolicy"]

Op = Literal[">", ">=", "<", "<=", "==", "!="]
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class Condition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    #: ``"<sensor>.<metric>"``
    metric: str
    op: Op
    value: float | bool | str

    def __post_init__(self) -> None:
        if "." not in self.metric:
            raise ValueError(f"`metric` {self.metric!r} is written <sensor>.<metric>")
        if self.op in ("<", "<=", ">", ">=") and not isinstance(self.value, int | float):
            raise ValueError(f"`{self.metric} {self.op}` compares with a number")


class RulesConfig(FiringConfig, kw_only=True):
    conditions: Annotated[list[Condition], Meta(min_length=1, max_length=64)]
    match: Literal["all", "any"] = "all"
    for_ticks: Annotated[int, Meta(ge=1)] = 1
    #: seconds after which an action not yet run is skipped (none: no deadline)
    ttl: Annotated[float, Meta(gt=0)] | None = None

    def __post_init__(self) -> None:
        check_template(self.params)
        check_template(self.clear_params)


def _number(v: Value | None) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class RulesPolicy:
    def __init__(self, config: RulesConfig) -> None:
        self.config = config
        #: idempotency keys are unique per policy config and firing (ticks restart at 1)
        self.ident = config_ident(config)

    @staticmethod
    def _holds(c: Condition, v: Value | None) -> bool | None:
        """True/False, or None when the reading is missing or of the wrong type."""
        if v is None or (c.op in ("<", "<=", ">", ">=") and not _number(v)):
            return None
        try:
            return _OPS[c.op](v, c.value)
        except TypeError:
            return None

    def _cleared(self, c: Condition, v: Value | None) -> bool | None:
        holds = self._holds(c, v)
        if holds is None:
            return None
        h = self.config.hysteresis
        if c.op in (">", ">=") and _number(v):
            return v <= c.value - h  # type: ignore[operator]
        if c.op in ("<", "<=") and _number(v):
            return v >= c.value + h  # type: ignore[operator]
        return not holds

    def decide(self, observation: Observation, state: PolicyState) -> list[Action]:
        c = self.config
        values = [observation.get(cond.metric) for cond in c.conditions]
        joined = all if c.match == "all" else any
        actions: list[Action] = []
        if state.get("active", False):
            cleared = [self._cleared(cond, v) for cond, v in zip(c.conditions, values, strict=True)]
            if None in cleared:
                return []
            # all: any condition back past its bound clears; any: every one must be back
            done = any(cleared) if c.match == "all" else all(cleared)
            if done:
                state["active"] = False
                state["count"] = 0
                if c.clear_action:
                    actions.append(self._action(c.clear_action, c.clear_params, observation))
            return actions
        held = [self._holds(cond, v) for cond, v in zip(c.conditions, values, strict=True)]
        count = int(state.get("count", 0))
        if joined(h is True for h in held):
            count += 1
        elif None in held and not (c.match == "all" and False in held):
            # a reading missing this tick (a sensor read less often than every tick) keeps the
            # streak as it is: only a reading that breaks the condition resets it
            return []
        else:
            count = 0
        state["count"] = count
        last = float(state.get("last_fired", 0.0))
        if count >= c.for_ticks and observation.wall - last >= c.cooldown:
            state["active"] = True
            state["last_fired"] = observation.wall
            actions.append(self._action(c.action, c.params, observation))
        return actions

    def _action(self, name: str, params: dict[str, Any], obs: Observation) -> Action:
        c = self.config
        return Action(
            actuator=c.actuator,
            name=name,
            params=render(params, obs, {"tick": obs.tick, "wall": obs.wall}),
            priority=c.priority,
            deadline=obs.wall + c.ttl if c.ttl else None,
            key=firing_key(self.ident, name, obs),
        )


SPEC = PluginSpec(
    name="rules",
    kind="policy",
    factory=RulesPolicy,
    config_type=RulesConfig,
    description="several conditions (all/any) for N ticks, hysteresis, cooldown, templated params",
)
