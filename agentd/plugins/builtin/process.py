"""`process` sensor: is a named process alive, how many are there, their CPU % and RSS.
A process matches by its name (``comm``), the basename of its executable, or, with
``cmdline``, a regex over its command line. psutil runs in a worker thread."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Annotated

import msgspec
import psutil
from msgspec import Meta

from agentd.model import Value
from agentd.plugins.base import PluginSpec

__all__ = ["SPEC", "ProcessConfig", "ProcessSensor"]


class Match(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    name: str | None = None
    cmdline: str | None = None
    #: a pidfile: the process whose pid it holds
    pidfile: str | None = None


class ProcessConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: label -> what to look for; a plain string is a process name
    processes: Annotated[dict[str, str | Match], Meta(min_length=1)]
    cpu: bool = True
    memory: bool = True

    def __post_init__(self) -> None:
        for label, m in self.processes.items():
            if isinstance(m, Match):
                if not (m.name or m.cmdline or m.pidfile):
                    raise ValueError(f"`processes.{label}`: set `name`, `cmdline` or `pidfile`")
                if m.cmdline:
                    try:
                        re.compile(m.cmdline)
                    except re.error as exc:
                        raise ValueError(f"`processes.{label}.cmdline`: bad regex: {exc}") from None

    def produces(self) -> dict[str, str]:
        """Metric -> unit (agentd/config_refs.py)."""
        out: dict[str, str] = {}
        for label in self.processes:
            out |= {f"{label}.alive": "", f"{label}.count": ""}
            if self.cpu:
                out[f"{label}.cpu_percent"] = "%"
            if self.memory:
                out[f"{label}.rss"] = "bytes"
        return out


class ProcessSensor:
    def __init__(self, config: ProcessConfig) -> None:
        self.config = config
        self.matches = {
            label: m if isinstance(m, Match) else Match(name=m)
            for label, m in config.processes.items()
        }
        self.regex = {
            label: re.compile(m.cmdline) for label, m in self.matches.items() if m.cmdline
        }
        #: psutil.Process objects kept between readings: cpu_percent() needs the previous call
        self._procs: dict[int, psutil.Process] = {}

    async def perceive(self) -> dict[str, Value]:
        return await asyncio.to_thread(self.read)

    def _pid_from(self, pidfile: str) -> int | None:
        try:
            with open(pidfile) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def read(self) -> dict[str, Value]:
        found: dict[str, list[psutil.Process]] = {label: [] for label in self.matches}
        pidfiles = {
            label: self._pid_from(m.pidfile) for label, m in self.matches.items() if m.pidfile
        }
        seen: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["name", "exe", "cmdline"]):
            pid = proc.pid
            info = getattr(proc, "info", {})
            primed = self._procs.get(pid, proc)  # cpu_percent() counts from the last call
            for label, m in self.matches.items():
                if self._matches(label, m, pid, info, pidfiles):
                    found[label].append(primed)
                    seen[pid] = primed
        self._procs = seen
        out: dict[str, Value] = {}
        for label, procs in found.items():
            out[f"{label}.alive"] = bool(procs)
            out[f"{label}.count"] = len(procs)
            cpu = rss = 0.0
            for p in procs:
                try:
                    if self.config.cpu:
                        cpu += p.cpu_percent(interval=None)
                    if self.config.memory:
                        rss += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            if self.config.cpu:
                out[f"{label}.cpu_percent"] = cpu
            if self.config.memory:
                out[f"{label}.rss"] = int(rss)
        return out

    def _matches(
        self,
        label: str,
        m: Match,
        pid: int,
        info: dict[str, object],
        pidfiles: dict[str, int | None],
    ) -> bool:
        if m.pidfile and pidfiles.get(label) != pid:
            return False
        if m.name:
            exe = info.get("exe")
            names = {info.get("name"), os.path.basename(exe) if isinstance(exe, str) else None}
            if m.name not in names:
                return False
        if m.cmdline:
            cmd = info.get("cmdline")
            line = " ".join(cmd) if isinstance(cmd, list) else ""
            if not self.regex[label].search(line):
                return False
        return True


SPEC = PluginSpec(
    name="process",
    kind="sensor",
    factory=ProcessSensor,
    config_type=ProcessConfig,
    description="whether named processes are alive, their count, CPU % and RSS (psutil)",
)
