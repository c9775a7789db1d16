"""The uplink as a plugin kind and a part of the daemon: the registry lists the ``mqtt`` uplink,
``check-config`` names a bad key in one line, a reload that changes ``[uplinks.fleet]``
restarts its engine (and one that does not leaves it alone) with nothing lost, a broker that
refuses the topic turns health ``degraded`` and the transport ``failing`` (journalled as an
event), and ``agentctl plugin`` never shows a secret."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec

from agentd.model import HEALTH_EXIT_CODES
from tests.uplink.broker import Collector, Mosquitto
from tests.uplink.helpers import NODE, PREFIX
from tests.uplink.test_daemon import arrived, config, ctl, event_kinds, ready, stream, uplink_json
from tests.utils import AgentProcess, wait_for

AGENTD = [sys.executable, "-m", "agentd"]


def agentd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTD, *args], capture_output=True, text=True, timeout=60, check=False)


def test_registry_lists_the_mqtt_uplink_and_its_schema() -> None:
    res = agentd("plugins")
    assert res.returncode == 0, res.stderr
    # the mqtt sensor and actuator (agentd/plugins/builtin/mqtt_device.py) share the name
    rows = [x.split()[:3] for x in res.stdout.splitlines() if x.startswith("mqtt ")]
    assert ["mqtt", "uplink", "builtin"] in rows
    schema = json.loads(agentd("schema").stdout)
    assert "uplinks" in schema["properties"]
    text = json.dumps(schema)
    for key in ("backlog_max_age", "end_to_end", "password_credential", "batch_rows"):
        assert key in text, key


def test_check_config_names_the_bad_key_in_one_line(tmp_path: Path) -> None:
    cases = {
        'url = "http://broker:1883"': "uplinks.fleet: url: scheme must be mqtt:// or mqtts://",
        'url = "mqtt://b"\nwindow = 0': "uplinks.fleet.window: expected an integer >= 1, got 0",
        'url = "mqtt://b"\nstreams = ["observations", "logs"]': "uplinks.fleet.streams[1]",
        'url = "mqtt://b"\nbrokr = 1': "uplinks.fleet.brokr: unknown key",
        'url = "mqtt://b"\nplugin = "kafka"': "unknown uplink plugin 'kafka' (known: mqtt)",
        'url = "mqtt://b"\npassword_file = "/etc/p"': "uplinks.fleet: a password needs a username",
    }
    for table, expected in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(f"[sensors.system]\n[uplinks.fleet]\n{table}\n")
        res = agentd("check-config", str(path))
        assert res.returncode == 1, (table, res.stdout)
        assert expected in res.stderr, (table, res.stderr)
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    path.write_text(
        '[store]\nenabled = false\n[sensors.system]\n[uplinks.fleet]\nurl = "mqtt://b"\n'
    )
    res = agentd("check-config", str(path))
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "uplinks.fleet: an uplink sends the journals, so it needs the store "
        "([store] enabled = true)"
    )
    path.write_text('[sensors.system]\n[uplinks.fleet]\nurl = "mqtts://broker.example:8883"\n')
    assert agentd("check-config", str(path)).returncode == 0


def test_reload_restarts_a_changed_uplink_and_loses_nothing(
    broker: Mosquitto, short_tmp: Path
) -> None:
    with (
        Collector(broker.port, f"{PREFIX}/{NODE}/+") as fleet,
        AgentProcess(short_tmp, config(broker.url), log_level="info") as agent,
    ):
        ready(agent)
        wait_for(lambda: uplink_json(agent)[0]["connected"], 20, what="connected")
        first = uplink_json(agent)[0]["since"]
        # the same [uplinks] section: the engine keeps running
        assert ctl(agent, "reload").returncode == 0
        assert uplink_json(agent)[0]["since"] == first
        assert "uplink 'fleet' stopped" not in agent.log()
        # a changed one: the old engine stops (offline first), a new one resumes the cursor
        assert agent.config_path is not None
        agent.config_path.write_text(config(broker.url, extra="batch_rows = 64"))
        res = ctl(agent, "reload")
        assert res.returncode == 0, res.stderr
        agent.wait_log(r"uplink 'fleet' stopped")
        wait_for(
            lambda: (u := uplink_json(agent)[0])["connected"] and u["since"] != first,
            20,
            what="the new engine connected",
        )
        acked = stream(uplink_json(agent)[0], "observations")["acked"]
        wait_for(
            lambda: stream(uplink_json(agent)[0], "observations")["acked"] > acked + 5,
            20,
            what="rows flowing after the restart",
        )
        assert agent.stop() == 0
        ids = _ids(agent.state_dir / "agentd.db")
        assert fleet.wait_for(lambda: set(arrived(fleet.snapshot(), "observations")) >= ids, 10)
    kinds = event_kinds(fleet.snapshot())
    assert kinds.count("agentd.reloaded") == 2
    # offline (clean) between the two engines' online statuses
    states = [(s["state"], s["clean"]) for s in fleet.decoded("status")]
    assert [st for st, _ in states[:3]] == ["online", "offline", "online"], states
    assert states[1] == ("offline", True), "the old engine's offline is a clean one"


def _ids(db: Path) -> set[int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM observations")}
    finally:
        conn.close()


def test_a_refused_topic_degrades_health_and_is_an_event(tmp_path: Path, short_tmp: Path) -> None:
    acl = f"topic write {PREFIX}/{NODE}/status\ntopic write {PREFIX}/{NODE}/events\ntopic read #\n"
    b = Mosquitto(tmp_path / "broker", acl=acl)
    b.start()
    try:
        with (
            Collector(b.port, f"{PREFIX}/{NODE}/+") as fleet,
            AgentProcess(short_tmp, config(b.url), log_level="info") as agent,
        ):
            ready(agent)

            def degraded() -> bool:
                res = ctl(agent, "health", "--json")
                return res.returncode == HEALTH_EXIT_CODES["degraded"] and any(
                    "uplink 'fleet' is degraded" in r for r in json.loads(res.stdout)["reasons"]
                )

            wait_for(degraded, 30, what="health degraded by the uplink")
            u = uplink_json(agent)[0]
            assert u["health"] == "degraded"
            assert "0x87" in (u["reason"] or ""), u
            obs = stream(u, "observations")
            assert obs["acked"] == 0
            assert obs["delivered"] == 0
            assert obs["refused"] >= 1
            # the backlog grows: nothing is counted as delivered (figures refresh every 2 s)
            wait_for(
                lambda: stream(uplink_json(agent)[0], "observations")["backlog"] > 0,
                10,
                what="a backlog",
            )
            # the transport plugin is failing (agentctl plugins), once, with the reason
            wait_for(
                lambda: any(
                    p["kind"] == "uplink" and p["state"] == "failing"
                    for p in json.loads(ctl(agent, "plugins", "--json").stdout)
                ),
                10,
                what="the uplink plugin failing",
            )
            status = ctl(agent, "status").stdout
            assert "fleet connected, degraded" in status

            # the events stream (allowed by the ACL) carries the failing transport, and why
            def failing() -> list[dict[str, object]]:
                return [
                    row[4]["data"]
                    for topic, payload, _ in fleet.snapshot()
                    if topic.endswith("/events")
                    for row in msgspec.msgpack.decode(payload).get("rows", [])
                    if row[4]["kind"] == "plugin.failing"
                ]

            assert fleet.wait_for(failing, 20), event_kinds(fleet.snapshot())
            event = failing()[0]
            assert event["kind"] == "uplink"
            assert event["name"] == "fleet"
            assert "0x87" in str(event["error"])
            assert agent.stop() == 0
        assert arrived(fleet.snapshot(), "observations") == []
    finally:
        b.stop()


def test_agentctl_plugin_never_shows_a_secret(broker: Mosquitto, short_tmp: Path) -> None:
    secret = "s3cr3t-Bearer-token-0042"
    (short_tmp / "pw").write_text("hunter2-broker-password\n")
    (short_tmp / "pw").chmod(0o600)
    extra = f'username = "gw"\npassword_file = "{short_tmp / "pw"}"\n'
    text = (
        config(broker.url, extra=extra)
        + f'[actuators.hook]\nplugin = "webhook"\nurl = "http://127.0.0.1:9/h"\n'
        f'headers = {{ Authorization = "{secret}" }}\n'
    )
    with AgentProcess(short_tmp, text, log_level="debug") as agent:
        ready(agent)
        hook = ctl(agent, "plugin", "hook", "--json")
        assert hook.returncode == 0, hook.stderr
        assert json.loads(hook.stdout)["config"]["headers"] == {"Authorization": "<redacted>"}
        fleet = ctl(agent, "plugin", "fleet", "--json")
        assert fleet.returncode == 0, fleet.stderr
        detail = json.loads(fleet.stdout)
        assert detail["kind"] == "uplink"
        assert detail["config"]["url"] == broker.url
        for out in (hook.stdout, fleet.stdout, ctl(agent, "plugin", "hook").stdout):
            assert secret not in out
            assert "hunter2" not in out
        assert agent.stop() == 0
        log = agent.log()
    assert secret not in log
    assert "hunter2" not in log
    assert msgspec.json.decode(fleet.stdout)["config"]["password_file"] == str(short_tmp / "pw")


def test_a_second_sigterm_cuts_flush_uplink_short(tmp_path: Path, short_tmp: Path) -> None:
    import os
    import signal
    import time

    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        with AgentProcess(short_tmp, config(b.url), log_level="info") as agent:
            ready(agent)
            wait_for(lambda: uplink_json(agent)[0]["connected"], 20, what="connected")
            assert b.proc is not None
            os.kill(b.proc.pid, signal.SIGSTOP)  # it keeps the link and never answers
            try:
                time.sleep(0.5)
                agent.signal(signal.SIGTERM)
                agent.wait_log(r"stopping")
                time.sleep(1.0)  # inside flush_uplink, waiting for PUBACKs that never come
                t0 = time.monotonic()
                agent.signal(signal.SIGTERM)
                assert agent.proc is not None
                assert agent.proc.wait(10) == 1
                assert time.monotonic() - t0 < 5.0
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            log = agent.log()
        assert "received SIGTERM again: forcing exit" in log
        assert "flush_uplink: cut short by a second signal" in log
        assert "Traceback" not in log
    finally:
        b.stop()


def test_an_uplink_recovers_when_the_broker_allows_it_again(
    tmp_path: Path, short_tmp: Path
) -> None:
    import os
    import signal

    deny = f"topic write {PREFIX}/{NODE}/status\ntopic write {PREFIX}/{NODE}/events\ntopic read #\n"
    b = Mosquitto(tmp_path / "broker", acl=deny)
    b.start()
    try:
        with (
            Collector(b.port, f"{PREFIX}/{NODE}/+") as fleet,
            AgentProcess(short_tmp, config(b.url), log_level="info") as agent,
        ):
            ready(agent)
            wait_for(lambda: uplink_json(agent)[0]["health"] == "degraded", 30, what="degraded")
            # the transport's state follows the engine's health (sampled every 5 s)
            wait_for(
                lambda: any(
                    p["state"] == "failing"
                    for p in json.loads(ctl(agent, "plugins", "--json").stdout)
                ),
                15,
                what="the uplink plugin failing",
            )
            # the operator fixes the ACL; mosquitto re-reads it on SIGHUP
            (b.workdir / "acl").write_text(f"topic write {PREFIX}/{NODE}/#\ntopic read #\n")
            assert b.proc is not None
            os.kill(b.proc.pid, signal.SIGHUP)
            wait_for(
                lambda: (
                    (u := uplink_json(agent)[0])["health"] == "ok"
                    and stream(u, "observations")["acked"] > 0
                ),
                30,
                what="delivering again",
            )
            assert ctl(agent, "health").returncode == 0
            wait_for(
                lambda: all(
                    p["state"] == "ok" for p in json.loads(ctl(agent, "plugins", "--json").stdout)
                ),
                15,
                what="the uplink plugin ok again",
            )
            assert agent.stop() == 0
            ids = _ids(agent.state_dir / "agentd.db")
            assert fleet.wait_for(lambda: set(arrived(fleet.snapshot(), "observations")) >= ids, 10)
        kinds = event_kinds(fleet.snapshot())
        assert kinds.index("plugin.failing") < kinds.index("plugin.recovered")
    finally:
        b.stop()
