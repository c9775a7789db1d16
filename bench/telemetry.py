"""Telemetry overhead per tick: CPU time of a tick with telemetry ``none``, ``file`` and ``otlp``
(to a local sink in another process) against telemetry off, in the same run.

A tick is the embedded default config's (the ``system`` sensor, a threshold policy, the log
actuator), run back to back with ``PerceptionLoop.tick_now()`` on uvloop, as the daemon builds
it. CPU is the whole process's (``time.process_time``: the loop, the sensor's worker thread and
the exporters' threads), so export work is charged where it happens. Each sampled trace is
exported on its own (at 1 s ticks and 1 % sampling they come ~100 s apart, more than the batch
delay) and the exporting metric reader is collected every
``metrics_interval / interval`` ticks (every 60 ticks at the defaults: one export a minute at
1 s), so export cost is amortised at the real cadence. The modes run interleaved in rounds and
the per-round ratios' median is reported. Target: <= 10 % added at the default sampling
(``tick_sample_ratio``, 0.001; an SDK span costs tens of microseconds here, so unsampled ticks
must stay cheap). Also shown, not targeted: sampling 0.01 and every tick traced.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from agentd.config import TelemetryConfig, TelemetryOtlpConfig, load
from agentd.daemon import loop_settings
from agentd.loop import PerceptionLoop
from agentd.plugins.registry import default_registry
from agentd.plugins.supervisor import PluginSupervisor
from agentd.telemetry import Telemetry
from bench.common import Figure, print_table, ratio_figure

TARGET = 1.10
#: the span batch processor's schedule delay (agentd.telemetry), in seconds
BATCH_DELAY = 5.0

SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real collector
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


class Mode:
    def __init__(self, name: str, loop: PerceptionLoop, telemetry: Telemetry | None) -> None:
        self.name = name
        self.loop = loop
        self.telemetry = telemetry
        self.every = 0
        if telemetry is not None:
            c = telemetry.config
            self.every = round(c.metrics_interval / loop.interval) if c.exporter != "none" else 0
        self.samples: list[float] = []

    async def phase(self, ticks: int) -> float:
        """CPU seconds per tick over ``ticks`` ticks."""
        tel = self.telemetry
        exporting = tel.exporting if tel is not None else None
        provider = tel.tracer_provider if tel is not None else None
        batch_ticks = round(BATCH_DELAY / self.loop.interval)
        flushed = 0
        c0 = time.process_time()
        for i in range(1, ticks + 1):
            await self.loop.tick_now()
            if exporting is not None and i % self.every == 0:
                exporting.collect()
            if provider is not None and i - flushed >= batch_ticks and tel and tel.spans_queued:
                # the batch processor's timer, at the real cadence: at 1 s ticks and 1 %
                # sampling each trace goes out alone; every tick traced, 5 per export
                provider.force_flush()
                flushed = i
        return (time.process_time() - c0) / ticks


async def _modes(state: Path, endpoint: str, ratio: float) -> list[Mode]:
    config = load(None, default_registry)
    registry = default_registry(config.plugins.blocked)
    modes = []
    for name in ("off", "none", "file", "otlp"):
        sup = PluginSupervisor(registry)
        await sup.start_all(config)
        tel = None
        if name != "off":
            tc = TelemetryConfig(
                exporter=name,  # type: ignore[arg-type]
                tick_sample_ratio=ratio,
                otlp=TelemetryOtlpConfig(endpoint=endpoint),
            )
            tel = Telemetry(tc, state / name)
        loop = PerceptionLoop(
            loop_settings(config),
            sup.sensors(),
            sup.policies(),
            sup.actuators(),
            tracer=tel,
            action_hook=tel.run_action if tel is not None else None,
        )
        if tel is not None:
            tel.observe(loop, sup.all)
        modes.append(Mode(name, loop, tel))
    return modes


async def _measure(rounds: int, ticks: int, ratio: float, endpoint: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="agentd-bench-tel") as tmp:
        modes = await _modes(Path(tmp), endpoint, ratio)
        for m in modes:  # warm up: imports, caches, the sensor's first readings
            await m.phase(max(20, ticks // 10))
        ratios: dict[str, list[float]] = {m.name: [] for m in modes[1:]}
        for _ in range(rounds):
            per_tick = {m.name: await m.phase(ticks) for m in modes}
            for name, values in ratios.items():
                values.append(per_tick[name] / per_tick["off"])
            for m in modes:
                m.samples.append(per_tick[m.name])
        for m in modes:
            if m.telemetry is not None:
                await asyncio.to_thread(m.telemetry.shutdown, 5.0)
        out = {f"{m.name}_us": statistics.median(m.samples) * 1e6 for m in modes}
        out |= {f"{name}_ratio": statistics.median(r) for name, r in ratios.items()}
        return out


def run(quick: bool = False) -> list[Figure]:
    # back-to-back ticks make the default policy's CPU rule fire: keep its alerts quiet
    logging.getLogger("agentd").setLevel(logging.ERROR)
    ratio = TelemetryConfig().tick_sample_ratio
    sink = subprocess.Popen(
        [sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert sink.stdout is not None
        endpoint = f"http://127.0.0.1:{sink.stdout.readline().strip()}"
        rounds, ticks = (4, 240) if quick else (31, 240)
        default = uvloop.run(_measure(rounds, ticks, ratio, endpoint))
        tenfold = uvloop.run(_measure(max(3, rounds // 2), ticks, 0.01, endpoint))
        traced = uvloop.run(_measure(max(3, rounds // 4), ticks // 2, 1.0, endpoint))
    finally:
        sink.kill()
        sink.wait(10)
    figures = []
    for name in ("none", "file", "otlp"):
        f = _figure(f"telemetry {name}: CPU per tick (default sampling {ratio:g})", default, name)
        f.target = "<= 1.10x telemetry off"
        f.ok = f.ratio is not None and f.ratio <= TARGET
        if name == "none":
            f.note = "metrics in-process only (agentctl metrics); no spans"
        figures.append(f)
    for name in ("file", "otlp"):
        figures.append(_figure(f"telemetry {name}: CPU per tick, sampling 0.01", tenfold, name))
    for name in ("file", "otlp"):
        figures.append(_figure(f"telemetry {name}: CPU per tick, every tick traced", traced, name))
    return figures


def _figure(title: str, measured: dict[str, float], name: str) -> Figure:
    f = ratio_figure(
        title, measured[f"{name}_us"], measured["off_us"], "us", target="(shown, not targeted)"
    )
    # the median of the per-round ratios (interleaved rounds), not the ratio of two medians
    f.ratio = measured[f"{name}_ratio"]
    return f


def main() -> None:
    t0 = time.monotonic()
    figures = run(quick="--quick" in sys.argv)
    print_table(figures)
    for f in figures:
        print(f"{f.figure}: ratio {f.ratio:.3f}")
    print(f"({time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
