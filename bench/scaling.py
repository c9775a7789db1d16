"""How the loop's cost grows with work: overhead per plugin call with 1, 10 and 100 instances of
a trivial sensor at a 100 ms interval.

Measured: the daemon's own perceive-stage timing (``TickStats.mean.perceive``, the real
`PerceptionLoop` with real `PluginHandle`s, as the daemon builds them) minus the same sensors'
own work timed alone in the same process (calling ``perceive()`` N times back to back). The
per-call overhead is the slope of that between 1 and 10 and between 10 and 100 instances; what
stays at 1 instance is the fixed cost of a tick's perceive stage (reported on its own). Also
the tick lateness p99 at 100 instances. Target: <= 20 us per plugin call, flat from 1 to 100
instances; lateness p99 at 100 instances <= 2 ms.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import uvloop

from agentd.config import SensorCommon, SensorInstance
from agentd.loop import LoopSettings, PerceptionLoop
from agentd.plugins.base import PluginSpec
from agentd.plugins.handle import SensorRunner
from bench.common import Figure, print_table

INTERVAL = 0.1


class Trivial:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    async def perceive(self) -> dict[str, float]:
        self.n += 1
        return {"value": float(self.n)}


class _Empty(msgspec.Struct):
    pass


def _handles(n: int) -> dict[str, SensorRunner]:
    out = {}
    for i in range(n):
        name = f"s{i}"
        obj = Trivial()
        inst = SensorInstance(
            name=name, plugin="trivial", common=SensorCommon(), config=_Empty(), raw={}
        )
        spec = PluginSpec(
            name="trivial", kind="sensor", factory=lambda c, o=obj: o, config_type=_Empty
        )
        out[name] = SensorRunner(inst, spec, obj)
    return out


async def _own_work(n: int, rounds: int) -> float:
    """Seconds per tick for the sensors' own work: n perceive() calls, awaited directly."""
    sensors = [Trivial() for _ in range(n)]
    t0 = time.perf_counter()
    for _ in range(rounds):
        for s in sensors:
            await s.perceive()
    return (time.perf_counter() - t0) / rounds


async def _loop_run(n: int, ticks: int) -> tuple[float, float]:
    done = asyncio.Event()

    class Sink:
        def on_tick(self, report: object) -> None:
            if loop.ticks >= ticks:
                loop.stop()
                done.set()

        def on_late_result(self, result: object) -> None:
            pass

    loop = PerceptionLoop(LoopSettings(interval=INTERVAL), _handles(n), {}, {}, observers=[Sink()])
    await loop.run()
    stats = loop.stats()
    return stats.mean.perceive, stats.lateness_p99


async def _measure(ticks: int) -> list[Figure]:
    overhead = {}  # n -> the loop's own time per tick (stage time minus the sensors' work)
    own_per_call = {}
    lateness_100 = 0.0
    for n in (1, 10, 100):
        stage, p99 = await _loop_run(n, ticks)
        own = await _own_work(n, 200)
        overhead[n] = max(0.0, stage - own)
        own_per_call[n] = own / n
        if n == 100:
            lateness_100 = p99
    # the cost of one more plugin call, between 1 and 10 and between 10 and 100 sensors
    slope_low = (overhead[10] - overhead[1]) / 9
    slope_high = (overhead[100] - overhead[10]) / 90
    figures = [
        Figure(
            "loop's fixed cost per tick (1 sensor)",
            overhead[1] * 1e6,
            own_per_call[1] * 1e6,
            "us",
            "reported",
            None,
            note="one event-loop turn to run the sensor tasks; baseline column: the "
            "sensor's own work per call",
        ),
    ]
    for label, slope in (("1 -> 10", slope_low), ("10 -> 100", slope_high)):
        figures.append(
            Figure(
                f"overhead per plugin call, {label} sensors",
                slope * 1e6,
                own_per_call[100] * 1e6,
                "us",
                "<= 20 us",
                slope * 1e6 <= 20,
            )
        )
    flat = slope_high / slope_low if slope_low > 0 else None
    figures.append(
        Figure(
            "per-call overhead 10->100 vs 1->10 (flatness)",
            slope_high * 1e6,
            slope_low * 1e6,
            "us",
            "<= 2x (flat)",
            None if flat is None else flat <= 2.0,
            flat,
        )
    )
    figures.append(
        Figure(
            "tick lateness p99, 100 sensors at 100 ms",
            lateness_100 * 1e3,
            None,
            "ms",
            "<= 2 ms",
            lateness_100 * 1e3 <= 2.0,
        )
    )
    return figures


def run(quick: bool = False) -> list[Figure]:
    return uvloop.run(_measure(30 if quick else 60))


def main() -> None:
    print_table(run())


if __name__ == "__main__":
    main()
