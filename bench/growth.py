"""Cost growth over a simulated day (issue #18): the real `Daemon` on the embedded default
config, its loop ticking every millisecond, so 86,400 ticks (24 hours at the default 1 s) take
a couple of minutes; RSS after 1 simulated hour (3,600 ticks) against RSS after 24, and the
slope of a least-squares line through a sample every simulated hour from hour 1 on.

The journals are at their retention bounds from hour 1 on (``max_rows`` = 3,000 for both, so
retention deletes as fast as the loop appends); the store, the control socket, telemetry
(exporter "none") and the default sensor, policy and actuator run as in production. What runs
on wall-clock timers (the session sweep every 60 s, the heartbeat, the group commit every
second) runs as often as in two minutes of a real day, not 24 hours' worth: the tick path is
what is compressed. Target: RSS at 24 h within 2 MiB of RSS at 1 h.

The daemon runs in a child process (``python -m bench.growth --child DIR TICKS``) that
samples its own RSS from the loop, every 3,600 ticks, and prints them as JSON.
``python -m bench.growth [--quick]`` (quick: 4 simulated hours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure, print_table

MIB = 2**20
HOUR = 3600  # ticks per simulated hour
FAST = 0.001  # s between ticks


def _config() -> object:
    import msgspec

    from agentd.config import DEFAULT_CONFIG, loads
    from agentd.plugins.registry import default_registry

    config = loads(DEFAULT_CONFIG, default_registry, source="<default>")
    bound = msgspec.structs.replace(config.store.observations, max_rows=3000)
    store = msgspec.structs.replace(
        config.store,
        observations=bound,
        actions=msgspec.structs.replace(config.store.actions, max_rows=3000),
    )
    # validation keeps interval >= 10 ms; the Struct itself takes a faster one. Timeouts
    # stay at a production second: only the schedule is compressed
    agent = msgspec.structs.replace(
        config.agent, interval=FAST, stage_timeout=1.0, plugin_timeout=1.0
    )
    log = msgspec.structs.replace(config.log, level="warning")
    return msgspec.structs.replace(config, agent=agent, store=store, log=log)


async def _child(base: Path, ticks: int) -> None:
    import psutil

    from agentd.daemon import Daemon, DaemonOptions

    config = _config()
    daemon = Daemon(
        config,  # type: ignore[arg-type]
        DaemonOptions(state_dir=str(base / "state"), runtime_dir=str(base / "run")),
    )
    me = psutil.Process()
    samples: list[tuple[int, int, float]] = []

    async def sample() -> None:
        while daemon.loop is None:
            await asyncio.sleep(0.01)
        loop, t0, cpu0 = daemon.loop, time.monotonic(), me.cpu_times()
        hour = 1
        while hour * HOUR <= ticks:
            await asyncio.sleep(0.02)
            if loop.ticks >= hour * HOUR:
                samples.append((loop.ticks, me.memory_info().rss, time.monotonic() - t0))
                hour += 1
        cpu = me.cpu_times()
        out = {
            "samples": samples,
            "skipped": loop.skipped,
            "cpu": cpu.user + cpu.system - cpu0.user - cpu0.system,
        }
        print(json.dumps(out), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.create_task(sample())
    await daemon.serve()
    await task


def _slope(samples: list[tuple[int, int, float]]) -> float:
    """Least-squares RSS slope in bytes per simulated hour."""
    xs = [t / HOUR for t, _, _ in samples]
    ys = [float(r) for _, r, _ in samples]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def run(quick: bool = False) -> list[Figure]:
    hours = 4 if quick else 24
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="aggrow", dir="/tmp") as d:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.growth", "--child", d, str(hours * HOUR)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            cwd=Path(__file__).resolve().parents[1],
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"the daemon gave no samples ({proc.returncode}): {proc.stderr[-800:]}")
    got = json.loads(lines[-1])
    samples = [tuple(s) for s in got["samples"]]
    (_, rss1, _), (tn, rssn, wall) = samples[0], samples[-1]
    slope = _slope(samples)  # type: ignore[arg-type]
    growth = (rssn - rss1) / MIB
    note = (
        f"{tn} ticks at {FAST * 1e3:g} ms in {wall:.0f} s ({got['skipped']} deadlines skipped, "
        f"CPU {got['cpu'] / tn * 1e6:.0f} us/tick); journals at 3,000 rows; "
        f"load average {load:.2f} at the start"
    )
    return [
        Figure(
            f"RSS after {hours} simulated hours vs after 1",
            rssn / MIB,
            rss1 / MIB,
            "MiB",
            "<= +2 MiB",
            growth <= 2.0,
            ratio=rssn / rss1,
            note=note + f"; growth {growth:+.2f} MiB",
        ),
        Figure(
            "RSS slope, simulated hour 1 on",
            slope / 1024,
            None,
            "KiB/h",
            "reported",
            None,
            note=f"least squares over {len(samples)} hourly samples; "
            f"{slope * 24 / MIB:+.2f} MiB per simulated day",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.growth")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("DIR", "TICKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        uvloop.run(_child(Path(args.child[0]), int(args.child[1])))
        return
    print_table(run(quick=args.quick))


if __name__ == "__main__":
    main()
