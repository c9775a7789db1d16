"""Tick lateness of the real daemon, idle, against a bare uvloop loop in the same run.

agentd runs as a subprocess at a 100 ms interval with its default plugins, the store, the
control socket and default telemetry on; after the window its lateness p50/p99/max, skipped
ticks and drift come from ``agentctl status --json``. The baseline is a bare uvloop loop in
another subprocess, started at the same time, that sleeps to absolute deadlines on the
monotonic clock (``deadline += interval``) and records how late each wake-up is. Targets:
agentd's p99 <= 1 ms; no skipped ticks (drift 0: the tick count matches the elapsed time).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure, print_table, ratio_figure, start_agentd

INTERVAL = 0.1

BARE = r"""
import asyncio, json, sys, time, uvloop
async def main(interval, seconds):
    loop = asyncio.get_running_loop()
    nxt = time.monotonic() + interval
    end = nxt + seconds
    lat = []
    while nxt < end:
        while True:
            d = nxt - time.monotonic()
            if d <= 0:
                break
            f = loop.create_future()
            h = loop.call_later(d, f.set_result, None)
            await f
        lat.append(time.monotonic() - nxt)
        nxt += interval
    lat.sort()
    n = len(lat)
    print(json.dumps({"p50": lat[n // 2], "p99": lat[min(n - 1, int(n * 0.99))],
                      "max": lat[-1], "ticks": n}))
uvloop.run(main(float(sys.argv[1]), float(sys.argv[2])))
"""

CONFIG = f"""
[agent]
interval = {INTERVAL}
[log]
heartbeat = 0
[sensors.system]
temperatures = false
[policies.cpu_high]
plugin = "threshold"
metric = "system.cpu.percent"
above = 90.0
for_ticks = 3
[actuators.log]
"""


def _ctl(sock: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "agentd", "ctl", "--socket", str(sock), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def run(quick: bool = False) -> list[Figure]:
    seconds = 15.0 if quick else 60.0
    base = Path(tempfile.mkdtemp(prefix="agloop", dir="/tmp"))  # short: socket path limit
    (base / "agentd.toml").write_text(CONFIG)
    sock = base / "run" / "agentd.sock"
    agent = start_agentd(base / "agentd.toml", base)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agentd did not start")
            time.sleep(0.05)
        first = _ctl(sock, "status")
        t0 = time.monotonic()
        bare = subprocess.run(
            [sys.executable, "-c", BARE, str(INTERVAL), str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        elapsed = time.monotonic() - t0
        last = _ctl(sock, "status")
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        shutil.rmtree(base, ignore_errors=True)
    b = json.loads(bare.stdout)
    loop0, loop1 = first["loop"], last["loop"]
    assert isinstance(loop0, dict)
    assert isinstance(loop1, dict)
    ticks = loop1["ticks"] - loop0["ticks"]
    skipped = loop1["skipped"] - loop0["skipped"]
    # the daemon's own clock between the two snapshots (agentctl's start-up is not in it):
    # with no drift, ticks run + deadlines skipped = elapsed / interval, to within one tick
    span = float(last["uptime"]) - float(first["uptime"])  # type: ignore[arg-type]
    expected = span / INTERVAL
    p99 = loop1["lateness_p99"] * 1e3
    drift = abs(ticks + skipped - expected)
    return [
        ratio_figure(
            "tick lateness p50, idle, 100 ms",
            loop1["lateness_p50"] * 1e3,
            b["p50"] * 1e3,
            "ms",
            target="reported",
        ),
        Figure(
            "tick lateness p99, idle, 100 ms",
            p99,
            b["p99"] * 1e3,
            "ms",
            "<= 1 ms",
            p99 <= 1.0,
            p99 / (b["p99"] * 1e3) if b["p99"] else None,
            note="baseline: a bare uvloop loop sleeping to absolute deadlines",
        ),
        ratio_figure(
            "tick lateness max, idle, 100 ms",
            loop1["lateness_max"] * 1e3,
            b["max"] * 1e3,
            "ms",
            target="reported",
        ),
        Figure(
            f"skipped ticks / drift over {seconds:.0f}s",
            float(skipped),
            0.0,
            "ticks",
            "0 skipped, drift < 1 tick",
            skipped == 0 and drift <= 1.0,
            note=f"{ticks} ticks in {span:.2f}s of daemon uptime (expected {expected:.1f}); "
            f"{elapsed:.1f}s wall",
        ),
    ]


def main() -> None:
    print_table(run())


if __name__ == "__main__":
    main()
