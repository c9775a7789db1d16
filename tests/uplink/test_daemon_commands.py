"""Fleet commands in ``agentd run`` against a real mosquitto: act over MQTT 5, once only even
across a SIGKILL between the claim and the reply, and ``config`` with its health-gated
rollback, commit to disk and restart."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from tests.uplink.broker import Collector, Mosquitto
from tests.uplink.fleetside import Operator
from tests.uplink.helpers import NODE, PREFIX
from tests.uplink.test_daemon import ctl, ready
from tests.utils import AgentProcess, wait_for

PY = sys.executable
WRITE = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"

CONFIG = """
[agent]
interval = 0.1
[log]
heartbeat = 0
[store]
synchronous = "normal"
flush_interval = 0.05
[health]
lateness_p99 = 5.0
[commands]
allow = ["act:valve.*", "status", "health", "uplink", "config", "replay"]
[sensors.system]
{sensors}
[actuators.valve]
plugin = "exec"
param_pattern = "[0-9a-z-]{{1,32}}"
timeout = 90
[actuators.valve.commands]
open = ["{py}", "-c", "{write}", "{runs}", "{{n}}"]
hang = ["{py}", "-c", "{write}; import time; time.sleep(60)", "{runs}", "{{n}}"]
[uplinks.fleet]
url = "{url}"
node = "{node}"
{mqtt}
batch_interval = 0.1
reconnect_min = 0.05
reconnect_max = 0.5
"""

#: agentd ("gw") may publish its own topics and replies under ops/ok/, not under ops/denied/
ACL = """topic readwrite #

