"""`net` sensor: per-interface byte/packet/error counters (psutil) and their rates per second
since the previous reading. Counter wraps or resets (a re-plugged USB modem) give no rate for
that reading instead of a huge negative one."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec
import psutil

from agentd.model import Value
from agentd.plugins.base import PluginSpec

__all__ = ["SPEC", "NetConfig", "NetSensor"]

_FIELDS = (
    "bytes_sent",
    "bytes_recv",
    "packets_sent",
    "packets_recv",
    "errin",
    "errout",
    "dropin",
    "dropout",
)


class NetConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: interface names; empty: every interface except loopback
    interfaces: list[str] = []
    #: report ``<if>.up`` (link state) too
    link: bool = True
    counters: bool = True
    rates: bool = True
    #: an interface in ``interfaces`` that does not exist: error (true) or left out (false)
    require: bool = True

    def produces(self) -> dict[str, str] | None:
        """Metric -> unit (agentd/config_refs.py) for the listed interfaces (None: every
        interface the host has, known only when it reads)."""
        if not self.interfaces:
            return None
        out: dict[str, str] = {}
        for name in self.interfaces:
            label = _label(name)
            if self.link:
                out[f"{label}.up"] = ""
            if self.counters:
                out |= {f"{label}.{f}": "" for f in _FIELDS}
            if self.rates:
                out |= {
                    f"{label}.{f}_per_s": "bytes/s" if f.startswith("bytes") else "packets/s"
                    for f in ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv")
                }
        return out


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


class NetSensor:
    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self._last: dict[str, tuple[float, Any]] = {}

    async def perceive(self) -> dict[str, Value]:
        counters, stats = await asyncio.to_thread(self._read)
        now = time.monotonic()
        c = self.config
        names = c.interfaces or sorted(n for n in counters if n != "lo")
        out: dict[str, Value] = {}
        for name in names:
            cur = counters.get(name)
            if cur is None:
                if c.require and c.interfaces:
                    raise OSError(f"no network interface named {name!r}")
                continue
            label = _label(name)
            if c.link and name in stats:
                out[f"{label}.up"] = bool(stats[name].isup)
            if c.counters:
                for f in _FIELDS:
                    out[f"{label}.{f}"] = int(getattr(cur, f))
            prev = self._last.get(name)
            self._last[name] = (now, cur)
            if c.rates and prev is not None and now > prev[0]:
                dt = now - prev[0]
                for f in ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv"):
                    delta = getattr(cur, f) - getattr(prev[1], f)
                    if delta >= 0:
                        out[f"{label}.{f}_per_s"] = delta / dt
        return out

    @staticmethod
    def _read() -> tuple[dict[str, Any], dict[str, Any]]:
        return psutil.net_io_counters(pernic=True), psutil.net_if_stats()


SPEC = PluginSpec(
    name="net",
    kind="sensor",
    factory=NetSensor,
    config_type=NetConfig,
    description="network interface counters, link state and rates per second (psutil)",
)
