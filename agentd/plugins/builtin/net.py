"""`net` sensor: per-interface byte/packet/error counters (psutil) and their rates per second
since the previous reading. Counter wraps or resets (a re-plugged USB modem) give no rate for
that reading instead of a huge negative one.

Both reads run on the event loop: the counters come from /proc/net/dev and the link state from
/sys/class/net/<if>/operstate, which the kernel answers from memory. (psutil's
``net_if_stats`` would also ask the driver for speed and duplex over ethtool, which on a USB
NIC is a round trip to the device, and it cost a worker-thread hop every tick: issue #18.)
The files stay open and are re-read from offset 0 (the kernel regenerates them on each read),
parsed here: a third of psutil's ``net_io_counters`` per tick, which opens the file, decodes
it and builds a named tuple per interface."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

from agentd.model import Value
from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin._kept import KeptFile

__all__ = ["SPEC", "Counters", "KeptFile", "NetConfig", "NetSensor", "link_up", "parse_net_dev"]

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


class Counters(NamedTuple):
    """One interface's counters, as psutil's ``snetio`` names them."""

    bytes_sent: int
    bytes_recv: int
    packets_sent: int
    packets_recv: int
    errin: int
    errout: int
    dropin: int
    dropout: int


def parse_net_dev(text: bytes) -> dict[str, Counters]:
    """/proc/net/dev: two header lines, then ``name: 8 receive and 8 transmit counters``."""
    out: dict[str, Counters] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(b":")
        if not sep:
            continue
        f = rest.split()
        if len(f) < 16:
            continue
        out[name.strip().decode()] = Counters(
            bytes_sent=int(f[8]),
            bytes_recv=int(f[0]),
            packets_sent=int(f[9]),
            packets_recv=int(f[1]),
            errin=int(f[2]),
            errout=int(f[10]),
            dropin=int(f[3]),
            dropout=int(f[11]),
        )
    return out


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


class NetSensor:
    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self._last: dict[str, tuple[float, Any]] = {}
        self._dev = KeptFile("/proc/net/dev")
        self._operstate: dict[str, KeptFile] = {}

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

    def _read(self) -> tuple[dict[str, Counters], dict[str, bool]]:
        counters = parse_net_dev(self._dev.read())
        return counters, (link_up(counters, self._operstate) if self.config.link else {})

    def stop(self) -> None:
        self._dev.close()
        for f in self._operstate.values():
            f.close()
        self._operstate.clear()


def link_up(names: Iterable[str], kept: dict[str, KeptFile] | None = None) -> dict[str, bool]:
    """Whether each interface is up and running, as psutil's ``isup`` (IFF_RUNNING: the kernel
    sets it when the operational state is "up" or "unknown", e.g. loopback); an interface that
    went away meanwhile is left out. ``kept``: the open operstate files, by interface."""
    files = {} if kept is None else kept
    wanted = list(names)
    out: dict[str, bool] = {}
    for name in wanted:
        f = files.get(name)
        if f is None:
            f = files[name] = KeptFile(f"/sys/class/net/{name}/operstate")
        try:
            state = f.read().strip()
        except OSError:
            del files[name]
            continue
        out[name] = state in (b"up", b"unknown")
    for gone in set(files) - set(wanted):
        files.pop(gone).close()
    if kept is None:
        for f in files.values():
            f.close()
    return out


SPEC = PluginSpec(
    name="net",
    kind="sensor",
    factory=NetSensor,
    config_type=NetConfig,
    description="network interface counters, link state and rates per second (psutil)",
)
