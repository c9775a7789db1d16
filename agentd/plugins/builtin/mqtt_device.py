"""`mqtt` sensor and `mqtt` actuator: devices on a broker (Zigbee2MQTT, Tasmota, Shelly), each
instance with its own connection (never the uplink's). The connection keys (``url``, TLS,
``username`` and ``password_file``/``password_credential``, ``protocol``, ``keepalive``,
``connect_timeout``, ``client_id``) are the `mqtt` uplink's, checked the same way.

paho is imported when an instance is built (agentd/devices/mqtt.py), not when the registry is;
the config checks here use agentd/devices/mqtt_topics.py, which has no paho. See
docs/plugins.md "`mqtt` sensor and actuator" for the naming, payload and bound rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agentd.devices.mqtt_topics import (
    MAX_TOPIC,
    NameStyle,
    filter_problem,
    placeholders,
    template_problem,
)
from agentd.plugins.base import PluginSpec
from agentd.plugins.paramschema import AnyParams
from agentd.uplink.config import MqttConfig

if TYPE_CHECKING:
    from agentd.devices.mqtt import MqttActuator, MqttSensor

__all__ = [
    "ACTUATOR_SPEC",
    "DEFAULT_VALUE_PATTERN",
    "SENSOR_SPEC",
    "STATS",
    "MqttAction",
    "MqttActuatorConfig",
    "MqttSensorConfig",
]

#: the prefix of the sensor's own counters among its readings (``_mqtt.received``, ...)
STATS = "_mqtt"
#: what a param filled into a topic may be: one topic level of word characters, spaces and
#: ``.:@,=-`` (never ``/``, ``+``, ``#`` or NUL, so it cannot reach another topic)
DEFAULT_VALUE_PATTERN = r"[\w .:@,=-]{1,128}"

_FIELD = Annotated[str, Meta(pattern=r"^[^.\x00]{1,64}(\.[^.\x00]{1,64}){0,7}$")]
_TOPIC = Annotated[str, Meta(min_length=1, max_length=MAX_TOPIC)]


class _Connection(MqttConfig, frozen=True):
    #: full-jitter reconnect backoff after a lost connection: uniform(0, min(max, min * 2**n))
    reconnect_min: Annotated[float, Meta(gt=0, le=60)] = 0.5
    reconnect_max: Annotated[float, Meta(gt=0, le=3600)] = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be below reconnect_min")


class MqttSensorConfig(_Connection, frozen=True, kw_only=True):
    """The ``mqtt`` sensor's keys."""

    #: subscription filters (``+`` and ``#`` wildcards)
    topics: Annotated[list[_TOPIC], Meta(min_length=1, max_length=64)]
    #: JSON fields read from an object payload, dotted for nested objects (``state.power``);
    #: empty: every number, boolean and short string in it
    fields: Annotated[list[_FIELD], Meta(max_length=64)] = msgspec.field(default_factory=list)
    #: how a topic names its metrics (agentd/devices/mqtt_topics.py)
    metric_names: NameStyle = "wildcards"
    #: subscription QoS (0: the broker drops for a slow reader; 1: it queues)
    qos: Literal[0, 1] = 0
    #: a reading not refreshed for this many seconds is stale: no longer reported
    max_age: Annotated[float, Meta(gt=0, le=7 * 86400)] = 3600.0
    #: retained messages (a device's last state, of unknown age): taken as received on
    #: subscribe, or ignored (counted)
    retained: Literal["accept", "ignore"] = "accept"
    #: bytes of one payload; a bigger one is dropped and counted
    max_payload: Annotated[int, Meta(ge=16, le=16 * 1024 * 1024)] = 65_536
    #: distinct metrics kept; past it, new ones are dropped and counted
    max_metrics: Annotated[int, Meta(ge=1, le=10_000)] = 256
    #: messages handled per second; past it, messages are dropped and counted until the next
    max_rate: Annotated[int, Meta(ge=1, le=100_000)] = 5_000
    #: add the counters (``_mqtt.received``, ``_mqtt.dropped.*``, ...) to the readings
    stats: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, topic in enumerate(self.topics):
            problem = filter_problem(topic)
            if problem:
                raise ValueError(f"topics[{i}]: {topic[:60]!r}: {problem}")
        if len(set(self.topics)) != len(self.topics):
            raise ValueError("topics: each filter at most once")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("fields: each field at most once")

    def produces(self) -> dict[str, str] | None:
        """Metric -> unit (agentd/config_refs.py): known prefixes only, when every filter names
        its metrics without a wildcard level."""
        from agentd.devices.mqtt_topics import safe_level

        out: dict[str, str] = {f"{STATS}.*": ""} if self.stats else {}
        for topic in self.topics:
            levels = topic.split("/")
            if self.metric_names == "topic":
                fixed = []
                for level in levels:
                    if level in ("+", "#"):
                        break
                    fixed.append(safe_level(level))
                if not fixed:
                    return None
                out[".".join(fixed) + ".*"] = ""
                continue
            wild = "+" in levels or "#" in levels
            # "wildcards" names a filter's metrics by its wildcard levels, "last" by the
            # topic's last level: known here only when that level is not a wildcard
            if levels[-1] in ("+", "#") or (wild and self.metric_names == "wildcards"):
                return None
            out[f"{safe_level(levels[-1])}.*"] = ""
        return out


