"""A real agentd with an `mqtt` sensor (Zigbee2MQTT-style), a threshold policy and an `mqtt`
actuator (a Shelly-style relay) on a real mosquitto: readings in ``agentctl tick``; malformed
JSON, a huge payload, a flood and a broker restart each one line in the log while the loop
keeps time; the sensor recovers; the policy switches the relay through the broker."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control.helpers import Agent
from tests.uplink.broker import Collector, Mosquitto
from tests.utils import wait_for

CONFIG = """
[agent]
interval = 0.1
[log]
heartbeat = 0
[store]
enabled = false
[sensors.z2m]
plugin = "mqtt"
url = "{url}"
topics = ["zigbee2mqtt/+"]
fields = ["temperature", "humidity"]
max_rate = 300
reconnect_max = 1.0
degraded_after = 3
[policies.heat]
plugin = "threshold"
metric = "z2m.livingroom.temperature"
above = 25.0
actuator = "relay"
action = "on"
clear_action = "off"
[actuators.relay]
plugin = "mqtt"
url = "{url}"
timeout = 5
reconnect_max = 1.0
[actuators.relay.actions.on]
topic = "shellies/relay-1/relay/0/command"
payload = "on"
[actuators.relay.actions.off]
topic = "shellies/relay-1/relay/0/command"
payload = "off"
"""


@pytest.fixture
def mosquitto(short_tmp: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(short_tmp / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def pub(b: Mosquitto, topic: str, payload: bytes) -> None:
    subprocess.run(
        ["mosquitto_pub", "-p", str(b.port), "-t", topic, "-s"],
        input=payload,
        check=True,
        timeout=30,
    )


def readings(agent: Agent) -> dict[str, str]:
    """``agentctl tick``'s table as metric -> value text (the z2m sensor's rows)."""
    out = agent.ctl("tick")
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "z2m":
            rows[parts[1]] = " ".join(parts[2:])
    return rows


def count(log: str, pattern: str) -> int:
    return len(re.findall(pattern, log))


@pytest.mark.slow
def test_devices_on_a_broker_under_a_real_daemon(short_tmp: Path, mosquitto: Mosquitto) -> None:
    with (
        Collector(mosquitto.port, "shellies/#", client_id="relay-1") as relay,
        Agent(short_tmp, CONFIG.format(url=mosquitto.url)) as agent,
    ):
        agent.ready()
        pub(mosquitto, "zigbee2mqtt/livingroom", b'{"temperature": 21.5, "humidity": 40}')
        wait_for(lambda: readings(agent).get("livingroom.temperature") == "21.5", 15)
        assert readings(agent)["livingroom.humidity"] == "40"

        # the policy drives the relay through the broker, and back
        pub(mosquitto, "zigbee2mqtt/livingroom", b'{"temperature": 26.0}')
        wait_for(lambda: [p for _, p, _ in relay.snapshot()] == [b"on"], 15)
        pub(mosquitto, "zigbee2mqtt/livingroom", b'{"temperature": 20.0}')
        wait_for(lambda: [p for _, p, _ in relay.snapshot()] == [b"on", b"off"], 15)
        assert relay.snapshot()[0][0] == "shellies/relay-1/relay/0/command"

        # bad input: one line each, counted, nothing else changes
        for _ in range(3):
            pub(mosquitto, "zigbee2mqtt/broken", b"{not json")
            pub(mosquitto, "zigbee2mqtt/huge", b"x" * 200_000)
        flood = subprocess.Popen(
            ["mosquitto_pub", "-p", str(mosquitto.port), "-t", "zigbee2mqtt/flood", "-l"],
            stdin=subprocess.PIPE,
        )
        flood.communicate(b"".join(b"%d\n" % i for i in range(20_000)), 60)
        wait_for(lambda: readings(agent).get("_mqtt.received", "0") == "20009", 30)
        rows = readings(agent)
        assert rows["_mqtt.dropped.malformed"] == "3"
        assert rows["_mqtt.dropped.oversize"] == "3"
        assert int(rows["_mqtt.dropped.rate"]) > 0
        status = agent.call("status")
        # the loop kept time through the flood (the lateness it reports, generous for a
        # loaded machine: under one interval; bench/mqtt_sensor.py has the real figure)
        assert status["loop"]["lateness_p99"] < 0.1, status["loop"]
        plugins = {p["name"]: p for p in status["plugins"]}
        assert plugins["z2m"]["state"] == "ok"

        # the broker restarts: the sensor is failing, then degraded, then recovers
        mosquitto.stop(signal.SIGTERM)
        error = wait_for(lambda: readings(agent).get("(error)"), 15)
        assert f"127.0.0.1:{mosquitto.port}: not connected" in error
        time.sleep(1.0)
        mosquitto.start()
        wait_for(lambda: agent.call("status")["plugins"][0]["state"] == "ok", 30)
        pub(mosquitto, "zigbee2mqtt/livingroom", b'{"temperature": 22.5}')
        wait_for(lambda: readings(agent).get("livingroom.temperature") == "22.5", 15)
        agent.wait_log(r"connected again", count=2)
        assert agent.stop(timeout=15) == 0
    log = agent.log()
    assert "Traceback" not in log
    assert count(log, r"_mqtt\.dropped\.malformed") == 1
    assert count(log, r"_mqtt\.dropped\.oversize") == 1
    assert count(log, r"_mqtt\.dropped\.rate") == 1
    # the sensor's link and the actuator's: one "lost" line and one "back" line each
    for role in ("sensor", "actuator"):
        assert count(log, rf"mqtt {role} [\d.:]+: connection lost; reconnecting") == 1
        assert count(log, rf"mqtt {role} [\d.:]+: connected again") == 1
        assert count(log, rf"mqtt {role} [\d.:]+: .*; retrying") <= 2  # once per distinct error
    assert count(log, r"sensor 'z2m' is failing") == 1
    assert count(log, r"sensor 'z2m' recovered") == 1
