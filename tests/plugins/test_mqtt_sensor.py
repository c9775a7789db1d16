"""The `mqtt` sensor against a real mosquitto on 127.0.0.1, with ``mosquitto_pub`` as the
device: readings, drops (each counted, one log line per kind), stale readings, retained
messages, a broker restart."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentd.devices.mqtt import MqttSensor
from agentd.errors import ConfigError
from agentd.plugins.builtin.mqtt_device import MqttSensorConfig
from tests.uplink.broker import Certs, Mosquitto, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def pub(b: Mosquitto, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
    """A device publishing once (a real client process)."""
    args = ["mosquitto_pub", "-p", str(b.port), "-t", topic, "-q", "1"]
    if retain:
        args.append("-r")
    if isinstance(payload, bytes) and len(payload) > 4096:
        args += ["-s"]
        subprocess.run(args, input=payload, check=True, timeout=30)
        return
    subprocess.run([*args, "-m", payload], check=True, timeout=30)


def config(b: Mosquitto, **kw: Any) -> MqttSensorConfig:
    keys = {"url": b.url, "topics": ["zigbee2mqtt/+"], "fields": ["temperature", "state"]}
    return msgspec.convert({**keys, **kw}, MqttSensorConfig)


@pytest.fixture
async def started(
    mosquitto: Mosquitto, request: pytest.FixtureRequest
) -> AsyncIterator[MqttSensor]:
    kw = getattr(request, "param", {})
    sensor = MqttSensor(config(mosquitto, **kw))
    await sensor.start()
    assert sensor.link.problem() is None
    try:
        yield sensor
    finally:
        await sensor.stop()


async def until(sensor: MqttSensor, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            readings = await sensor.perceive()
        except ConnectionError:
            readings = {}
        if check(readings):
            return readings
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout}s: {readings}")
        await asyncio.sleep(0.05)


def drop_lines(caplog: pytest.LogCaptureFixture, kind: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"_mqtt.dropped.{kind}" in r.getMessage()]


async def test_readings_from_json_numbers_and_on_off(
    mosquitto: Mosquitto, started: MqttSensor
) -> None:
    pub(mosquitto, "zigbee2mqtt/kitchen", '{"temperature": 21.5, "state": "ON", "linkquality": 9}')
    pub(mosquitto, "zigbee2mqtt/hall", "19")
    pub(mosquitto, "zigbee2mqtt/door", "OFF")
    pub(mosquitto, "elsewhere/x", "1")
    r = await until(started, lambda r: r.get("_mqtt.accepted") == 3)
    assert r["kitchen.temperature"] == 21.5
    assert r["kitchen.state"] is True
    assert "kitchen.linkquality" not in r  # not a configured field
    assert r["hall.value"] == 19
    assert r["door.value"] is False
    assert r["_mqtt.received"] == 3  # the broker never sent what we did not subscribe to
    # the latest value per metric
    pub(mosquitto, "zigbee2mqtt/kitchen", '{"temperature": 22.0}')
    r = await until(started, lambda r: r.get("kitchen.temperature") == 22.0)
    assert r["kitchen.state"] is True


async def test_malformed_and_huge_payloads_are_dropped_counted_and_logged_once(
    mosquitto: Mosquitto, started: MqttSensor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agentd.devices.mqtt")
    for _ in range(3):
        pub(mosquitto, "zigbee2mqtt/bad", "{not json")
        pub(mosquitto, "zigbee2mqtt/big", b'{"temperature": 1, "x": "' + b"y" * 200_000 + b'"}')
    pub(mosquitto, "zigbee2mqtt/good", "1")
    r = await until(started, lambda r: r.get("good.value") == 1)
    assert r["_mqtt.dropped.malformed"] == 3
    assert r["_mqtt.dropped.oversize"] == 3
    assert "bad.temperature" not in r
    assert "big.temperature" not in r
    [malformed] = drop_lines(caplog, "malformed")
    assert "'zigbee2mqtt/bad'" in malformed
    assert "malformed JSON" in malformed
    [huge] = drop_lines(caplog, "oversize")
    assert "over max_payload (65536)" in huge
    assert all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("started", [{"max_age": 0.5}], indirect=True)
async def test_stale_readings_are_dropped_after_max_age_and_counted_once(
    mosquitto: Mosquitto, started: MqttSensor
) -> None:
    pub(mosquitto, "zigbee2mqtt/kitchen", '{"temperature": 20}')
    r = await until(started, lambda r: "kitchen.temperature" in r)
    assert r["_mqtt.stale"] == 0
    await asyncio.sleep(0.7)
    r = await started.perceive()
    assert "kitchen.temperature" not in r
    assert r["_mqtt.stale"] == 1
    assert (await started.perceive())["_mqtt.stale"] == 1  # counted once, not every tick
    pub(mosquitto, "zigbee2mqtt/kitchen", '{"temperature": 21}')
    r = await until(started, lambda r: r.get("kitchen.temperature") == 21)
    assert r["_mqtt.metrics"] == 1


@pytest.mark.parametrize("started", [{"max_metrics": 2}], indirect=True)
async def test_a_full_table_drops_new_metrics_and_stale_ones_make_room(
    mosquitto: Mosquitto, started: MqttSensor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agentd.devices.mqtt")
    for device in ("a", "b", "c", "d"):
        pub(mosquitto, f"zigbee2mqtt/{device}", "1")
    r = await until(started, lambda r: r.get("_mqtt.received") == 4)
    assert sorted(k for k in r if not k.startswith("_")) == ["a.value", "b.value"]
    assert r["_mqtt.dropped.table_full"] == 2
    assert len(drop_lines(caplog, "table_full")) == 1
    # a stale reading gives its place to a new metric
    started.table["a.value"] = (1, time.monotonic() - 7200)
    await started.perceive()
    pub(mosquitto, "zigbee2mqtt/e", "5")
    r = await until(started, lambda r: r.get("e.value") == 5)
    assert "a.value" not in r


async def test_retained_values_are_accepted_but_a_resent_copy_keeps_its_age(
    mosquitto: Mosquitto,
) -> None:
    pub(mosquitto, "zigbee2mqtt/plug", '{"state": "OFF"}', retain=True)
    sensor = MqttSensor(config(mosquitto, max_age=1.0))
    await sensor.start()
    try:
        r = await until(sensor, lambda r: "plug.state" in r)
        assert r["plug.state"] is False
        first = sensor.table["plug.state"][1]
        # a reconnect delivers the retained copy again: same value, the age it had
        mosquitto.stop()
        mosquitto.start()
        assert await sensor.link.wait_up(15)
        await until(sensor, lambda r: r.get("_mqtt.received") == 2)
        assert sensor.table["plug.state"][1] == first
    finally:
        await sensor.stop()


@pytest.mark.parametrize("started", [{"retained": "ignore"}], indirect=True)
async def test_retained_messages_can_be_ignored(mosquitto: Mosquitto, started: MqttSensor) -> None:
    pub(mosquitto, "zigbee2mqtt/plug", "1", retain=True)
    await started.stop()
    await started.start()
    r = await until(started, lambda r: r.get("_mqtt.dropped.retained") == 1)
    assert "plug.value" not in r
    pub(mosquitto, "zigbee2mqtt/plug", "2")  # live: taken
    await until(started, lambda r: r.get("plug.value") == 2)


@pytest.mark.parametrize("started", [{"max_rate": 200}], indirect=True)
async def test_a_flood_is_cut_at_max_rate_and_the_loop_keeps_time(
    mosquitto: Mosquitto, started: MqttSensor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agentd.devices.mqtt")
    flood = subprocess.Popen(
        ["mosquitto_pub", "-p", str(mosquitto.port), "-t", "zigbee2mqtt/flood", "-l"],
        stdin=subprocess.PIPE,
    )
    assert flood.stdin is not None
    lateness: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for _ in range(30):
            due += 0.05
            await asyncio.sleep(max(0.0, due - loop.time()))
            lateness.append(loop.time() - due)

    tick = asyncio.create_task(ticker())
    lines = b"".join(b"%d\n" % i for i in range(20_000))
    await asyncio.to_thread(flood.communicate, lines, 60)
    await tick
    r = await until(started, lambda r: r.get("_mqtt.received") == 20_000, timeout=30)
    assert r["_mqtt.dropped.rate"] > 0
    assert r["_mqtt.accepted"] + r["_mqtt.dropped.rate"] == 20_000
    assert len(drop_lines(caplog, "rate")) == 1
    # the loop was never blocked for long (bounded read batches): a generous bound for a
    # loaded 2-core machine; bench/mqtt_sensor.py measures the real figure
    assert max(lateness) < 0.25, max(lateness)


async def test_a_broker_restart_degrades_then_recovers(
    mosquitto: Mosquitto, started: MqttSensor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agentd.devices.mqtt")
    pub(mosquitto, "zigbee2mqtt/kitchen", '{"temperature": 20}')
    await until(started, lambda r: "kitchen.temperature" in r)
    mosquitto.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while started.link.problem() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    with pytest.raises(ConnectionError) as err:
        await started.perceive()
    assert f"127.0.0.1:{mosquitto.port}: not connected" in str(err.value)
    assert "\n" not in str(err.value)
    await asyncio.sleep(1.5)  # a few reconnect attempts against nothing
    mosquitto.start()
    assert await started.link.wait_up(30)
    pub(mosquitto, "zigbee2mqtt/kitchen", '{"temperature": 23}')
    r = await until(started, lambda r: r.get("kitchen.temperature") == 23)
    assert r["_mqtt.reconnects"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "reconnecting" in m]) == 1
    assert len([m for m in messages if "connected again" in m]) == 1
    assert len([m for m in messages if "retrying" in m]) <= 2  # once per distinct error


async def test_an_unreadable_password_fails_the_start_in_one_line(mosquitto: Mosquitto) -> None:
    sensor = MqttSensor(config(mosquitto, username="gw", password_file="/nonexistent/pw"))
    with pytest.raises(ConfigError) as err:
        await sensor.start()
    assert "mqtt password" in str(err.value)
    assert "/nonexistent/pw" in str(err.value)
    await sensor.stop()


async def test_tls_with_a_client_certificate(tmp_path: Path, certs: Certs) -> None:
    b = Mosquitto(tmp_path / "tls", certs=certs)
    b.start()
    try:
        keys = {"ca": str(certs.ca), "cert": str(certs.client), "key": str(certs.client_key)}
        sensor = MqttSensor(config(b, url=b.tls_url, **keys))
        await sensor.start()
        try:
            assert sensor.link.problem() is None
            pub(b, "zigbee2mqtt/kitchen", '{"temperature": 19.5}')
            r = await until(sensor, lambda r: "kitchen.temperature" in r)
            assert r["kitchen.temperature"] == 19.5
        finally:
            await sensor.stop()
        wrong = MqttSensor(config(b, url=b.tls_url, ca=str(certs.other_ca)))
        await wrong.start()
        try:
            problem = wrong.link.problem()
            assert problem is not None
            assert "certificate verify failed" in problem
        finally:
            await wrong.stop()
    finally:
        b.stop()


@pytest.mark.parametrize(
    "started", [{"protocol": "3.1.1"}, {"qos": 1}, {"protocol": "3.1.1", "qos": 1}], indirect=True
)
async def test_mqtt_3_1_1_and_qos_1_subscriptions(
    mosquitto: Mosquitto, started: MqttSensor
) -> None:
    pub(mosquitto, "zigbee2mqtt/plug", '{"state": "OFF"}', retain=True)
    pub(mosquitto, "zigbee2mqtt/kitchen", '{"temperature": 18}')
    r = await until(started, lambda r: "kitchen.temperature" in r and "plug.state" in r)
    assert r["kitchen.temperature"] == 18
    assert r["plug.state"] is False