class MqttAction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One declared action of the ``mqtt`` actuator."""

    #: where to publish; ``{param}`` placeholders are filled with the action's params
    topic: _TOPIC
    #: a fixed payload (``"on"``; ``{param}`` placeholders are filled), or a table sent as
    #: JSON; none: the params as a JSON object (without the ones the topic used)
    payload: str | dict[str, Any] | None = None
    #: the params' JSON Schema, checked before anything is published
    params: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    #: what a param filled into the topic must match (whole); never ``+``, ``#`` or NUL
    value_pattern: str = DEFAULT_VALUE_PATTERN
    qos: Literal[0, 1] = 1
    retain: bool = False


class MqttActuatorConfig(_Connection, frozen=True, kw_only=True):
    """The ``mqtt`` actuator's keys."""

    actions: Annotated[dict[str, MqttAction], Meta(min_length=1, max_length=256)]
    #: seconds to wait for the connection and the PUBACK; keep it below the instance's
    #: ``timeout`` so a missing PUBACK is reported as such
    publish_timeout: Annotated[float, Meta(gt=0, le=300)] = 3.0
    #: bytes of one payload
    max_payload: Annotated[int, Meta(ge=16, le=16 * 1024 * 1024)] = 65_536

    def __post_init__(self) -> None:
        import re

        from agentd.plugins.paramschema import schema_problem

        super().__post_init__()
        for name, action in self.actions.items():
            where = f"actions.{name}"
            problem = template_problem(action.topic)
            if problem:
                raise ValueError(f"{where}.topic: {action.topic[:60]!r}: {problem}")
            problem = schema_problem(action.params, f"{where}.params")
            if problem:
                raise ValueError(problem)
            try:
                re.compile(action.value_pattern)
            except re.error as exc:
                raise ValueError(f"{where}.value_pattern: not a valid regex: {exc}") from None
            props = action.params.get("properties")
            required = action.params.get("required") or []
            for p in self.needs(name):
                if not isinstance(props, dict) or p not in props or p not in required:
                    raise ValueError(
                        f"{where}: placeholder {{{p}}} must be a declared param "
                        f"(in params.properties and params.required)"
                    )

    # -- declarations (agentd/config_refs.py, agentd/plugins/paramschema.py) -----------------
    def offers(self) -> list[str]:
        return list(self.actions)

    def needs(self, action: str) -> set[str]:
        """The params ``action``'s topic and payload templates are filled with."""
        decl = self.actions.get(action)
        if decl is None:
            return set()
        out = set(placeholders(decl.topic))
        if isinstance(decl.payload, str):
            out |= set(placeholders(decl.payload))
        return out

    def action_schemas(self) -> Mapping[str, Mapping[str, object]]:
        return {name: a.params for name, a in self.actions.items()}


def build_sensor(config: MqttSensorConfig) -> MqttSensor:
    from agentd.devices.mqtt import MqttSensor

    return MqttSensor(config)


def build_actuator(config: MqttActuatorConfig) -> MqttActuator:
    from agentd.devices.mqtt import MqttActuator

    return MqttActuator(config)


SENSOR_SPEC = PluginSpec(
    name="mqtt",
    kind="sensor",
    factory=build_sensor,
    config_type=MqttSensorConfig,
    description="readings from devices on an MQTT broker (JSON fields, numbers, ON/OFF)",
)

ACTUATOR_SPEC = PluginSpec(
    name="mqtt",
    kind="actuator",
    factory=build_actuator,
    config_type=MqttActuatorConfig,
    description="publish declared actions to an MQTT broker (QoS 1, waits for the PUBACK)",
    actions={"*": AnyParams},
)
