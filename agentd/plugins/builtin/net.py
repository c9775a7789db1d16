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
from typing import NamedTuple

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


#: the first four counters, which also get a rate
_RATED = 4
#: interfaces whose metric names and last counters are kept (a host with churning veths
#: makes new ones)
_KEYS_MAX = 1024


class NetSensor:
    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self._last: dict[str, tuple[float, Counters]] = {}
        self._dev = KeptFile("/proc/net/dev")
        self._operstate: dict[str, KeptFile] = {}
        #: interface -> its metric names (up, counters, rates), made once: a tick builds no
        #: strings (issue #18)
        self._keys: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}

    def _names(self, name: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        keys = self._keys.get(name)
        if keys is None:
            if len(self._keys) >= _KEYS_MAX:
                self._keys.clear()
            label = _label(name)
            keys = self._keys[name] = (
                f"{label}.up",
                tuple(f"{label}.{f}" for f in _FIELDS),
                tuple(f"{label}.{f}_per_s" for f in _FIELDS[:_RATED]),
            )
        return keys

    async def perceive(self) -> dict[str, Value]:
        counters = parse_net_dev(self._dev.read())
        now = time.monotonic()
        c = self.config
        names = c.interfaces or sorted(n for n in counters if n != "lo")
        if c.require and c.interfaces:
            for name in names:
                if name not in counters:
                    raise OSError(f"no network interface named {name!r}")
        present = [n for n in names if n in counters]
        stats = link_up(present, self._operstate) if c.link else {}
        out: dict[str, Value] = {}
        last = self._last
        for name in present:
            cur = counters[name]
            up, counts, rates = self._names(name)
            if c.link and name in stats:
                out[up] = stats[name]
            if c.counters:
                out.update(zip(counts, cur, strict=True))
            prev = last.get(name)
            last[name] = (now, cur)
            if c.rates and prev is not None and now > prev[0]:
                dt = now - prev[0]
                was = prev[1]
                for i in range(_RATED):
                    delta = cur[i] - was[i]
                    if delta >= 0:
                        out[rates[i]] = delta / dt
        if len(last) > _KEYS_MAX:  # interfaces that went away
            for gone in [n for n in last if n not in counters]:
                del last[gone]
        return out

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
