"""How the loop's cost grows with work: overhead per plugin call with 1, 10 and 100 instances of
a trivial sensor at a 100 ms interval.

Measured: the daemon's own perceive-stage timing (``TickStats.mean.perceive``, the real
`PerceptionLoop` with real `PluginHandle`s, as the daemon builds them) minus the same sensors'
own work timed alone in the same process (calling ``perceive()`` N times back to back), divided
by N. Also the tick lateness p99 at 100 instances. Target: <= 20 us per plugin call, flat from 1
to 100 instances; lateness p99 at 100 instances <= 2 ms.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import uvloop

from agentd.config import SensorCommon, SensorInstance
from agentd.loop import LoopSettings, PerceptionLoop
from agentd.plugins.base import PluginSpec
from agentd.plugins.handle import PluginHandle
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


def _handles(n: int) -> dict[str, PluginHandle]:
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
        out[name] = PluginHandle("sensor", inst, spec, obj)
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
    loop = PerceptionLoop(LoopSettings(interval=INTERVAL), _handles(n), {}, {})
    done = asyncio.Event()

    def sink(report: object) -> None:
        if loop.ticks >= ticks:
            loop.stop()
            done.set()

    loop.sinks.append(sink)
    await loop.run()
    stats = loop.stats()
    return stats.mean.perceive, stats.lateness_p99


async def _measure(ticks: int) -> list[Figure]:
    figures = []
    per_call = {}
    lateness_100 = 0.0
    for n in (1, 10, 100):
        stage, p99 = await _loop_run(n, ticks)
        own = await _own_work(n, 200)
        per_call[n] = max(0.0, (stage - own) / n)
        if n == 100:
            lateness_100 = p99
        figures.append(
            Figure(
                f"loop overhead per plugin call, {n} sensors",
                per_call[n] * 1e6,
                own / n * 1e6,
                "us",
                "<= 20 us",
                per_call[n] * 1e6 <= 20,
                None,
                note="" if n > 1 else "baseline column: the sensor's own work per call",
            )
        )
    flat = per_call[100] / per_call[1] if per_call[1] else None
    figures.append(
        Figure(
            "overhead 100 vs 1 sensors (flatness)",
            per_call[100] * 1e6,
            per_call[1] * 1e6,
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
    return uvloop.run(_measure(30 if quick else 100))


def main() -> None:
    print_table(run())


if __name__ == "__main__":
    main()
