"""The daemon's lifecycle vocabulary: its states and options, the named shutdown stages with
their timeouts (their sum must stay below the unit's ``TimeoutStopSec``; a test checks it),
`run_stage` (one stage, cut short by a second signal), the loop's settings from a config, and
`abandon_stuck_threads` (the last word on plugin threads at exit).
`agentd.daemon` re-exports these."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from agentd.config import Config
from agentd.loop import LoopSettings

if TYPE_CHECKING:
    from agentd.plugins.executor import PluginExecutor

__all__ = [
    "DUPLICATE_SIGNAL_WINDOW",
    "FINISH_TICK_TIMEOUT",
    "FLUSH_STORE_TIMEOUT",
    "FLUSH_UPLINK_TIMEOUT",
    "FORCED_STAGE_TIMEOUT",
    "MAX_DRAIN_TIMEOUT",
    "SHUTDOWN_STAGES",
    "STOP_CONTROL_TIMEOUT",
    "STOP_PLUGINS_TIMEOUT",
    "STOP_TELEMETRY_TIMEOUT",
    "DaemonOptions",
    "DaemonState",
    "abandon_stuck_threads",
    "loop_settings",
    "run_stage",
]

log = logging.getLogger("agentd")

# Named shutdown stage timeouts (seconds). Their sum plus the drain timeout's maximum
# (agent.drain_timeout <= 60) must stay below TimeoutStopSec in packaging/systemd.
STOP_CONTROL_TIMEOUT: Final = 2.0
FINISH_TICK_TIMEOUT: Final = 10.0
STOP_PLUGINS_TIMEOUT: Final = 5.0
#: the uplinks publish offline and send what they can (their budget is 90% of it)
FLUSH_UPLINK_TIMEOUT: Final = 10.0
FLUSH_STORE_TIMEOUT: Final = 10.0
#: flushing spans and metrics; an OTLP collector that is down must not hold shutdown longer
STOP_TELEMETRY_TIMEOUT: Final = 5.0
MAX_DRAIN_TIMEOUT: Final = 60.0
#: a second SIGTERM/SIGINT this soon after the first is the same request delivered twice
DUPLICATE_SIGNAL_WINDOW: Final = 0.2
#: after a second signal, each remaining stage gets at most this long
FORCED_STAGE_TIMEOUT: Final = 0.5
SHUTDOWN_STAGES: Final = {
    "stop_control": STOP_CONTROL_TIMEOUT,
    "finish_tick": FINISH_TICK_TIMEOUT,
    "drain_actions": MAX_DRAIN_TIMEOUT,
    "flush_uplink": FLUSH_UPLINK_TIMEOUT,
    "stop_plugins": STOP_PLUGINS_TIMEOUT,
    "flush_store": FLUSH_STORE_TIMEOUT,
    "stop_telemetry": STOP_TELEMETRY_TIMEOUT,
}


class DaemonState(enum.Enum):
    NOT_RUNNING = "not_running"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    config_path: str | None = None
    state_dir: str | None = None
    runtime_dir: str | None = None


async def run_stage(
    name: str, timeout: float, aw: Awaitable[Any], force_event: asyncio.Event, *, forced: bool
) -> None:
    """One shutdown stage, cancelled after ``timeout`` or, at once, by a second signal
    (uvicorn's ``_wait_tasks_to_complete`` watching ``force_exit``)."""
    task = aw if isinstance(aw, asyncio.Future) else asyncio.ensure_future(aw)
    waits: set[asyncio.Future[Any]] = {task}
    force: asyncio.Future[Any] | None = None
    if forced:  # forced before this stage began: it gets its short turn
        timeout = min(timeout, FORCED_STAGE_TIMEOUT)
    else:
        force = asyncio.ensure_future(force_event.wait())
        waits.add(force)
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if force is not None:
            force.cancel()
    if not task.done():
        if force is not None and force_event.is_set():
            log.warning("%s: cut short by a second signal; cancelling", name)
        else:
            log.warning("%s: still running after %gs; cancelling", name, timeout)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    elif not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %s", name, task.exception())


def loop_settings(config: Config) -> LoopSettings:
    """The loop's settings from ``[agent]``."""
    a = config.agent
    return LoopSettings(
        interval=a.interval,
        align=a.align,
        offset=a.offset,
        stage_timeout=a.stage_timeout,
        plugin_timeout=a.plugin_timeout,
        max_actions_per_tick=a.max_actions_per_tick,
        max_concurrent_actions=a.max_concurrent_actions,
    )


def abandon_stuck_threads(executor: PluginExecutor) -> None:
    """Name the plugin calls still running in threads: they are daemon threads, so the
    process exits without them (a thread blocked in the kernel cannot be stopped)."""
    running = executor.running()
    if running:
        now = time.monotonic()
        log.warning(
            "abandoning %d plugin calls stuck in threads: %s",
            len(running),
            ", ".join(c.describe(now) for c in running),
        )
    executor.shutdown(wait=False)
