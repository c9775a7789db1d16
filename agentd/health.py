"""Health: ok / degraded / failing, with every reason, from thresholds in ``[health]``.

`evaluate` is a pure function of the facts; `check` gathers them from the running rooms it is
handed (the loop, the plugins' statuses, telemetry's lateness window, the store). The
control commands ``health`` and ``metrics`` live here too (`control_commands`): the control
server's table is extended with them at startup (agentd/daemon.py). `agentctl health` exits
0 / 1 / 2 for ok / degraded / failing, so systemd, cron or a fleet tool can act on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, Protocol

from agentd.config import HealthConfig
from agentd.model import HealthReport, HealthStatus, MetricPoint, PluginStatus, TickStats

if TYPE_CHECKING:
    from agentd.control.server import Command, RequestContext
    from agentd.daemon import Daemon

__all__ = [
    "EXIT_CODES",
    "LatenessWindow",
    "LoopHealth",
    "StoreState",
    "check",
    "check_daemon",
    "control_commands",
    "evaluate",
]

#: `agentctl health` exit codes
EXIT_CODES: dict[HealthStatus, int] = {"ok": 0, "degraded": 1, "failing": 2}
_MIB = 1024 * 1024


def evaluate(
    config: HealthConfig,
    *,
    interval: float,
    paused: bool,
    overdue: float,
    lateness_p99: float | None,
    plugins: Iterable[PluginStatus],
    store_state: str | None = None,
    store_error: str | None = None,
    rss: int = 0,
    now: float | None = None,
) -> HealthReport:
    """``overdue``: seconds since the next tick was due without it having started (0 if the
    loop is on time)."""
    failing: list[str] = []
    degraded: list[str] = []
    if not paused and overdue > config.stalled_after * interval:
        failing.append(
            f"the loop is stalled: no tick started for {overdue:.1f}s "
            f"({overdue / interval:.0f} intervals)"
        )
    plugins = list(plugins)
    sensors = [p for p in plugins if p.kind == "sensor" and p.state not in ("disabled", "stopped")]
    bad_sensors = [p for p in sensors if p.state == "degraded"]
    if sensors and len(bad_sensors) == len(sensors):
        failing.append("every sensor is degraded")
    for p in plugins:
        if p.state == "degraded":
            degraded.append(f"{p.kind} {p.name!r} is degraded: {p.last_error or 'failing'}")
    if store_state == "degraded":
        degraded.append(f"the store is degraded: {store_error or 'writes fail'}")
    elif store_state == "closed":
        failing.append("the store is closed")
    if lateness_p99 is not None and lateness_p99 > config.lateness_p99:
        degraded.append(
            f"tick lateness p99 {lateness_p99 * 1e3:.1f} ms is above "
            f"{config.lateness_p99 * 1e3:g} ms (last {config.window:g}s)"
        )
    if rss > config.max_rss_mb * _MIB:
        degraded.append(f"RSS {rss / _MIB:.1f} MiB is above {config.max_rss_mb:g} MiB")
    status: HealthStatus = "failing" if failing else "degraded" if degraded else "ok"
    return HealthReport(
        status=status,
        reasons=failing + degraded,
        checked_at=time.time() if now is None else now,
    )


class LoopHealth(Protocol):
    """What health reads of the perception loop."""

    @property
    def interval(self) -> float: ...

    @property
    def paused(self) -> bool: ...

    @property
    def next_deadline(self) -> float | None: ...

    @property
    def ticks(self) -> int: ...

    def stats(self) -> TickStats: ...


class LatenessWindow(Protocol):
    """Telemetry's recent tick lateness."""

    def recent_lateness_p99(self, window: float) -> float | None: ...


class StoreState(Protocol):
    """What health reads of the store."""

    @property
    def state(self) -> Literal["closed", "ok", "degraded"]: ...

    @property
    def last_error(self) -> str | None: ...


def check(
    config: HealthConfig,
    loop: LoopHealth | None,
    plugins: Iterable[PluginStatus],
    *,
    telemetry: LatenessWindow | None = None,
    store: StoreState | None = None,
) -> HealthReport:
    """The health of the running rooms (cheap: no I/O but one psutil read of this process)."""
    import psutil

    if loop is None:
        return HealthReport(status="failing", reasons=["the loop is not running"])
    if telemetry is not None:
        p99 = telemetry.recent_lateness_p99(config.window)
    else:
        p99 = loop.stats().lateness_p99 if loop.ticks else None
    deadline = loop.next_deadline
    overdue = max(0.0, time.monotonic() - deadline) if deadline is not None else 0.0
    return evaluate(
        config,
        interval=loop.interval,
        paused=loop.paused,
        overdue=overdue,
        lateness_p99=p99,
        plugins=plugins,
        store_state=store.state if store is not None else None,
        store_error=store.last_error if store is not None else None,
        rss=psutil.Process().memory_info().rss,
    )


def check_daemon(daemon: Daemon) -> HealthReport:
    """`check` over a running daemon's rooms (the running plugins' statuses)."""
    return check(
        daemon.config.health,
        daemon.loop,
        [h.status() for h in daemon.supervisor.all()],
        telemetry=daemon.telemetry,
        store=daemon.store,
    )


def control_commands(daemon: Daemon) -> list[Command]:
    """``health`` and ``metrics`` for the control server's table (role ``read``)."""
    from agentd.control.server import Command, CommandError

    def health(ctx: RequestContext, args: None) -> HealthReport:
        return check_daemon(daemon)

    async def metrics(ctx: RequestContext, args: None) -> list[MetricPoint]:
        telemetry = daemon.telemetry
        if telemetry is None:
            raise CommandError("unavailable", "telemetry is off ([telemetry] enabled = false)")
        # the observable callbacks read /proc (psutil): off the loop
        points: list[MetricPoint] = await asyncio.to_thread(telemetry.collect)
        return points

    return [
        Command(
            "health",
            health,
            None,
            "read",
            "ok / degraded / failing with the reasons, from the [health] thresholds",
        ),
        Command(
            "metrics",
            metrics,
            None,
            "read",
            "agentd's own metrics (OpenTelemetry names) as they are now",
        ),
    ]
