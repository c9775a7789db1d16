"""`rate` policy: the change per second of a metric over a sliding window (oldest sample in the
window to the newest); fires an action when it goes above/below a bound, once, until it is back
(with hysteresis) — "the disk fills faster than 1 MB/s", "the counter stopped growing". With
``counter = true`` a drop is a counter reset: the window starts again. Samples live in the
policy state (bounded), so a restart with the store on keeps the window."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from msgspec import Meta

from agentd.model import Action, Observation
from agentd.plugins.base import PluginSpec, PolicyState
from agentd.plugins.builtin._firing import FiringConfig
from agentd.plugins.builtin._template import check_template, config_ident, firing_key, render

__all__ = ["SPEC", "RateConfig", "RatePolicy"]

#: samples kept per policy at most, whatever the window and the tick interval
MAX_SAMPLES = 4096


class RateConfig(FiringConfig, kw_only=True):
    """Params are templated like `rules` params, plus ``{rate}``."""

    #: params every action carries besides ``params`` (agentd/config_refs.py checks them)
    EXTRA_PARAMS: ClassVar[tuple[str, ...]] = ("metric", "rate")

    metric: str
    #: seconds of history the rate is computed over
    window: Annotated[float, Meta(gt=0, le=7 * 86400)] = 60.0
    #: fire when the rate (units per second) goes above / below this
    above: float | None = None
    below: float | None = None
    #: the window must span at least this fraction before a rate is trusted
    min_span: Annotated[float, Meta(ge=0, le=1)] = 0.5
    counter: bool = False

    def __post_init__(self) -> None:
        if (self.above is None) == (self.below is None):
            raise ValueError("set exactly one of `above` or `below`")
        if "." not in self.metric:
            raise ValueError("`metric` is written <sensor>.<metric>, e.g. net.eth0.bytes_recv")
        check_template(self.params)
        check_template(self.clear_params)


class RatePolicy:
    def __init__(self, config: RateConfig) -> None:
        self.config = config
        #: idempotency keys are unique per policy config and firing (ticks restart at 1)
        self.ident = config_ident(config)

    def rate(self, samples: list[list[float]]) -> float | None:
        if len(samples) < 2:
            return None
        (t0, v0), (t1, v1) = samples[0], samples[-1]
        if t1 - t0 < self.config.window * self.config.min_span or t1 <= t0:
            return None
        return (v1 - v0) / (t1 - t0)

    def decide(self, observation: Observation, state: PolicyState) -> list[Action]:
        c = self.config
        value = observation.get(c.metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return []
        now = observation.wall
        samples: list[list[float]] = [list(s) for s in state.get("samples", [])]
        if c.counter and samples and value < samples[-1][1]:
            samples = []  # a reset: the window starts again
        samples.append([now, float(value)])
        # keep one sample at or before the window's start, so the rate spans the whole window
        while len(samples) > 2 and samples[1][0] <= now - c.window:
            samples.pop(0)
        del samples[: max(0, len(samples) - MAX_SAMPLES)]
        state["samples"] = samples
        rate = self.rate(samples)
        if rate is None:
            return []
        state["rate"] = rate
        extra = {"rate": rate, "tick": observation.tick, "wall": now}
        if state.get("active", False):
            back = (
                rate <= c.above - c.hysteresis
                if c.above is not None
                else rate >= c.below + c.hysteresis  # type: ignore[operator]
            )
            if back:
                state["active"] = False
                if c.clear_action:
                    return [self._action(c.clear_action, c.clear_params, observation, extra)]
            return []
        breached = rate > c.above if c.above is not None else rate < c.below  # type: ignore[operator]
        last = float(state.get("last_fired", 0.0))
        if breached and now - last >= c.cooldown:
            state["active"] = True
            state["last_fired"] = now
            return [self._action(c.action, c.params, observation, extra)]
        return []

    def _action(
        self, name: str, params: dict[str, Any], obs: Observation, extra: dict[str, Any]
    ) -> Action:
        c = self.config
        base = {"metric": c.metric, "rate": extra["rate"]}
        return Action(
            actuator=c.actuator,
            name=name,
            params={**base, **render(params, obs, extra)},
            priority=c.priority,
            key=firing_key(self.ident, name, obs),
        )


SPEC = PluginSpec(
    name="rate",
    kind="policy",
    factory=RatePolicy,
    config_type=RateConfig,
    description="fire an action when a metric's change per second over a window passes a bound",
)