user gw
topic readwrite agentd/#
topic write ops/replies/#
"""


def config(url: str, runs: Path, sensors: str = "", mqtt: str = "") -> str:
    return CONFIG.format(
        url=url, node=NODE, py=PY, runs=runs, sensors=sensors, mqtt=mqtt, write=WRITE
    )


def act(cid: str, n: str, action: str = "open") -> dict[str, Any]:
    return {
        "id": cid,
        "actuator": "valve",
        "action": action,
        "params": {"n": n},
        "deadline": time.time() + 60,
    }


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def events(db: Path, prefix: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT data FROM events ORDER BY id").fetchall()
    out = [msgspec.msgpack.decode(r[0]) for r in rows]
    return [e for e in out if str(e.get("kind", "")).startswith(prefix)]


def test_act_in_the_daemon_runs_once_and_status_shows_the_config(
    broker: Mosquitto, short_tmp: Path
) -> None:
    runs = short_tmp / "runs"
    with (
        AgentProcess(short_tmp, config(broker.url, runs), log_level="info") as agent,
        Operator(broker.port, PREFIX, NODE) as op,
    ):
        ready(agent)
        wait_for(lambda: "commands: listening" in agent.log(), 15, what="the command channel")
        time.sleep(0.5)  # the SUBACK
        op.publish("act", act("d-1", "x"), correlation=b"\x00corr")
        topic, reply, corr = op.reply()
        assert topic == op.reply_topic
        assert reply["ok"] is True, reply
        assert corr == b"\x00corr"
        op.publish("act", act("d-1", "x"))
        _, again, _ = op.reply()
        assert again["duplicate"] is True
        op.publish("status", {"id": "st-1", "deadline": time.time() + 30})
        _, status, _ = op.reply()
        assert status["ok"] is True, status
        assert status["result"]["agent"]["pid"] == agent.proc.pid  # type: ignore[union-attr]
        assert status["result"]["config"] == {
            "version": None,
            "probation": False,
            "until": None,
            "previous": None,
        }
        # a refusal leaves the daemon ticking
        ticks = status["result"]["agent"]["loop"]["ticks"]
        op.publish("act", {"id": "bad", "actuator": "valve"})
        _, bad, _ = op.reply()
        assert bad["error"]["code"] == "malformed"
        op.publish("health", {"id": "h-1", "deadline": time.time() + 30})
        _, health, _ = op.reply()
        assert health["ok"] is True
        op.publish("status", {"id": "st-2", "deadline": time.time() + 30})
        assert op.reply()[1]["result"]["agent"]["loop"]["ticks"] > ticks
        res = ctl(agent, "commands")
        assert res.returncode == 0, res.stderr
        assert "d-1" in res.stdout
        assert "malformed" in res.stdout
    assert lines(runs) == ["x"]


def test_sigkill_between_claim_and_reply_does_not_run_again(
    tmp_path: Path, short_tmp: Path
) -> None:
    broker = Mosquitto(tmp_path / "broker", acl=ACL)
    broker.start()
    runs = short_tmp / "runs"
    cfg = config(broker.url, runs, mqtt='username = "gw"')
    try:
        with Operator(broker.port, PREFIX, NODE) as op:
            with AgentProcess(short_tmp, cfg, log_level="info") as agent:
                ready(agent)
                wait_for(lambda: "commands: listening" in agent.log(), 15, what="commands")
                time.sleep(0.5)
                # 1: it ran and its outcome is journaled, but the reply is refused (ACL)
                op.publish("act", act("k-1", "one"), response_topic="ops/denied/k-1")
                wait_for(
                    lambda: "k-1" in agent.log() and "reply" in agent.log(),
                    20,
                    what="the refused reply",
                )
                # 2: claimed and running when agentd dies
                op.publish("act", act("k-2", "two", "hang"))
                wait_for(lambda: lines(runs) == ["one", "two"], 20, what="both runs")
                assert agent.proc is not None
                agent.proc.kill()
                agent.proc.wait(10)
            with AgentProcess(short_tmp, cfg, log_level="info") as agent:
                ready(agent)
                wait_for(lambda: "commands: listening" in agent.log(), 15, what="commands")
                time.sleep(0.5)
                op.publish("act", act("k-1", "one"))
                _, first, _ = op.reply()
                op.publish("act", act("k-2", "two", "hang"))
                _, second, _ = op.reply()
            assert first["ok"] is True, first
            assert first["duplicate"] is True
            assert first["result"]["status"] == "ok"
            assert second["ok"] is False
            assert second["error"]["code"] == "in_doubt", second
            assert second["duplicate"] is True
        assert lines(runs) == ["one", "two"]
    finally:
        broker.stop()


def test_config_rollout_refused_rolled_back_and_committed(
    broker: Mosquitto, short_tmp: Path
) -> None:
    runs = short_tmp / "runs"
    original = config(broker.url, runs)
    broken = original.replace("interval = 0.1", "interval = -1")
    # it starts (the file is there) but every read fails: not a number
    probe = short_tmp / "probe"
    probe.write_text("no number here\n")
    failing = original.replace(
        "[sensors.system]\n", f'[sensors.probe]\nplugin = "file"\npath = "{probe}"\n'
    )
    good = original.replace("interval = 0.1", "interval = 0.2")
    with AgentProcess(short_tmp, original, log_level="info") as agent:
        path = agent.config_path
        assert path is not None
        with Operator(broker.port, PREFIX, NODE) as op:
            ready(agent)
            wait_for(lambda: "commands: listening" in agent.log(), 15, what="commands")
            time.sleep(0.5)

            def push(cid: str, text: str, version: str, probation: float) -> dict[str, Any]:
                op.publish(
                    "config",
                    {
                        "id": cid,
                        "config": text,
                        "version": version,
                        "probation": probation,
                        "deadline": time.time() + 30,
                    },
                )
                return op.final_reply(60)[1]

            refused = push("cfg-1", broken, "v-broken", 1)
            assert refused["error"]["code"] == "invalid_config", refused
            assert any("interval" in d for d in refused["error"]["details"])
            assert path.read_text() == original

            started = time.monotonic()
            rolled = push("cfg-2", failing, "v-failing", 20)
            assert time.monotonic() - started < 20
            assert rolled["error"]["code"] == "rolled_back", rolled
            assert "failing" in rolled["error"]["message"]
            assert path.read_text() == original
            res = ctl(agent, "status", "--json")
            assert '"probe"' not in res.stdout  # the old config runs again

            committed = push("cfg-3", good, "v-good", 0.5)
            assert committed["ok"] is True, committed
            assert committed["result"]["state"] == "committed"
            assert path.read_text() == good
            assert (path.parent / (path.name + ".previous")).read_text() == original
            hist = ctl(agent, "config", "history")
            assert hist.returncode == 0, hist.stderr
            for word in ("v-broken", "refused", "v-failing", "rolled_back", "v-good", "committed"):
                assert word in hist.stdout
        kinds = [e["kind"] for e in events(agent.state_dir / "agentd.db", "config.")]
        assert "config.rolled_back" in kinds
        assert kinds[-1] == "config.committed"
        agent.stop()
    with (
        AgentProcess(short_tmp, None, "--config", str(path), log_level="info") as agent,
        Operator(broker.port, PREFIX, NODE) as op,
        Collector(broker.port, f"{PREFIX}/{NODE}/status", client_id="status-watch") as seen,
    ):
        ready(agent)
        wait_for(lambda: "commands: listening" in agent.log(), 15, what="commands")
        time.sleep(0.5)
        op.publish("status", {"id": "st-9", "deadline": time.time() + 30})
        _, status, _ = op.reply()
        assert status["result"]["config"]["version"] == "v-good", status
        assert status["result"]["agent"]["config"] == str(path)

        # the retained birth message says which version runs, and that it is not on probation
        def birth() -> dict[str, Any] | None:
            online = [m for m in seen.decoded("status") if m["state"] == "online"]
            return online[-1] if online else None

        assert seen.wait_for(lambda: birth() is not None, 15)
        born = birth()
        assert born is not None
        assert born["config"]["version"] == "v-good"
        assert born["config"]["probation"] is False


def test_a_reload_during_probation_abandons_the_candidate(
    broker: Mosquitto, short_tmp: Path
) -> None:
    runs = short_tmp / "runs"
    original = config(broker.url, runs)
    candidate = original.replace("interval = 0.1", "interval = 0.3")
    with (
        AgentProcess(short_tmp, original, log_level="info") as agent,
        Operator(broker.port, PREFIX, NODE) as op,
    ):
        path = agent.config_path
        assert path is not None
        ready(agent)
        wait_for(lambda: "commands: listening" in agent.log(), 15, what="commands")
        time.sleep(0.5)
        body = {
            "id": "cfg-h",
            "config": candidate,
            "version": "v-h",
            "probation": 60,
            "deadline": time.time() + 30,
        }
        op.publish("config", body)
        _, interim, _ = op.reply(30)
        assert interim["final"] is False, interim
        assert interim["result"]["state"] == "probation"
        op.publish("status", {"id": "st-h", "deadline": time.time() + 30})
        _, status, _ = op.reply()
        assert status["result"]["config"]["probation"] is True
        assert status["result"]["config"]["version"] == "v-h"
        assert ctl(agent, "reload").returncode == 0  # the SIGHUP path: the file on disk
        _, final, _ = op.reply(30)
        assert final["error"]["code"] == "rolled_back", final
        assert "another reload" in final["error"]["message"]
        assert path.read_text() == original
        hist = ctl(agent, "config", "history", "--json")
        assert [h["outcome"] for h in json.loads(hist.stdout)] == [
            "probation",
            "abandoned",
        ]
