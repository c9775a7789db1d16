"""A real `ControlServer` on a real Unix socket, in this process (uvicorn's
``tests/utils.py::run_server()`` is the model): the config's built-in plugins are built and
started, a real `PerceptionLoop` ticks, and a `ControlApi` views them, so protocol and handler
tests pay neither a daemon subprocess nor its start-up. What needs a process (signals, reload,
socket activation, the instance lock, peer roles of other users) stays in subprocess tests.

`run_server` is the async context manager; `ServedThread` runs it on its own event loop in a
thread so blocking clients (`Raw`, `Client`, agentctl's ``main``) can talk to it from a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentd import config as cfg
from agentd.control.api import ControlApi
from agentd.control.server import ControlServer
from agentd.daemon import loop_settings
from agentd.fanout import TickFanout
from agentd.loop import PerceptionLoop
from agentd.paths import socket_path
from agentd.plugins.registry import Registry, default_registry
from agentd.plugins.supervisor import PluginSupervisor
from tests.control.helpers import Raw

__all__ = ["CONFIG", "Served", "ServedThread", "run_server"]

CONFIG = """
[agent]
interval = 0.2
[sensors.system]
[policies.cpu]
plugin = "threshold"
metric = "system.cpu.percent"
above = -1.0
for_ticks = 1
cooldown = 3600
params = { message = "cpu is warm" }
[actuators.log]
"""


class _State(enum.Enum):
    RUNNING = "running"


@dataclass
class _Lifecycle:
    """The `Lifecycle` an in-process server has: no daemon behind it, so reload is refused
    (reload tests run a real agentd)."""

    config: cfg.Config
    state: enum.Enum = _State.RUNNING
    started_at: float = field(default_factory=time.time)
    reload_generation: int = 0
    _mono: float = field(default_factory=time.monotonic)

    def uptime(self) -> float:
        return time.monotonic() - self._mono

    async def reload(self, path: str | None = None) -> list[str]:
        return ["an in-process control server has no daemon to reload"]


@dataclass
class Served:
    socket: Path
    server: ControlServer
    api: ControlApi
    loop: PerceptionLoop

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        with Raw(self.socket) as raw:
            return raw.call(cmd, args)


@contextlib.asynccontextmanager
async def run_server(
    runtime_dir: Path, config_text: str = CONFIG, registry: Registry | None = None
) -> AsyncIterator[Served]:
    registry = registry or default_registry()
    config = cfg.loads(config_text, registry, source="<in-process>")
    plugins = PluginSupervisor(registry)
    await plugins.start_all(config)
    fanout = TickFanout()
    loop = PerceptionLoop(
        loop_settings(config),
        sensors=plugins.sensors(),
        policies=plugins.policies(),
        actuators=plugins.actuators(),
        observers=[fanout],
    )
    api = ControlApi(
        loop=loop,
        plugins=plugins,
        store=None,
        telemetry=None,
        registry=registry,
        lifecycle=_Lifecycle(config),
    )
    fanout.subscribe(api)
    runtime_dir.mkdir(parents=True, exist_ok=True)
    server = ControlServer(api, config.control, socket_path(runtime_dir, config.control.socket))
    ticking = asyncio.create_task(loop.run(), name="perception-loop")
    await server.start()
    try:
        yield Served(server.path, server, api, loop)
    finally:
        await server.stop(1.0)
        loop.stop()
        await asyncio.wait_for(ticking, 10)
        await loop.actions.drain(5.0)
        await plugins.stop_all(5.0)


class ServedThread:
    """`run_server` on a fresh uvloop in a thread: ``with ServedThread(dir) as served:``."""

    def __init__(self, runtime_dir: Path, config_text: str = CONFIG) -> None:
        self._args = (runtime_dir, config_text)
        self._ready = threading.Event()
        self._stop: Callable[[], None] | None = None
        self._served: Served | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="in-process-control")

    def _run(self) -> None:
        import uvloop

        try:
            uvloop.run(self._main())
        except BaseException as exc:  # handed to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._stop = lambda: loop.call_soon_threadsafe(stop.set)
        async with run_server(*self._args) as served:
            self._served = served
            self._ready.set()
            await stop.wait()

    def __enter__(self) -> Served:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        assert self._served is not None, "the in-process server did not start"
        return self._served

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop()
        self._thread.join(30)
        if self._error is not None:
            raise self._error
