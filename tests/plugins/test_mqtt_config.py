"""The `mqtt` device plugins' config and pure mapping (agentd/devices/mqtt_topics.py): topic
names, payloads, check-config's one-line errors, the declarations, and the lazy import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from agentd import config as cfg
from agentd.devices.mqtt_topics import (
    MAX_LEVEL,
    MAX_NAME,
    Namer,
    Unmapped,
    filter_problem,
    parse_payload,
    safe_level,
    topic_matches,
)
from agentd.errors import ConfigError
from agentd.plugins.builtin.mqtt_device import MqttActuatorConfig, MqttSensorConfig
from agentd.plugins.registry import default_registry


def test_wildcard_levels_name_the_metrics() -> None:
    n = Namer(["zigbee2mqtt/+", "shellies/+/relay/+", "home/#", "fixed/topic/temp"], "wildcards")
    assert n.name("zigbee2mqtt/kitchen") == "kitchen"
    assert n.name("shellies/sh1/relay/0") == "sh1.0"
    assert n.name("home/floor1/hall") == "floor1.hall"
    assert n.name("home") == "home"  # '#' matched no level: the last level
    assert n.name("fixed/topic/temp") == "temp"
    assert n.name("other/x") is None
    assert n.name("zigbee2mqtt/living room (east)") == "living_room__east_"
    assert Namer(["a/+/b"], "last").name("a/x/b") == "b"
    assert Namer(["a/+/b"], "topic").name("a/x/b") == "a.x.b"


def test_names_are_bounded_and_stay_distinct() -> None:
    long_a, long_b = "d" * 300 + "a", "d" * 300 + "b"
    a, b = safe_level(long_a), safe_level(long_b)
    assert len(a) == len(b) == MAX_LEVEL
    assert a != b
    n = Namer(["#"], "wildcards")
    name = n.name("/".join(["x" * 60] * 10))
    assert name is not None
    assert len(name) <= MAX_NAME
    assert safe_level("") == "_"


def test_dollar_topics_never_match_a_leading_wildcard() -> None:
    assert topic_matches(["#"], ["$SYS", "broker"]) is None
    assert topic_matches(["+", "x"], ["$SYS", "x"]) is None
    assert topic_matches(["$SYS", "#"], ["$SYS", "broker"]) == ["broker"]


def test_payloads_map_to_typed_readings() -> None:
    fields = [("temperature", ("temperature",)), ("state.power", ("state", "power"))]
    doc = b'{"temperature": 21.5, "humidity": 40, "state": {"power": "ON"}}'
    assert parse_payload(doc, fields) == [("temperature", 21.5), ("state.power", True)]
    assert parse_payload(b"21", []) == [("value", 21)]
    assert parse_payload(b" 21.25\n", []) == [("value", 21.25)]
    assert parse_payload(b"OFF", []) == [("value", False)]
    assert parse_payload(b"true", []) == [("value", True)]
    assert parse_payload(b'"on"', []) == [("value", True)]
    assert parse_payload(b"Online", []) == [("value", "Online")]
    every = parse_payload(b'{"a": 1, "b": {"c": false, "d": [1]}, "e": "idle"}', [])
    assert every == [("a", 1), ("b.c", False), ("e", "idle")]


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"{oops", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"[1, 2]", "unmapped"),
        (b"", "unmapped"),
        (b"nan", "unmapped"),
        (b"null", "unmapped"),
        (b'{"other": 1}', "unmapped"),
        (b"x" * 1000, "unmapped"),
    ],
)
def test_payloads_that_give_no_reading(payload: bytes, kind: str) -> None:
    with pytest.raises(Unmapped) as err:
        parse_payload(payload, [("temperature", ("temperature",))])
    assert err.value.kind == kind
    assert "\n" not in str(err.value)


def test_filters_are_checked() -> None:
    assert filter_problem("a/+/b/#") is None
    assert filter_problem("a/#/b") == "'#' must be a whole level, and the last one"
    assert filter_problem("a/b+") == "'+' must be a whole level"
    assert filter_problem("a\x00") == "a NUL character"


def _load(text: str) -> cfg.Config:
    return cfg.loads(text, default_registry)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        _load(text)
    return str(err.value)


SENSOR = """
[sensors.z2m]
plugin = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["zigbee2mqtt/+"]
fields = ["temperature", "humidity"]
"""

ACTUATOR = """
[actuators.lights]
plugin = "mqtt"
url = "mqtt://127.0.0.1:1883"
[actuators.lights.actions.set]
topic = "zigbee2mqtt/{device}/set"
[actuators.lights.actions.set.params]
type = "object"
required = ["device", "state"]
properties = { device = { type = "string" }, state = { enum = ["ON", "OFF"] } }
[actuators.lights.actions.all_off]
topic = "zigbee2mqtt/group-all/set"
payload = { state = "OFF" }
"""


def test_the_issues_keys_load() -> None:
    conf = _load(SENSOR + ACTUATOR)
    sensor = conf.plugin_sections["sensors"]["z2m"].config
    assert isinstance(sensor, MqttSensorConfig)
    assert sensor.topics == ["zigbee2mqtt/+"]
    assert sensor.produces() is None  # the device level is a wildcard: names known on read
    actuator = conf.plugin_sections["actuators"]["lights"].config
    assert isinstance(actuator, MqttActuatorConfig)
    assert actuator.offers() == ["set", "all_off"]
    assert actuator.needs("set") == {"device"}
    assert set(actuator.action_schemas()) == {"set", "all_off"}
    fixed = msgspec.convert(
        {"url": "mqtt://h", "topics": ["shellies/relay-1/relay/0"]}, MqttSensorConfig
    )
    assert fixed.produces() == {"_mqtt.*": "", "0.*": ""}

    def produces(topic: str, style: str) -> object:
        keys = {"url": "mqtt://h", "topics": [topic], "metric_names": style, "stats": False}
        return msgspec.convert(keys, MqttSensorConfig).produces()

    assert produces("tele/+/SENSOR", "wildcards") is None  # named by the device level
    assert produces("tele/+/SENSOR", "last") == {"SENSOR.*": ""}
    assert produces("tele/+/SENSOR", "topic") == {"tele.*": ""}
    assert produces("tele/dev 1/SENSOR", "topic") == {"tele.dev_1.SENSOR.*": ""}
    assert produces("tele/#", "last") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SENSOR.replace('["zigbee2mqtt/+"]', '["zigbee2mqtt/#/x"]'), "topics[0]"),
        (SENSOR.replace('["zigbee2mqtt/+"]', "[]"), "topics"),
        (SENSOR.replace("1883", "1883/path"), "url"),
        (SENSOR + "max_payload = 999999999\n", "max_payload"),
        (SENSOR + 'retained = "keep"\n', "retained"),
        (ACTUATOR.replace("/{device}/set", "/{room}/set"), "placeholder {room}"),
        (ACTUATOR.replace("/{device}/set", "/+/set"), "wildcards"),
        (ACTUATOR.replace('type = "string"', 'type = "strin"'), "actions.set.params"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(text: str, expected: str) -> None:
    message = _error(text)
    assert expected in message
    assert "Traceback" not in message
    assert all(len(line) < 300 for line in message.splitlines())


def test_check_config_refuses_a_bad_action_in_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "agentd.toml"
    conf.write_text(ACTUATOR.replace("/{device}/set", "/{room}/set"))
    out = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "actuators.lights" in out.stderr
    assert "placeholder {room} must be a declared param" in out.stderr
    assert "Traceback" not in out.stderr


def test_paho_is_not_imported_with_the_builtins() -> None:
    code = (
        "import sys; import agentd.plugins.builtin; "
        "bad = [m for m in ('paho', 'jsonschema') if m in sys.modules]; "
        "assert not bad, bad; "
        "import agentd.plugins.builtin.mqtt_device as m; "
        "m.build_sensor; assert 'paho' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
