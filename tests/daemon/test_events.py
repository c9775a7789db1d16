"""The events journal (the uplink's ``events`` stream) holds agentd's own state changes, written
by the daemon through its construction-time seams: start and stop, a reload applied and one
refused, a plugin failing, degraded and recovered, and the store degraded by a full disk and
recovered. Read back from the real database file after a real ``agentd run``."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.control.helpers import TESTPLUGINS
from tests.control.helpers import ctl as ctl_at
from tests.store.test_disk import tmpfs
from tests.utils import AgentProcess, wait_for

CONFIG = """
[agent]
interval = 0.05
[log]
heartbeat = 0
[store]
flush_interval = 0.05
[sensors.system]
[sensors.switch]
fail_file = "{base}/fail"
degraded_after = 3
"""


def events(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, data FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    return [msgspec.msgpack.decode(blob) for _, blob in rows]


def ctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return ctl_at(agent.runtime_dir / "agentd.sock", *args)


def test_state_changes_are_journalled_as_events(short_tmp: Path) -> None:
    text = CONFIG.format(base=short_tmp)
    with AgentProcess(short_tmp, text, argv=TESTPLUGINS, log_level="info") as agent:
        agent.wait_log(r"agentd \S+ started")
        wait_for(lambda: ctl(agent, "ping").returncode == 0, 15, what="the control socket")
        (short_tmp / "fail").touch()
        agent.wait_log(r"sensor 'switch' degraded after 3 failures")
        (short_tmp / "fail").unlink()
        agent.wait_log(r"sensor 'switch' recovered")
        assert ctl(agent, "reload").returncode == 0
        assert agent.config_path is not None
        agent.config_path.write_text(text + "[sensors.nope]\n")
        refused = ctl(agent, "reload")
        assert refused.returncode == 1
        assert agent.stop() == 0
        found = events(agent.state_dir / "agentd.db")
    kinds = [e["kind"] for e in found]
    assert kinds[0] == "agentd.started"
    assert kinds[-1] == "agentd.stopping"
    # the switched-off spell, in order (a loaded machine may add a timeout spell of its own)
    switch = [e for e in found if e["kind"].startswith("plugin.") and e["data"]["name"] == "switch"]
    first = next(i for i, e in enumerate(switch) if "switched off by" in e["data"].get("error", ""))
    spell = [e["kind"] for e in switch[first : first + 3]]
    assert spell == ["plugin.failing", "plugin.degraded", "plugin.recovered"], switch
    assert switch[first]["data"]["kind"] == "sensor"
    assert switch[first]["data"]["plugin"] == "switch"
    reloaded = next(e for e in found if e["kind"] == "agentd.reloaded")
    assert reloaded["data"]["generation"] == 1
    bad = next(e for e in found if e["kind"] == "agentd.reload_refused")
    assert any("nope" in line for line in bad["data"]["errors"])
    assert found[0]["data"]["version"]
    walls = [e["wall"] for e in found]
    assert walls == sorted(walls)


@pytest.mark.root
def test_a_full_disk_is_journalled_once_it_recovers(short_tmp: Path) -> None:
    text = CONFIG.format(base=short_tmp)
    with (
        tmpfs(short_tmp / "state", "2m") as state,
        AgentProcess(short_tmp, text, argv=TESTPLUGINS, log_level="info") as agent,
    ):
        agent.wait_log(r"agentd \S+ started")
        filler = state / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        agent.wait_log(r"journaling is degraded, the loop keeps running", timeout=60)
        filler.unlink()
        agent.wait_log(r"journaling resumed", timeout=60)
        db = state / "agentd.db"

        def store_events() -> list[dict[str, Any]]:
            return [e for e in events(db) if e["kind"].startswith("store.")]

        wait_for(lambda: len(store_events()) == 2, 20, what="the store's two events")
        assert agent.stop() == 0
        got = store_events()
    assert [e["kind"] for e in got] == ["store.degraded", "store.recovered"]
    assert "database or disk is full" in got[0]["data"]["error"]
    assert got[1]["data"]["path"] == str(db)
