"""Bounded statistics: a log-bucket histogram for lateness and durations (constant memory, so a
daemon that runs for months does not grow), and running means."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import final

from agentd.model import TickStats

__all__ = ["Histogram", "heartbeat"]

_FACTOR = 1.05
_MIN = 1e-6  # 1 us; anything below counts in bucket 0
_BUCKETS = int(math.log(1e3 / _MIN) / math.log(_FACTOR)) + 2  # up to 1000 s
_LOG_FACTOR = math.log(_FACTOR)


@final
class Histogram:
    """Counts in geometric buckets 5 % wide: percentiles are accurate to within 5 %."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        value = max(value, 0.0)
        idx = (
            0 if value <= _MIN else min(_BUCKETS - 1, int(math.log(value / _MIN) / _LOG_FACTOR) + 1)
        )
        self.counts[idx] += 1
        self.count += 1
        self.total += value
        self.max = max(self.max, value)

    def percentile(self, q: float) -> float:
        """The value below which a fraction ``q`` of samples fall (bucket upper bound, <= max)."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for idx, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                upper = 0.0 if idx == 0 else _MIN * _FACTOR**idx
                return min(upper, self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def reset(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0


async def heartbeat(
    stats: Callable[[], TickStats], plugins: Callable[[], str], every: Callable[[], float]
) -> None:
    """An INFO summary line every ``every()`` seconds (``log.heartbeat``), forever."""
    log = logging.getLogger("agentd")
    while True:
        await asyncio.sleep(every())
        s = stats()
        log.info(
            "heartbeat: %d ticks, lateness p50 %.2f ms p99 %.2f ms, %d overruns, "
            "%d skipped, plugins %s",
            s.ticks,
            s.lateness_p50 * 1e3,
            s.lateness_p99 * 1e3,
            s.overruns,
            s.skipped,
            plugins(),
        )
