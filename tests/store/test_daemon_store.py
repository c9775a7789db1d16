"""The store inside a real agentd subprocess: policy memory and journals survive a restart; a
corrupt database is moved aside and the daemon starts; an unwritable one degrades journaling
while the loop keeps ticking; a newer schema refuses the start, untouched."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import msgspec

from tests.utils import AgentProcess

CONFIG = """
[agent]
interval = 0.1
[log]
heartbeat = 0
{store}
[sensors.system]
timeout = 5.0         # a loaded test machine must not cost the policy a reading
[policies.cpu]
plugin = "threshold"
metric = "system.cpu.percent"
above = -1.0          # always breached: the count grows by one per tick
for_ticks = {for_ticks}
cooldown = 3600
params = {{ message = "cpu is warm" }}
[actuators.log]
"""


def policy_memory(db: Path) -> dict[str, object]:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT state FROM sessions WHERE id = 'policy:cpu'").fetchone()
    finally:
        conn.close()
    assert row is not None, "the policy's memory was not saved"
    state = msgspec.msgpack.decode(row[0])
    assert isinstance(state, dict)
    return state


def test_policy_memory_and_journals_survive_a_restart(short_tmp: Path) -> None:
    db = short_tmp / "state" / "agentd.db"
    with AgentProcess(short_tmp, CONFIG.format(store="", for_ticks=100_000)) as agent:
        agent.wait_log(r"tick 8:")
        assert agent.stop() == 0
    first = agent.log()
    ticks_run1 = len(re.findall(r"DEBUG +agentd\.loop: tick \d+:", first))
    count = policy_memory(db)["count"]
    assert isinstance(count, int)
    assert count >= 8
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM observations").fetchone() == (ticks_run1,)
    conn.close()

    # the threshold is now 3 ticks past the saved count: it fires on the 3rd tick after the
    # restart only if the count survived (from zero it would take count + 3 ticks)
    config = CONFIG.format(store="", for_ticks=count + 3)
    with AgentProcess(short_tmp, config) as agent:
        agent.wait_log(r"action alert: cpu is warm")
        agent.wait_log(r"tick 5:")
        assert agent.stop() == 0
    second = agent.log()
    assert re.search(r"tick 3: \d+ readings, 0 errors, 1 actions", second), second[-2000:]
    assert "Traceback" not in first + second
    state = policy_memory(db)
    assert state["active"] is True

    conn = sqlite3.connect(db)
    try:
        # both runs are in the observation journal: tick 1 twice
        assert conn.execute("SELECT count(*) FROM observations WHERE tick = 1").fetchone() == (2,)
        rows = conn.execute("SELECT tick, actuator, name, status, data FROM actions").fetchall()
    finally:
        conn.close()
    assert [r[:4] for r in rows] == [(3, "log", "alert", "ok")]
    result = msgspec.msgpack.decode(rows[0][4])
    assert result["action"]["params"]["message"] == "cpu is warm"
    assert result["action"]["source"] == "cpu"


def test_corrupt_database_is_moved_aside_and_the_daemon_starts(short_tmp: Path) -> None:
    state = short_tmp / "state"
    state.mkdir()
    (state / "agentd.db").write_text("not a database, just text\n" * 100)
    with AgentProcess(short_tmp, CONFIG.format(store="", for_ticks=1000)) as agent:
        agent.wait_log(r"tick 3:")
        assert agent.stop() == 0
    log = agent.log()
    errors = [line for line in log.splitlines() if " ERROR " in line and "agentd.store" in line]
    assert len(errors) == 1, errors
    m = re.search(
        r"agentd\.store: store: (\S+) is corrupt \(file is not a database\); moved it to "
        r"(\S+\.corrupt-\d{8}T\d{6}Z) and started a fresh database$",
        errors[0],
    )
    assert m, errors[0]
    assert m.group(1) == str(state / "agentd.db")
    assert Path(m.group(2)).read_text().startswith("not a database")
    assert "Traceback" not in log
    conn = sqlite3.connect(state / "agentd.db")
    assert conn.execute("SELECT count(*) FROM observations").fetchone()[0] >= 3
    conn.close()


def test_unwritable_database_degrades_journaling_and_the_loop_keeps_running(
    short_tmp: Path,
) -> None:
    state = short_tmp / "state"
    state.mkdir()
    (state / "blocker").write_text("a file where the database directory should be")
    config = CONFIG.format(store='[store]\npath = "blocker/agentd.db"', for_ticks=1000)
    with AgentProcess(short_tmp, config) as agent:
        agent.wait_log(r"journaling is degraded, the loop keeps running")
        agent.wait_log(r"tick 10:")
        assert agent.stop() == 0
    log = agent.log()
    assert re.search(
        r"ERROR +agentd\.store: store: cannot open \S+/blocker/agentd\.db: .+; journaling is "
        r"degraded, the loop keeps running",
        log,
    )
    assert "Traceback" not in log
    assert log.rstrip().endswith("agentd: stopped")


def test_newer_schema_refuses_to_start_and_leaves_the_file_alone(short_tmp: Path) -> None:
    state = short_tmp / "state"
    state.mkdir()
    db = state / "agentd.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE from_the_future (x)")
    conn.execute("PRAGMA user_version = 42")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with AgentProcess(short_tmp, CONFIG.format(store="", for_ticks=1000)) as agent:
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
    log = agent.log()
    assert re.search(
        rf"ERROR +agentd: cannot start: {re.escape(str(db))} was written by a newer agentd "
        r"\(schema version 42; this agentd knows up to \d+\); refusing to use or modify it",
        log,
    ), log
    assert "Traceback" not in log
    assert db.read_bytes() == before


def test_store_disabled_runs_without_a_database(short_tmp: Path) -> None:
    config = CONFIG.format(store="[store]\nenabled = false", for_ticks=3)
    with AgentProcess(short_tmp, config) as agent:
        agent.wait_log(r"action alert: cpu is warm")  # policy memory works, in memory
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()
    assert "agentd.store" not in agent.log()
    assert not list((short_tmp / "state").glob("agentd.db*"))


def test_journal_rows_carry_the_boot_id_and_ids_continue_under_one_epoch(
    short_tmp: Path,
) -> None:
    db = short_tmp / "state" / "agentd.db"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    config = CONFIG.format(store="", for_ticks=100_000)
    epochs = []
    for _ in range(2):
        with AgentProcess(short_tmp, config) as agent:
            agent.wait_log(r"tick 3:")
            assert agent.stop() == 0
        conn = sqlite3.connect(db)
        try:
            epochs.append(conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone())
            count, top = conn.execute("SELECT count(*), max(id) FROM observations").fetchone()
            stamps = conn.execute(
                "SELECT DISTINCT boot_id, uptime IS NOT NULL, crc IS NOT NULL FROM observations"
            ).fetchall()
        finally:
            conn.close()
        assert count == top  # ids 1..max: the second run continued where the first stopped
        assert stamps == [(boot_id, 1, 1)]
    assert epochs[0] == epochs[1]
    assert len(epochs[0][0]) == 32
