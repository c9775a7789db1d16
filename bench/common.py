"""Shared pieces of the benchmarks: a `Figure` row, the table printer and machine facts.

Every benchmark module exposes ``run(quick: bool = False) -> list[Figure]`` and a ``main()``
that prints its own table, so each one is runnable alone (``python -m bench.loop``) and
``python -m bench`` runs them all into one table and one JSON file.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

__all__ = [
    "Figure",
    "free_port",
    "machine",
    "mosquitto",
    "print_table",
    "ratio_figure",
    "start_agentd",
]


@dataclass
class Figure:
    """One line of the table. ``ratio`` is agentd / baseline (or as ``ratio_note`` says);
    ``ok`` compares it with the target; ``short`` means the target is missed — a figure to
    improve, not a test to loosen."""

    figure: str
    agentd: float | None
    baseline: float | None
    unit: str
    target: str
    ok: bool | None
    ratio: float | None = None
    note: str = ""
    extra: dict[str, float | str] = field(default_factory=dict)

    @property
    def verdict(self) -> Literal["pass", "short", "-"]:
        if self.ok is None:
            return "-"
        return "pass" if self.ok else "short"


def ratio_figure(
    figure: str,
    agentd: float,
    baseline: float,
    unit: str,
    *,
    target: str,
    max_ratio: float | None = None,
    min_ratio: float | None = None,
    note: str = "",
) -> Figure:
    ratio = agentd / baseline if baseline else None
    ok: bool | None = None
    if ratio is not None and max_ratio is not None:
        ok = ratio <= max_ratio
    if ratio is not None and min_ratio is not None:
        ok = ratio >= min_ratio if ok is None else ok and ratio >= min_ratio
    return Figure(figure, agentd, baseline, unit, target, ok, ratio, note)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:.3g}"


def print_table(figures: list[Figure], file: object = None) -> None:
    out = file or sys.stdout
    rows = [("figure", "agentd", "baseline", "unit", "ratio", "target", "result")]
    for f in figures:
        rows.append(
            (
                f.figure,
                _fmt(f.agentd),
                _fmt(f.baseline),
                f.unit,
                "-" if f.ratio is None else f"{f.ratio:.2f}",
                f.target,
                f.verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for f in figures:
        if f.note:
            print(f"  * {f.figure}: {f.note}", file=out)


def machine() -> dict[str, object]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    libs = {}
    for name in (
        "agentd",
        "uvloop",
        "msgspec",
        "aiosqlite",
        "opentelemetry-sdk",
        "psutil",
        "pyinstaller",
    ):
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = "-"
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": libs,
    }


def to_json(figures: list[Figure]) -> str:
    return json.dumps(
        {"machine": machine(), "figures": [asdict(f) | {"result": f.verdict} for f in figures]},
        indent=2,
    )


def start_agentd(config: Path, base: Path) -> subprocess.Popen[bytes]:
    """``agentd run`` from this venv with ``config``, its state and runtime directories under
    ``base`` (the socket is ``base/run/agentd.sock``), quiet."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentd",
            "run",
            "--config",
            str(config),
            "--state-dir",
            str(base / "state"),
            "--runtime-dir",
            str(base / "run"),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(base: Path, extra: str = "") -> Iterator[int]:
    """Debian's mosquitto on 127.0.0.1 and a free port (yielded), no persistence, anonymous,
    with the config lines ``extra``; waits until it accepts connections (10 s at most)."""
    port = free_port()
    conf = base / "mosquitto.conf"
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    conf.write_text(
        f"user {user}\nallow_anonymous true\npersistence false\nlistener {port} 127.0.0.1\n"
        f"log_type error\n{extra}"
    )
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
