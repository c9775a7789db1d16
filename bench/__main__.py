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
from pathlib import Path

from bench.common import Figure, machine, print_table, to_json

MODULES = ["loop", "control", "store", "datagrowth", "scaling", "telemetry", "footprint", "peer"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(MODULES))
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    names = args.only.split(",") if args.only else MODULES
    figures: list[Figure] = []
    t0 = time.monotonic()
    for name in names:
        started = time.monotonic()
        print(f"# {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            figures.extend(module.run(quick=args.quick))
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            figures.append(
                Figure(
                    f"{name}: did not run",
                    None,
                    None,
                    "",
                    "",
                    False,
                    note=f"{type(exc).__name__}: {exc}",
                )
            )
        print(f"# {name}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
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
