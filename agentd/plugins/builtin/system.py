"""`system` sensor: CPU %, load average, memory, disk usage of configured mounts and, where the
board has them, temperatures (psutil).

CPU, load and memory come from /proc files the kernel answers from memory, and ``statvfs`` of a
local file system from its superblock: tens of microseconds, no device or network to wait
for, so they run on the event loop. Temperatures (hwmon drivers may talk I2C to a chip) or a
mount that is not a known local file system (NFS, CIFS, FUSE: a dead server hangs
``statvfs``) send the whole read to a worker thread instead, under the call's timeout. The
hop costs three thread wake-ups a tick, the most of an idle agentd's (issue #18).

/proc/stat and /proc/meminfo stay open and are parsed here (`CpuBusy`, `memory_available`),
with psutil's definitions: a quarter of ``cpu_percent`` + ``virtual_memory`` per tick."""

from __future__ import annotations

import asyncio
import os
import re

import msgspec
import psutil

from agentd.model import Value
from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin._kept import KeptFile

__all__ = ["SPEC", "CpuBusy", "SystemConfig", "SystemSensor", "memory_available"]


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


#: file systems whose ``statvfs`` is answered from memory (no server, no FUSE daemon)
LOCAL_FILESYSTEMS = frozenset(
    {
        "btrfs",
        "exfat",
        "ext2",
        "ext3",
        "ext4",
        "f2fs",
        "overlay",
        "ramfs",
        "squashfs",
        "tmpfs",
        "vfat",
        "xfs",
        "zfs",
    }
)


def on_local_filesystem(path: str) -> bool:
    """Whether ``path`` lies on a file system of `LOCAL_FILESYSTEMS` (the longest mount point
    that contains it, from /proc/self/mounts); False when unknown."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        parts = psutil.disk_partitions(all=True)
    except OSError:
        return False
    for p in parts:
        mp = p.mountpoint
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best):
            best, fstype = mp, p.fstype
    return fstype in LOCAL_FILESYSTEMS


class CpuBusy:
    """``cpu.percent`` as psutil's ``cpu_percent(interval=None)``: the busy share of all CPU
    time since the previous call (busy = total - idle - iowait; guest time, already counted
    in user and nice, is left out of the total), from the first line of /proc/stat."""

    def __init__(self, stat: KeptFile | None = None) -> None:
        self._stat = stat or KeptFile("/proc/stat")
        self._last = self._times()

    def _times(self) -> list[int]:
        return [int(x) for x in self._stat.read().split(b"\n", 1)[0].split()[1:]]

    def percent(self) -> float:
        now = self._times()
        delta = [max(0, a - b) for a, b in zip(now, self._last, strict=False)]
        self._last = now
        total = sum(delta) - sum(delta[8:10])
        busy = total - sum(delta[3:5])
        if total <= 0:
            return 0.0
        return round(min(100.0, max(0.0, busy / total * 100)), 1)

    def close(self) -> None:
        self._stat.close()


def memory_available(meminfo: bytes) -> tuple[int, int] | None:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo; None without MemAvailable
    (kernels before 3.14: psutil estimates it then). Two searches, not a split of its 50-odd
    lines: read every tick (issue #18)."""
    total = _meminfo_field(meminfo, b"MemTotal:")
    avail = _meminfo_field(meminfo, b"MemAvailable:")
    if total is None or avail is None:
        return None
    return total, avail


def _meminfo_field(meminfo: bytes, name: bytes) -> int | None:
    """``name``'s value in bytes (the file says kB), from the line that starts with it."""
    if meminfo.startswith(name):
        at = 0
    else:
        at = meminfo.find(b"\n" + name)
        if at < 0:
            return None
        at += 1
    end = meminfo.find(b"\n", at)
    fields = meminfo[at + len(name) : end if end >= 0 else len(meminfo)].split()
    try:
        return int(fields[0]) * 1024
    except (IndexError, ValueError):
        return None


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower() or "x"


class SystemSensor:
    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        # primed: like psutil's, the first reading covers the time since the sensor was made
        self._cpu = CpuBusy() if config.cpu else None
        self._meminfo = KeptFile("/proc/meminfo")
        #: read on the loop (see the module's docstring), else in a worker thread
        self.inline = not config.temperatures and all(
            on_local_filesystem(m) for m in config.mounts.values()
        )

    async def perceive(self) -> dict[str, Value]:
        if self.inline:
            return self.read()
        return await asyncio.to_thread(self.read)

    def read(self) -> dict[str, Value]:
        c = self.config
        out: dict[str, Value] = {}
        if self._cpu is not None:
            out["cpu.percent"] = self._cpu.percent()
        if c.load:
            one, five, fifteen = os.getloadavg()
            out["load.1m"], out["load.5m"], out["load.15m"] = one, five, fifteen
        if c.memory:
            mem = memory_available(self._meminfo.read())
            if mem is None:
                vm = psutil.virtual_memory()
                mem = (vm.total, vm.available)
            total, avail = mem
            out["memory.percent"] = round((total - avail) / total * 100, 1) if total else 0.0
            out["memory.available"] = avail
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

    def stop(self) -> None:
        if self._cpu is not None:
            self._cpu.close()
        self._meminfo.close()


SPEC = PluginSpec(
    name="system",
    kind="sensor",
    factory=SystemSensor,
    config_type=SystemConfig,
    description="CPU, load, memory, disk usage and temperatures of this machine (psutil)",
)
