"""`threshold` policy: ``metric > above for N ticks`` (or ``< below``) emits an Action once,
with hysteresis (it clears only when the value is back past the threshold by ``hysteresis``)
and a cooldown between firings. Its counters live in the policy state, so they survive a
restart when the store is on."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from agentd.model import Action, Observation
from agentd.plugins.base import PluginSpec, PolicyState
from agentd.plugins.builtin._template import config_ident, firing_key

__all__ = ["SPEC", "ThresholdConfig", "ThresholdPolicy"]


class ThresholdConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: params every action carries besides ``params`` (agentd/config_refs.py checks them)
    EXTRA_PARAMS: ClassVar[tuple[str, ...]] = ("metric", "value", "threshold")
    #: ``"<sensor>.<metric>"``, e.g. ``"system.cpu.percent"``
    metric: str
    above: float | None = None
    below: float | None = None
    for_ticks: Annotated[int, Meta(ge=1)] = 1
    hysteresis: Annotated[float, Meta(ge=0)] = 0.0
    #: seconds between two firings
    cooldown: Annotated[float, Meta(ge=0)] = 0.0
    actuator: str = "log"
    action: str = "alert"
    #: sent when the condition clears (none by default)
    clear_action: str | None = None
    params: dict[str, Any] = {}
    priority: int = 0

    def __post_init__(self) -> None:
        if (self.above is None) == (self.below is None):
            raise ValueError("set exactly one of `above` or `below`")
        if "." not in self.metric:
            raise ValueError("`metric` is written <sensor>.<metric>, e.g. system.cpu.percent")


class ThresholdPolicy:
    def __init__(self, config: ThresholdConfig) -> None:
        self.config = config
        #: idempotency keys are unique per policy config and firing (ticks restart at 1)
        self.ident = config_ident(config)

    def _breached(self, value: float) -> bool:
        c = self.config
        return value > c.above if c.above is not None else value < c.below  # type: ignore[operator]

    def _cleared(self, value: float) -> bool:
        c = self.config
        if c.above is not None:
            return value <= c.above - c.hysteresis
        return value >= c.below + c.hysteresis  # type: ignore[operator]

    def decide(self, observation: Observation, state: PolicyState) -> list[Action]:
        c = self.config
        value = observation.get(c.metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return []
        threshold = c.above if c.above is not None else c.below
        count = int(state.get("count", 0))
        active = bool(state.get("active", False))
        actions: list[Action] = []
        if active:
            if self._cleared(value):
                state["active"] = False
                state["count"] = 0
                if c.clear_action:
                    actions.append(self._action(c.clear_action, value, threshold, observation))
            return actions
        count = count + 1 if self._breached(value) else 0
        state["count"] = count
        last = float(state.get("last_fired", 0.0))
        if count >= c.for_ticks and observation.wall - last >= c.cooldown:
            state["active"] = True
            state["last_fired"] = observation.wall
            actions.append(self._action(c.action, value, threshold, observation))
        return actions

    def _action(self, name: str, value: float, threshold: float | None, obs: Observation) -> Action:
        c = self.config
        params = {**c.params, "metric": c.metric, "value": value, "threshold": threshold}
        return Action(
            actuator=c.actuator,
            name=name,
            params=params,
            priority=c.priority,
            key=firing_key(self.ident, name, obs),
        )


SPEC = PluginSpec(
    name="threshold",
    kind="policy",
    factory=ThresholdPolicy,
    config_type=ThresholdConfig,
    description="fire an action when a metric stays above/below a bound for N ticks",
)
