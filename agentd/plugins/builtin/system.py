"""`system` sensor: CPU %, load average, memory, disk usage of configured mounts and, where the
board has them, temperatures (psutil). psutil calls run in a worker thread: they read /proc and
/sys and can stall on a busy or broken board."""

from __future__ import annotations

import asyncio
import os
import re

import msgspec
import psutil

from agentd.model import Value
from agentd.plugins.base import PluginSpec

__all__ = ["SPEC", "SystemConfig", "SystemSensor"]


class SystemConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cpu: bool = True
    load: bool = True
    memory: bool = True
    #: name -> mount point; reported as ``disk.<name>.percent`` / ``.free``
    mounts: dict[str, str] = msgspec.field(default_factory=lambda: {"root": "/"})
    temperatures: bool = True

    def produces(self) -> dict[str, str]:
        """Metric -> unit (agentd/config_refs.py); temperatures depend on the board."""
        out: dict[str, str] = {}
        if self.cpu:
            out["cpu.percent"] = "%"
        if self.load:
            out |= {"load.1m": "", "load.5m": "", "load.15m": ""}
        if self.memory:
            out |= {"memory.percent": "%", "memory.available": "bytes"}
        for name in self.mounts:
            out |= {f"disk.{name}.percent": "%", f"disk.{name}.free": "bytes"}
        if self.temperatures:
            out["temp.*"] = "°C"
        return out


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower() or "x"


class SystemSensor:
    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        if config.cpu:
            psutil.cpu_percent(interval=None)  # primes the counter; the first call returns 0.0

    async def perceive(self) -> dict[str, Value]:
        return await asyncio.to_thread(self.read)

    def read(self) -> dict[str, Value]:
        c = self.config
        out: dict[str, Value] = {}
        if c.cpu:
            out["cpu.percent"] = psutil.cpu_percent(interval=None)
        if c.load:
            one, five, fifteen = os.getloadavg()
            out["load.1m"], out["load.5m"], out["load.15m"] = one, five, fifteen
        if c.memory:
            vm = psutil.virtual_memory()
            out["memory.percent"] = vm.percent
            out["memory.available"] = vm.available
        for name, mount in c.mounts.items():
            du = psutil.disk_usage(mount)
            out[f"disk.{name}.percent"] = du.percent
            out[f"disk.{name}.free"] = du.free
        if c.temperatures and hasattr(psutil, "sensors_temperatures"):
            for chip, entries in psutil.sensors_temperatures().items():
                for i, entry in enumerate(entries):
                    label = _label(entry.label) if entry.label else str(i)
                    out[f"temp.{_label(chip)}.{label}"] = entry.current
        return out


SPEC = PluginSpec(
    name="system",
    kind="sensor",
    factory=SystemSensor,
    config_type=SystemConfig,
    description="CPU, load, memory, disk usage and temperatures of this machine (psutil)",
)
