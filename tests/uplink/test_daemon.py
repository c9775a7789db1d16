"""The uplink inside the daemon, against a real mosquitto: ``agentd run`` with an
``[uplinks.fleet]`` table delivers every observation id once and in order, shows its state in
`agentctl uplink` / `agentctl status`, journals its own state changes into the events stream,
and a graceful SIGTERM publishes the retained offline status before it exits."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import msgspec

from tests.control.helpers import ctl as ctl_at
from tests.uplink.broker import Collector, Mosquitto
from tests.uplink.helpers import NODE, PREFIX, completeness
from tests.utils import AgentProcess, wait_for

CONFIG = """
[agent]
interval = {interval}
[log]
heartbeat = 0
[store]
synchronous = "normal"
flush_interval = 0.05
[health]
lateness_p99 = 5.0
[sensors.system]
[uplinks.fleet]
url = "{url}"
node = "{node}"
batch_interval = 0.1
reconnect_min = 0.05
reconnect_max = 0.5
{extra}
"""


def config(url: str, interval: float = 0.1, extra: str = "") -> str:
    return CONFIG.format(url=url, node=NODE, interval=interval, extra=extra)


def ctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return ctl_at(agent.runtime_dir / "agentd.sock", *args)


def ready(agent: AgentProcess) -> None:
    agent.wait_log(r"agentd \S+ started")
    wait_for(lambda: ctl(agent, "ping").returncode == 0, 15, what="the control socket")


def uplink_json(agent: AgentProcess) -> list[dict[str, Any]]:
    res = ctl(agent, "uplink", "--json")
    assert res.returncode == 0, res.stderr
    out: list[dict[str, Any]] = json.loads(res.stdout)
    return out


def stream(state: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in state["streams"] if s["stream"] == name)
    return found


def arrived(messages: list[tuple[str, bytes, bool]], name: str) -> list[int]:
    """The row ids of ``name`` in the order their batches arrived."""
    out: list[int] = []
    for topic, payload, _ in messages:
        if topic.endswith("/" + name):
            env = msgspec.msgpack.decode(payload)
            if env["kind"] == "rows":
                out += [row[0] for row in env["rows"]]
    return out


def event_kinds(messages: list[tuple[str, bytes, bool]]) -> list[str]:
    kinds = []
    for topic, payload, _ in messages:
        if topic.endswith("/events"):
            env = msgspec.msgpack.decode(payload)
            kinds += [row[4]["kind"] for row in env.get("rows", [])]
    return kinds


def committed_ids(db: Path, table: str) -> list[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return [r[0] for r in c.execute(f"SELECT id FROM {table} ORDER BY id")]


def test_daemon_delivers_every_observation_once_in_order(
    broker: Mosquitto, short_tmp: Path
) -> None:
    with (
        Collector(broker.port, f"{PREFIX}/{NODE}/+") as fleet,
        AgentProcess(short_tmp, config(broker.url), log_level="info") as agent,
    ):
        ready(agent)
        # connected, and rows flowing
        wait_for(
            lambda: (
                (u := uplink_json(agent))
                and u[0]["connected"]
                and stream(u[0], "observations")["acked"] >= 20
            ),
            30,
            what="20 observations acknowledged",
        )
        state = uplink_json(agent)[0]
        assert state["name"] == "fleet"
        assert state["node"] == NODE
        assert state["health"] == "ok"
        assert state["phase"] == "connected"
        obs = stream(state, "observations")
        assert {
            "backlog",
            "backlog_bytes",
            "oldest_age",
            "in_flight",
            "duplicates",
            "gap_rows",
        } <= set(obs)
        assert obs["head"] >= obs["acked"] >= 20
        table = ctl(agent, "uplink")
        assert table.returncode == 0, table.stderr
        assert "fleet: connected since" in table.stdout
        assert "BACKLOG" in table.stdout
        assert "observations" in table.stdout
        one = ctl(agent, "uplink", "fleet", "--json")
        assert [u["name"] for u in json.loads(one.stdout)] == ["fleet"]
        nope = ctl(agent, "uplink", "nope")
        assert nope.returncode == 1
        assert "no uplink named 'nope' (running: fleet)" in nope.stderr
        status = ctl(agent, "status")
        assert "Uplinks: fleet connected, backlog" in status.stdout
        health = ctl(agent, "health", "--json")
        assert json.loads(health.stdout)["status"] == "ok", health.stdout
        metrics = ctl(agent, "metrics", "--json")
        names = {m["name"] for m in json.loads(metrics.stdout)}
        assert {
            "agentd.uplink.connected",
            "agentd.uplink.backlog.rows",
            "agentd.uplink.delivered",
        } <= names
        assert agent.stop() == 0
        log = agent.log()
        db = agent.state_dir / "agentd.db"
        ids = committed_ids(db, "observations")
        events = committed_ids(db, "events")
        # the offline status arrives before the daemon has exited
        assert fleet.wait_for(
            lambda: any(s["state"] == "offline" for s in fleet.decoded("status")), 10
        )
    assert "Traceback" not in log
    messages = fleet.snapshot()
    assert len(ids) >= 20
    assert arrived(messages, "observations") == ids, "every committed id, once, in order"
    # the events stream: agentd's own start and stop went out, and were all delivered
    assert arrived(messages, "events") == events
    kinds = event_kinds(messages)
    assert "agentd.started" in kinds
    assert "agentd.stopping" in kinds
    book = completeness(messages)
    assert book.ledger(NODE, "observations").duplicates == 0
    statuses = fleet.decoded("status")
    assert statuses[0]["state"] == "online"
    last = statuses[-1]
    assert last["state"] == "offline"
    assert last["clean"] is True


def test_sigterm_publishes_offline_before_exit(broker: Mosquitto, short_tmp: Path) -> None:
    with (
        Collector(broker.port, f"{PREFIX}/{NODE}/status") as fleet,
        AgentProcess(short_tmp, config(broker.url), log_level="info") as agent,
    ):
        ready(agent)
        assert fleet.wait_for(lambda: any(s["state"] == "online" for s in fleet.decoded("status")))
        agent.signal(signal.SIGTERM)
        assert agent.proc is not None
        rc = agent.proc.wait(20)
        assert rc == 0
        # clean: published by the engine in flush_uplink, not the broker's will for a lost link
        assert any(s["state"] == "offline" and s["clean"] for s in fleet.decoded("status")), (
            fleet.decoded("status")
        )
        log = agent.log()
    assert "flush_uplink: still running" not in log
    # offline, then the drain, then the rest of shutdown
    assert log.index("uplink 'fleet' stopped") < log.rindex("stopped")
    # a fresh subscriber gets the retained offline status
    with Collector(broker.port, f"{PREFIX}/{NODE}/status", client_id="late") as late:
        assert late.wait_for(lambda: late.decoded("status"), 10)
        assert late.decoded("status")[-1]["state"] == "offline"
        assert msgspec.msgpack.decode(late.snapshot()[-1][1])["clean"] is True
