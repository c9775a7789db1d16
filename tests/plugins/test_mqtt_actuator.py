"""The `mqtt` actuator against a real mosquitto, a subscriber in the test checking what arrives:
the topic and JSON, params refused before anything is published, topic injection refused, a
missing PUBACK failing with a reason (the broker stopped with SIGSTOP)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentd.actions import ActionRunner
from agentd.config import PluginInstance
from agentd.config_plugins import ActuatorCommon, ActuatorInstance
from agentd.devices.mqtt import MqttActuator
from agentd.model import Action
from agentd.plugins.builtin.mqtt_device import ACTUATOR_SPEC, MqttActuatorConfig
from agentd.plugins.handle import ActuatorRunner
from tests.uplink.broker import Collector, Mosquitto

SET = {
    "topic": "zigbee2mqtt/{device}/set",
    "params": {
        "type": "object",
        "properties": {
            "device": {"type": "string"},
            "state": {"enum": ["ON", "OFF"]},
            "brightness": {"type": "integer", "minimum": 0, "maximum": 254},
        },
        "required": ["device", "state"],
        "additionalProperties": False,
    },
}
RELAY_ON = {"topic": "shellies/relay-1/relay/0/command", "payload": "on"}
TASMOTA = {
    "topic": "cmnd/{device}/POWER",
    "payload": "{state}",
    "params": {
        "type": "object",
        "properties": {"device": {"type": "string"}, "state": {"enum": ["ON", "OFF"]}},
        "required": ["device", "state"],
    },
}


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Collector]:
    with Collector(mosquitto.port, "#", client_id="device-side") as c:
        yield c


def make(b: Mosquitto, **kw: Any) -> MqttActuator:
    keys = {"url": b.url, "actions": {"set": SET, "on": RELAY_ON, "power": TASMOTA}}
    return MqttActuator(msgspec.convert({**keys, **kw}, MqttActuatorConfig))


@pytest.fixture
async def actuator(mosquitto: Mosquitto) -> AsyncIterator[MqttActuator]:
    a = make(mosquitto)
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


def runner(obj: MqttActuator, **common: Any) -> ActionRunner:
    inst: PluginInstance = ActuatorInstance(
        name="lights",
        plugin="mqtt",
        common=msgspec.convert(common, ActuatorCommon),
        config=obj.config,
        raw={},
    )
    return ActionRunner({"lights": ActuatorRunner(inst, ACTUATOR_SPEC, obj)}, default_timeout=10)


def act(name: str, **params: Any) -> Action:
    return Action(actuator="lights", name=name, params=params)


async def test_params_are_published_as_json_to_the_filled_topic(
    actuator: MqttActuator, subscriber: Collector
) -> None:
    result = await runner(actuator).run(act("set", device="lamp", state="ON", brightness=200))
    assert result.status == "ok", result.error
    assert result.output == {"topic": "zigbee2mqtt/lamp/set", "bytes": 31, "ack": "Success"}
    assert subscriber.wait_for(subscriber.snapshot, 10)
    [(topic, payload, retain)] = subscriber.snapshot()
    assert topic == "zigbee2mqtt/lamp/set"
    assert json.loads(payload) == {"state": "ON", "brightness": 200}  # not the topic's param
    assert retain is False


async def test_fixed_and_templated_payloads(actuator: MqttActuator, subscriber: Collector) -> None:
    run = runner(actuator).run
    assert (await run(act("on", metric="z2m.x.temperature", value=25.0))).status == "ok"
    assert (await run(act("power", device="tasmota_1", state="OFF"))).status == "ok"
    assert subscriber.wait_for(lambda: len(subscriber.snapshot()) == 2, 10)
    assert subscriber.snapshot() == [
        ("shellies/relay-1/relay/0/command", b"on", False),
        ("cmnd/tasmota_1/POWER", b"OFF", False),
    ]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"device": "lamp", "state": "DIM"}, "set.params.state: 'DIM' is not one of"),
        ({"device": "lamp", "state": "ON", "brightness": 999}, "set.params.brightness: 999"),
        ({"state": "ON"}, "'device' is a required property"),
        ({"device": "lamp", "state": "ON", "x": 1}, "Additional properties are not allowed"),
        # topic injection: another device's topic, a wildcard, a NUL, the broker's own topics
        ({"device": "lamp/set/../other", "state": "ON"}, "set.params.device: 'lamp/set/../other'"),
        ({"device": "+", "state": "ON"}, "is not allowed in the topic"),
        ({"device": "#", "state": "ON"}, "is not allowed in the topic"),
        ({"device": "lamp\x00x", "state": "ON"}, "is not allowed in the topic"),
        ({"device": "", "state": "ON"}, "is not allowed in the topic"),
    ],
)
async def test_bad_params_are_refused_before_anything_is_published(
    actuator: MqttActuator, subscriber: Collector, params: dict[str, Any], reason: str
) -> None:
    result = await runner(actuator).run(act("set", **params))
    assert result.status == "rejected"
    assert result.error is not None
    assert reason in result.error, result.error
    assert "\n" not in result.error
    # a marker published after it arrives first: nothing was published for the refused one
    assert (await runner(actuator).run(act("on"))).status == "ok"
    assert subscriber.wait_for(subscriber.snapshot, 10)
    assert [t for t, _, _ in subscriber.snapshot()] == ["shellies/relay-1/relay/0/command"]


async def test_a_dollar_topic_cannot_be_reached_through_a_param(mosquitto: Mosquitto) -> None:
    sneaky = {**SET, "topic": "{device}/set"}
    a = make(mosquitto, actions={"set": sneaky})
    reason = a.validate(act("set", device="$SYS", state="ON"))
    assert reason is not None
    assert "'$SYS' is not allowed in the topic" in reason
    # even where the config's pattern lets a '$' through
    a = make(mosquitto, actions={"set": {**sneaky, "value_pattern": r"[$\w]+"}})
    reason = a.validate(act("set", device="$SYS", state="ON"))
    assert reason is not None
    assert "would be a broker's $-topic" in reason


async def test_the_config_may_allow_slashes_in_a_param(
    mosquitto: Mosquitto, subscriber: Collector
) -> None:
    nested = {**SET, "value_pattern": r"[a-z]+(/[a-z]+)?"}
    a = make(mosquitto, actions={"set": nested})
    await a.start()
    try:
        assert a.validate(act("set", device="kitchen/lamp", state="ON")) is None
        assert a.validate(act("set", device="kitchen/+", state="ON")) is not None
        assert (await runner(a).run(act("set", device="kitchen/lamp", state="ON"))).status == "ok"
    finally:
        await a.stop()
    assert subscriber.wait_for(subscriber.snapshot, 10)
    assert subscriber.snapshot()[0][0] == "zigbee2mqtt/kitchen/lamp/set"


async def test_no_puback_fails_with_a_reason_and_is_retried(mosquitto: Mosquitto) -> None:
    a = make(mosquitto, publish_timeout=0.5)
    await a.start()
    assert mosquitto.proc is not None
    os.kill(mosquitto.proc.pid, signal.SIGSTOP)  # the connection stays, nothing answers
    try:
        t0 = time.monotonic()
        result = await runner(a, retries=1, backoff=0.05).run(act("on"))
        took = time.monotonic() - t0
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
        await a.stop()
    assert result.status == "timeout"
    assert result.attempts == 2
    assert result.error is not None
    assert f"127.0.0.1:{mosquitto.port}: no PUBACK within 0.5s" in result.error
    assert took < 3.0


async def test_a_broker_that_is_down_fails_the_action_in_one_line(tmp_path: Path) -> None:
    down = Mosquitto(tmp_path / "down")  # never started: nothing listens on its port
    a = make(down, publish_timeout=0.3)
    await a.start()
    try:
        result = await runner(a).run(act("on"))
    finally:
        await a.stop()
    assert result.status == "failed"
    assert result.error is not None
    assert f"127.0.0.1:{down.port}: not connected: " in result.error
    assert "refused" in result.error.lower()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_it_publishes_again_after_a_broker_restart(
    mosquitto: Mosquitto, protocol: str
) -> None:
    a = make(mosquitto, protocol=protocol, reconnect_max=0.5, publish_timeout=10.0)
    await a.start()
    try:
        assert (await runner(a).run(act("on"))).status == "ok"
        await asyncio.to_thread(mosquitto.stop)  # the loop runs: the link sees it go
        await asyncio.to_thread(mosquitto.start)
        with Collector(mosquitto.port, "shellies/#", client_id="relay") as relay:
            # the wait for the link is inside publish_timeout: no failure, no retry needed
            result = await runner(a).run(act("on"))
            assert result.status == "ok", result.error
            assert relay.wait_for(relay.snapshot, 10)
            assert relay.snapshot() == [("shellies/relay-1/relay/0/command", b"on", False)]
        assert a.link.reconnects == 1
    finally:
        await a.stop()


async def test_a_publish_into_a_link_that_just_went_fails_and_the_retry_sends_it(
    mosquitto: Mosquitto,
) -> None:
    a = make(mosquitto, reconnect_max=0.5, publish_timeout=10.0)
    await a.start()
    try:
        # blocking on purpose: the loop does not run, so the link has not seen the restart
        mosquitto.stop()
        mosquitto.start()
        with Collector(mosquitto.port, "shellies/#", client_id="relay") as relay:
            once = await runner(a).run(act("on"))
            assert once.status == "failed"
            assert once.error is not None
            assert "no PUBACK, the link went" in once.error
            assert await a.link.wait_up(10)
            mosquitto.stop()
            mosquitto.start()
            retried = await runner(a, retries=1, backoff=0.1).run(act("on"))
            assert retried.status == "ok", retried.error
            assert retried.attempts == 2
            assert relay.wait_for(relay.snapshot, 10)
    finally:
        await a.stop()
