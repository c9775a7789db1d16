"""`net` sensor: per-interface byte/packet/error counters (psutil) and their rates per second
since the previous reading. Counter wraps or resets (a re-plugged USB modem) give no rate for
that reading instead of a huge negative one.

Both reads run on the event loop: the counters come from /proc/net/dev and the link state from
/sys/class/net/<if>/operstate, which the kernel answers from memory. (psutil's
``net_if_stats`` would also ask the driver for speed and duplex over ethtool, which on a USB
NIC is a round trip to the device, and it cost a worker-thread hop every tick: issue #18.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
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


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


class NetSensor:
    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self._last: dict[str, tuple[float, Any]] = {}

    async def perceive(self) -> dict[str, Value]:
        counters, stats = self._read()
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
                out[f"{label}.up"] = stats[name]
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

    def _read(self) -> tuple[dict[str, Any], dict[str, bool]]:
        counters: dict[str, Any] = psutil.net_io_counters(pernic=True)
        return counters, (link_up(counters) if self.config.link else {})


def link_up(names: Iterable[str]) -> dict[str, bool]:
    """Whether each interface is up and running, as psutil's ``isup`` (IFF_RUNNING: the kernel
    sets it when the operational state is "up" or "unknown", e.g. loopback); an interface that
    went away meanwhile is left out."""
    out: dict[str, bool] = {}
    for name in names:
        try:
            with open(f"/sys/class/net/{name}/operstate", encoding="ascii") as fh:
                state = fh.read().strip()
        except OSError:
            continue
        out[name] = state in ("up", "unknown")
    return out


SPEC = PluginSpec(
    name="net",
    kind="sensor",
    factory=NetSensor,
    config_type=NetConfig,
    description="network interface counters, link state and rates per second (psutil)",
)
