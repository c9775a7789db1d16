"""Health: ok / degraded / failing, with every reason, from thresholds in ``[health]``.

`evaluate` is a pure function of the facts; `ControlApi.health` (agentd/control/api.py)
gathers them from the running daemon's parts for the control command ``health``. `agentctl
health` exits 0 / 5 / 6 for ok / degraded / failing (`EXIT_CODES`: apart from agentctl's 1
error, 2 usage, 3 not running, 4 forbidden), so systemd, cron or a fleet tool can act on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from agentd.config import HealthConfig
from agentd.model import HEALTH_EXIT_CODES as EXIT_CODES
from agentd.model import HealthReport, HealthStatus, PluginStatus, UplinkStatus

__all__ = ["EXIT_CODES", "evaluate"]

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
    uplinks: Iterable[UplinkStatus] = (),
    now: float | None = None,
    paused_for: float = 0.0,
) -> HealthReport:
    """``overdue``: seconds since the next tick was due without it having started (0 if the
    loop is on time); ``paused_for``: seconds the loop has been paused (0 when it is not)."""
    failing: list[str] = []
    degraded: list[str] = []
    if paused and paused_for > config.paused_after * interval:
        # a pause is deliberate, but one that is forgotten stops the agent as surely as a hang
        failing.append(
            f"the loop is paused: for {paused_for:.1f}s ({paused_for / interval:.0f} intervals, "
            f"more than {config.paused_after:g})"
        )
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
    for u in uplinks:
        # refused by the broker (credentials, ACL, TLS) or a backlog older than its
        # backlog_max_age: the engine's verdict, with its reason
        if u.health == "degraded":
            degraded.append(f"uplink {u.name!r} is degraded: {u.reason or u.last_error or '?'}")
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
