"""agentd itself (``agentd run`` with an ``[uplinks.fleet]`` table) killed with SIGKILL at random
moments, ten times, while it ticks and publishes: after the restarts, and a last run stopped
with SIGTERM, every committed observation and event id has reached the broker (at least once)
and the database passes ``PRAGMA integrity_check``."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from tests.uplink.broker import Collector, Mosquitto
from tests.uplink.helpers import NODE, PREFIX
from tests.uplink.test_daemon import config
from tests.utils import AgentProcess

pytestmark = pytest.mark.slow
KILLS = 10


def _received(messages: list[tuple[str, bytes, bool]], stream: str) -> tuple[set[int], int]:
    ids: set[int] = set()
    total = 0
    for topic, payload, _ in messages:
        if topic.endswith("/" + stream):
            env = msgspec.msgpack.decode(payload)
            if env["kind"] == "rows":
                total += len(env["rows"])
                ids.update(row[0] for row in env["rows"])
    return ids, total


def test_agentd_kill_9_at_random_moments_loses_nothing(broker: Mosquitto, short_tmp: Path) -> None:
    rng = random.Random(1414)
    text = config(broker.url, interval=0.02)
    with Collector(broker.port, f"{PREFIX}/{NODE}/+") as fleet:
        for run in range(KILLS):
            with AgentProcess(short_tmp, text, log_level="info") as agent:
                agent.wait_log(r"agentd \S+ started", timeout=30)
                time.sleep(rng.uniform(0.2, 1.5))
                agent.signal(signal.SIGKILL)
                assert agent.proc is not None
                assert agent.proc.wait(10) == -signal.SIGKILL, f"run {run}"
        with AgentProcess(short_tmp, text, log_level="info") as agent:
            agent.wait_log(r"agentd \S+ started", timeout=30)
            time.sleep(1.0)
            assert agent.stop() == 0
            log = agent.log()
        assert "Traceback" not in log
        db = short_tmp / "state" / "agentd.db"
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            heads = {
                t: conn.execute(f"SELECT count(*), max(id) FROM {t}").fetchone()
                for t in ("observations", "events")
            }
        finally:
            conn.close()
        for table, (count, head) in heads.items():
            assert count == head, f"{table}: ids 1..{head} all committed (none reused, no gaps)"

        def complete() -> bool:
            messages = fleet.snapshot()
            return all(
                _received(messages, t)[0] >= set(range(1, head + 1))
                for t, (_, head) in heads.items()
            )

        assert fleet.wait_for(complete, 30), {
            t: sorted(set(range(1, h + 1)) - _received(fleet.snapshot(), t)[0])[:20]
            for t, (_, h) in heads.items()
        }
    messages = fleet.snapshot()
    obs_head = heads["observations"][1]
    _, total = _received(messages, "observations")
    print(
        f"\nagentd kill -9 x{KILLS}: {obs_head} observations and {heads['events'][1]} events "
        f"committed, all received; {total - obs_head} duplicates over {KILLS + 1} starts"
    )
