"""``python -m bench``: run every benchmark, print one table, write the JSON results.

Results go to bench/results/<date>-<host>.json.
Each benchmark module exposes ``run(quick: bool) -> list[Figure]``; ``python -m bench.NAME``
runs one alone. ``--only NAME[,NAME]`` picks some; ``--quick`` shortens the long ones.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import Figure, machine, print_table, to_json

#: run in this order; the modules of one inner list run side by side (they are idle-process
#: measurements that do not disturb each other), so the whole run stays under five minutes
GROUPS = [
    ["loop", "peer"],
    ["control"],
    ["store"],
    ["datagrowth"],
    ["growth"],
    ["scaling"],
    ["telemetry"],
    ["uplink"],
    ["modbus"],
    ["mqtt_sensor"],
    ["commands"],
    ["footprint"],
]
MODULES = [name for group in GROUPS for name in group]


def _run_one(name: str, quick: bool) -> list[Figure]:
    started = time.monotonic()
    print(f"# {name} ...", file=sys.stderr, flush=True)
    try:
        module = importlib.import_module(f"bench.{name}")
        figures: list[Figure] = module.run(quick=quick)
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        figures = [
            Figure(
                f"{name}: did not run",
                None,
                None,
                "",
                "",
                False,
                note=f"{type(exc).__name__}: {exc}",
            )
        ]
    print(f"# {name}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(MODULES))
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else set(MODULES)
    figures: list[Figure] = []
    t0 = time.monotonic()
    for group in GROUPS:
        names = [n for n in group if n in chosen]
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            for result in pool.map(lambda n: _run_one(n, args.quick), names):
                figures.extend(result)
    info = machine()
    print(
        f"\n{info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"{time.monotonic() - t0:.0f}s\n"
    )
    print_table(figures)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    path = out / f"{stamp}-{platform.node() or 'host'}.json"
    path.write_text(to_json(figures) + "\n")
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
