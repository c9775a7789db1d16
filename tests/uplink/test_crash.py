"""kill -9 of the process that holds the store and the uplink, at random moments, ten times,
while it journals and publishes: after the restarts every committed id has reached the broker
(at least once), and the database passes PRAGMA integrity_check. (The same test against the
agentd daemon comes with the daemon's wiring.)"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from tests.uplink.broker import Collector, Mosquitto
from tests.uplink.helpers import ROOT

pytestmark = pytest.mark.slow
KILLS = 10


def _child(db: Path, url: str, run: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.uplink.crash_child", str(db), url, str(run)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    rng = random.Random(14)
    db = tmp_path / "agentd.db"
    committed = 0
    with Collector(broker.port, "agentd/v1/gw-crash/observations") as sub:
        for run in range(KILLS):
            proc = _child(db, broker.url, run)
            time.sleep(rng.uniform(0.3, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert proc.stdout is not None
            for line in proc.stdout.read().decode().splitlines():
                if line.startswith("O "):
                    committed = max(committed, int(line.split()[1]))
            proc.stdout.close()
        last = _child(db, broker.url, -1)
        assert last.stdout is not None
        assert last.stdout.read().decode().strip().endswith("done")
        assert last.wait(30) == 0
        last.stdout.close()
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            head = conn.execute("SELECT max(id) FROM observations").fetchone()[0]
        finally:
            conn.close()
        assert head >= committed > 0  # what a child saw committed is still there

        def received() -> set[int]:
            ids: set[int] = set()
            for _, payload, _ in sub.snapshot():
                env = msgspec.msgpack.decode(payload)
                ids.update(row[0] for row in env["rows"])
            return ids

        assert sub.wait_for(lambda: received() >= set(range(1, head + 1)), 30), sorted(
            set(range(1, head + 1)) - received()
        )[:20]
    total = sum(len(msgspec.msgpack.decode(p)["rows"]) for _, p, _ in sub.snapshot())
    print(f"\nkill -9 x{KILLS}: {head} rows committed, all received; {total - head} duplicates")
