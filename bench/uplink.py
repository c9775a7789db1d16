"""The uplink against a bare publisher, one local mosquitto, one run.

- drain: agentd's engine draining a 100k-row observation backlog from a real Store (read after
  the cursor, batch, send, PUBACK, cursor commit) against a bare paho-mqtt publisher (the
  same library) sending the very same envelopes — same payload sizes, QoS 1, the same window
  of messages in flight — pre-encoded in memory. Target: >= 0.8x its rows/s. Each round
  drains the same rows under a fresh uplink name (its cursor at 0); the median of the
  per-round ratios counts. Beside it, for context: a minimal store-and-forward (stdlib
  sqlite3 + the same envelopes + paho), a raw sqlite3 read of the same rows (the second
  baseline: what reading alone costs, and the GIL floor it sets with the publisher's CPU),
  and the process CPU per 100k rows of a drain against the bare publisher's (steadier than
  rows/s on a loaded machine).
- latency: steady state at 1 s batches (``batch_interval = 1``): a row every 0.25 s, each
  committed (``await store.flush()``) and notified; the time from the commit to the PUBACK
  that moves the cursor past it. Target: p99 <= batch_interval + 50 ms.
- CPU per tick: two ``agentd run`` daemons side by side at 1 s ticks (the system sensor, the
  store on), one with an ``[uplinks.fleet]`` table publishing every row to the broker and one
  without; each one's on-CPU time (all threads, schedstat) over the same window divided by the
  ticks it ran. Target: on <= 1.15x off.

``python -m bench.uplink`` runs it alone (about a minute; ``--quick`` for less).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvloop
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agentd.config import JournalConfig, StoreConfig
from agentd.control.client import Client
from agentd.model import Observation, StatusReport
from agentd.stats import Histogram
from agentd.store import Store, StreamRow
from agentd.uplink import envelope as env
from agentd.uplink.config import MqttConfig, UplinkSettings
from agentd.uplink.engine import UplinkEngine
from agentd.uplink.mqtt import MqttTransport
from bench.common import Figure, mosquitto, print_table, ratio_figure, start_agentd

WINDOW = 8
BATCH_ROWS = 256
NODE = "bench"


def _broker(base: Path) -> contextlib.AbstractContextManager[int]:
    return mosquitto(base, "max_inflight_messages 20\n")


def _observation(tick: int) -> Observation:
    return Observation(
        tick=tick,
        monotonic=time.monotonic(),
        wall=time.time(),
        readings={
            "system": {"cpu": 0.25 + tick % 7, "mem": 512.0, "load1": 0.5, "temp": 48.5},
            "net": {"eth0_rx": float(tick * 1500), "eth0_tx": float(tick * 900)},
        },
    )


async def _fill(store: Store, n: int) -> None:
    for tick in range(1, n + 1):
        store.journal_observation(_observation(tick))
        if tick % 5000 == 0:  # inside the store's queue bound
            await store.flush()
    await store.flush()


async def _payloads(store: Store, n: int) -> list[bytes]:
    """The envelopes the engine sends for these rows, encoded once, for the bare publisher."""
    out, after = [], 0
    while after < n:
        rows = await store.stream_rows("observations", after, BATCH_ROWS, 128 * 1024)
        e = env.rows_envelope(NODE, store.epoch, store.boot_id, "observations", rows, "msgpack")
        out.append(env.encode(e, "msgpack"))
        after = rows[-1].id
    return out


async def _drain_agentd(store: Store, port: int, name: str, n: int) -> float:
    settings = UplinkSettings(
        node=NODE, window=WINDOW, batch_rows=BATCH_ROWS, streams=("observations",)
    )
    engine = UplinkEngine(
        name, settings, MqttTransport(MqttConfig(url=f"mqtt://127.0.0.1:{port}")), store
    )
    await engine.start()
    # connected first: the figure is the drain, not the connect
    while not engine.state().connected:
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    while engine.state().streams[0].acked < n:
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - started
    await engine.stop(1.0)
    return n / elapsed


def _drain_bare(port: int, payloads: list[bytes] | Path, n: int) -> float:
    """paho publishing ``payloads`` (or, given a database path, the envelopes it reads and
    encodes itself from that SQLite file: a minimal store-and-forward for context)."""
    done = threading.Event()
    acked = [0]

    expected = [len(payloads) if isinstance(payloads, list) else -1]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        if acked[0] == expected[0]:
            done.set()

    connected = threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port, clean_start=True)
    client.loop_start()
    try:
        connected.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/msgpack"
        topic = f"agentd/v1/{NODE}-bare/observations"
        started = time.perf_counter()
        if isinstance(payloads, Path):
            count = 0
            for p in _read_envelopes(payloads, n):
                client.publish(topic, p, qos=1, properties=props)
                count += 1
            expected[0] = count
        else:
            for p in payloads:
                client.publish(topic, p, qos=1, properties=props)
        done.wait(300)
        elapsed = time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()
    return n / elapsed


def _read_envelopes(path: Path, n: int) -> Any:
    conn = sqlite3.connect(path)
    epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
    after = 0
    try:
        while after < n:
            got = conn.execute(
                "SELECT id, wall, synced, boot_id, data FROM observations WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after, BATCH_ROWS),
            ).fetchall()
            rows = [StreamRow(i, w, bool(s), b, d) for i, w, s, b, d in got]
            e = env.rows_envelope(NODE, epoch, rows[0].boot_id, "observations", rows, "msgpack")
            yield env.encode(e, "msgpack")
            after = rows[-1].id
    finally:
        conn.close()


def _read_raw(path: Path, n: int) -> float:
    """The floor under any SQLite-backed uplink in one Python process: stdlib sqlite3 reading
    the same rows (the columns an envelope needs, and the checksum) in the same 1024-row pages
    the engine reads, with nothing done to them. Rows/s."""
    conn = sqlite3.connect(path)
    try:
        started, after = time.perf_counter(), 0
        while after < n:
            got = conn.execute(
                "SELECT id, wall, synced, boot_id, data, crc FROM observations WHERE id > ? "
                "ORDER BY id LIMIT 1024",
                (after,),
            ).fetchall()
            after = got[-1][0]
        return n / (time.perf_counter() - started)
    finally:
        conn.close()


async def _latency(base: Path, port: int, seconds: float) -> Histogram:
    cfg = StoreConfig(synchronous="normal", flush_interval=1.0)
    store = Store(base / "latency.db", cfg)
    await store.open()
    settings = UplinkSettings(node=NODE, window=WINDOW, batch_interval=1.0)
    engine = UplinkEngine(
        "latency", settings, MqttTransport(MqttConfig(url=f"mqtt://127.0.0.1:{port}")), store
    )
    hist = Histogram()
    committed: dict[int, float] = {}
    try:
        await engine.start()
        while not engine.state().connected:
            await asyncio.sleep(0.005)

        async def watch() -> None:
            seen = 0
            while True:
                acked = next(s.acked for s in engine.state().streams if s.stream == "observations")
                now = time.perf_counter()
                for i in range(seen + 1, acked + 1):
                    if i in committed:
                        hist.add(now - committed.pop(i))
                seen = max(seen, acked)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        tick = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tick += 1
            store.journal_observation(_observation(tick))
            await store.flush()
            committed[tick] = time.perf_counter()
            engine.notify()
            await asyncio.sleep(0.25)
        while committed and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.01)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await engine.stop(1.0)
        await store.close()
    return hist


_DAEMON = """
[agent]
interval = 1.0
[log]
heartbeat = 0
[sensors.system]
{uplink}
"""
_UPLINK = """
[uplinks.fleet]
url = "mqtt://127.0.0.1:{port}"
node = "{node}"
"""


def _cpu(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (schedstat: nanoseconds, where /proc/PID/stat
    counts 10 ms clock ticks, too coarse for a few ms per tick)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _ticks(base: Path) -> int:
    with Client(str(base / "run" / "agentd.sock")) as c:
        return c.call_as("status", StatusReport).loop.ticks


def _cpu_per_tick(base: Path, port: int, window: float) -> tuple[float, float, int]:
    """(CPU s per tick with the uplink, without it, ticks measured): both daemons run at once,
    so the machine's load is the same for both."""
    runs: dict[str, tuple[Path, subprocess.Popen[bytes]]] = {}
    try:
        for name, uplink in (("on", _UPLINK.format(port=port, node=NODE)), ("off", "")):
            d = base / f"cpu-{name}"
            d.mkdir()
            (d / "agentd.toml").write_text(_DAEMON.format(uplink=uplink))
            runs[name] = (d, start_agentd(d / "agentd.toml", d))
        deadline = time.monotonic() + 30
        for d, _ in runs.values():
            while not (d / "run" / "agentd.sock").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("agentd did not start")
                time.sleep(0.1)
        time.sleep(5.0)  # past start-up (imports, the first connect, the first backlog)
        start = {n: (_cpu(p.pid), _ticks(d)) for n, (d, p) in runs.items()}
        time.sleep(window)
        end = {n: (_cpu(p.pid), _ticks(d)) for n, (d, p) in runs.items()}
    finally:
        for _, proc in runs.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in runs.values():
            proc.wait(30)
    per_tick = {n: (end[n][0] - start[n][0]) / max(1, end[n][1] - start[n][1]) for n in runs}
    return per_tick["on"], per_tick["off"], end["on"][1] - start["on"][1]


