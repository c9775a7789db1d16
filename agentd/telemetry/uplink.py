"""The uplinks' metrics (`agentd.uplinking.Uplinks.states`), read at collection time like the
loop's and the store's counters: nothing is recorded per row or per batch. Counters count from
the engine's start (a reload that restarts an uplink starts them again)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from agentd.model import UplinkStatus, UplinkStreamStatus
from agentd.telemetry.produced import Points

__all__ = ["Source", "uplink_sources"]

#: (kind, unit, description, read) as `agentd.telemetry.metrics.Produced.sources` holds them
Source = tuple[str, str, str, Callable[[], Points]]
#: one read of the states serves every uplink metric of one collection
_FRESH: Final = 0.5

_PER_STREAM: Final[dict[str, tuple[str, str, str, Callable[[UplinkStreamStatus], float]]]] = {
    "agentd.uplink.delivered": ("counter", "{row}", "Rows acknowledged", lambda s: s.delivered),
    "agentd.uplink.duplicates": (
        "counter",
        "{row}",
        "Rows sent again after a lost link or a refused batch",
        lambda s: s.duplicates,
    ),
    "agentd.uplink.gap.rows": (
        "counter",
        "{row}",
        "Rows reported lost in gap records (removed by retention before they were sent)",
        lambda s: s.gap_rows,
    ),
    "agentd.uplink.refused": (
        "counter",
        "{batch}",
        "Batches the broker refused (a PUBACK with a failure reason code)",
        lambda s: s.refused,
    ),
    "agentd.uplink.in_flight": (
        "updowncounter",
        "{batch}",
        "Batches sent and not yet acknowledged",
        lambda s: s.in_flight,
    ),
    "agentd.uplink.backlog.rows": (
        "updowncounter",
        "{row}",
        "Rows committed and not yet acknowledged",
        lambda s: s.backlog,
    ),
    "agentd.uplink.backlog.size": (
        "updowncounter",
        "By",
        "Bytes of the rows committed and not yet acknowledged",
        lambda s: s.backlog_bytes,
    ),
    "agentd.uplink.backlog.age": (
        "updowncounter",
        "s",
        "Age of the oldest row not yet acknowledged (0: none)",
        lambda s: s.oldest_age or 0.0,
    ),
    "agentd.uplink.acked": (
        "updowncounter",
        "{row}",
        "The durable cursor: the highest id acknowledged without a hole",
        lambda s: s.acked,
    ),
}


def uplink_sources(states: Callable[[], Iterable[UplinkStatus]]) -> dict[str, Source]:
    cache: list[tuple[float, list[UplinkStatus]]] = [(-1e9, [])]

    def read() -> list[UplinkStatus]:
        now = time.monotonic()
        at, value = cache[0]
        if now - at > _FRESH:
            value = list(states())
            cache[0] = (now, value)
        return value

    def per_stream(pick: Callable[[UplinkStreamStatus], float]) -> Callable[[], Points]:
        return lambda: [
            (pick(s), {"agentd.uplink": u.name, "agentd.journal": s.stream})
            for u in read()
            for s in u.streams
        ]

    out: dict[str, Source] = {
        name: (kind, unit, desc, per_stream(pick))
        for name, (kind, unit, desc, pick) in _PER_STREAM.items()
    }
    out["agentd.uplink.connected"] = (
        "updowncounter",
        "1",
        "1 while the uplink is connected to its broker, else 0",
        lambda: [(float(u.connected), {"agentd.uplink": u.name}) for u in read()],
    )
    out["agentd.uplink.reconnects"] = (
        "counter",
        "{connection}",
        "Connections made again after a lost or refused one",
        lambda: [(u.reconnects, {"agentd.uplink": u.name}) for u in read()],
    )
    out["agentd.uplink.degraded"] = (
        "updowncounter",
        "1",
        "1 while the uplink is degraded (refused, or its backlog too old), else 0",
        lambda: [(float(u.health == "degraded"), {"agentd.uplink": u.name}) for u in read()],
    )
    return out