async def _measure(quick: bool) -> list[Figure]:
    n = 20_000 if quick else 100_000
    rounds = 2 if quick else 3
    base = Path(tempfile.mkdtemp(prefix="agentd-bench-uplink-"))
    ours: list[float] = []
    bare: list[float] = []
    minimal: list[float] = []
    raw: list[float] = []
    #: process CPU seconds per drain (both threads; the broker is another process)
    cpu_ours: list[float] = []
    cpu_bare: list[float] = []
    cpu_raw: list[float] = []
    try:
        with _broker(base) as port:
            cfg = StoreConfig(
                synchronous="normal",
                observations=JournalConfig(max_rows=None, max_age=None),
                queue_size=10_000,
            )
            store = Store(base / "drain.db", cfg)
            await store.open()
            try:
                await _fill(store, n)
                payloads = await _payloads(store, n)
                size = statistics.mean(len(p) for p in payloads)
                for r in range(rounds):
                    c0 = time.process_time()
                    ours.append(await _drain_agentd(store, port, f"round{r}", n))
                    c1 = time.process_time()
                    bare.append(await asyncio.to_thread(_drain_bare, port, payloads, n))
                    c2 = time.process_time()
                    minimal.append(await asyncio.to_thread(_drain_bare, port, store.path, n))
                    c3 = time.process_time()
                    raw.append(await asyncio.to_thread(_read_raw, store.path, n))
                    cpu_raw.append(time.process_time() - c3)
                    cpu_ours.append(c1 - c0)
                    cpu_bare.append(c2 - c1)
            finally:
                await store.close()
            hist = await _latency(base, port, 8.0 if quick else 30.0)
            window = 30.0 if quick else 90.0
            on, off, ticks = await asyncio.to_thread(_cpu_per_tick, base, port, window)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratios = [a / b for a, b in zip(ours, bare, strict=True)]
    ratio = statistics.median(ratios)
    ceiling = _ceiling(n, raw, cpu_raw, cpu_bare, bare)
    p50, p99 = hist.percentile(0.5) * 1e3, hist.percentile(0.99) * 1e3
    return [
        Figure(
            "uplink: drain of a backlog",
            statistics.median(ours),
            statistics.median(bare),
            "rows/s",
            ">= 0.80x bare paho",
            ratio >= 0.8,
            ratio,
            note=f"{n} observation rows, {len(payloads)} envelopes of ~{size / 1024:.0f} KB "
            f"({BATCH_ROWS} rows), QoS 1, window {WINDOW}, local mosquitto; medians of {rounds} "
            "rounds, ratio = median of per-round ratios; baseline: paho-mqtt 2.1 publishing the "
            "same pre-encoded envelopes from memory (agentd reads them from SQLite)",
        ),
        Figure(
            "uplink: drain vs minimal store-and-forward",
            statistics.median(ours),
            statistics.median(minimal),
            "rows/s",
            "-",
            None,
            statistics.median([a / b for a, b in zip(ours, minimal, strict=True)]),
            note="context: the baseline here reads the same rows from the same SQLite file "
            "itself (stdlib sqlite3, 256 rows per SELECT), encodes the same envelopes and "
            "publishes them with paho; no cursor, accounting or bounds",
        ),
        Figure(
            "uplink: drain vs a raw sqlite3 read",
            statistics.median(ours),
            statistics.median(raw),
            "rows/s",
            "-",
            None,
            statistics.median([a / b for a, b in zip(ours, raw, strict=True)]),
            note="second baseline: stdlib sqlite3 only reading the same rows (id, wall, synced, "
            "boot_id, data, crc; 1024 per SELECT) from the same file, nothing sent. A drain "
            "cannot outrun reading its rows, and reading and publishing hold one GIL (their "
            f"CPU adds up: raw read {statistics.median(cpu_raw) * 1e3:.0f} ms + bare publisher "
            f"{statistics.median(cpu_bare) * 1e3:.0f} ms for {n} rows): an uplink that reads "
            f"SQLite in Python tops out near {ceiling:,.0f} rows/s here, "
            f"{ceiling / statistics.median(bare):.2f}x bare",
        ),
        ratio_figure(
            "uplink: drain CPU per 100k rows",
            statistics.median(cpu_ours) * 1e5 / n * 1e3,
            statistics.median(cpu_bare) * 1e5 / n * 1e3,
            "ms",
            target="-",
            note="process CPU time (every thread; the broker is another process) of a drain, "
            "against the bare publisher's, each with its connect and disconnect: less "
            "sensitive to the machine's load than rows/s",
        ),
        ratio_figure(
            "uplink: commit -> PUBACK p99",
            p99,
            1000.0,
            "ms",
            target="<= batch_interval + 50 ms",
            max_ratio=1.05,
            note=f"{hist.count} rows, one every 0.25 s, batch_interval 1 s; baseline column: "
            "the batch interval",
        ),
        ratio_figure("uplink: commit -> PUBACK p50", p50, 1000.0, "ms", target="-"),
        ratio_figure(
            "uplink: CPU per tick, uplink on vs off",
            on * 1e3,
            off * 1e3,
            "ms",
            target="<= 1.15x off",
            max_ratio=1.15,
            note=f"two agentd run daemons at once at 1 s ticks (system sensor, store on), "
            f"{ticks} ticks each; on: an [uplinks.fleet] table sending every observation and "
            "event to the local mosquitto; CPU: on-CPU time of all threads (schedstat)",
        ),
    ]


def _ceiling(
    n: int, raw: list[float], cpu_read: list[float], cpu_send: list[float], bare: list[float]
) -> float:
    """The best rows/s a drain that reads SQLite could reach in this run: no faster than the
    raw read itself, nor than the reader's and the publisher's CPU added up (one GIL), nor
    than the bare publisher."""
    cpu = statistics.median(cpu_read) + statistics.median(cpu_send)
    return min(statistics.median(raw), n / cpu, statistics.median(bare))


def run(quick: bool = False) -> list[Figure]:
    return uvloop.run(_measure(quick))


def main() -> None:
    print_table(run(quick="--quick" in sys.argv))


if __name__ == "__main__":
    main()
