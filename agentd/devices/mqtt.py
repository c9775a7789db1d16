"""The `mqtt` sensor and actuator (configs in agentd/plugins/builtin/mqtt_device.py), each on its
own `DeviceLink`.

The sensor keeps a latest-value table, metric -> (value, when received), written by the paho
callback on the loop's thread and read by ``perceive()`` (so no lock). Each bound drops what is
past it and counts it: a message over ``max_rate`` in the current second, a payload over
``max_payload``, a retained message under ``retained = "ignore"``, a new metric when
``max_metrics`` are kept (stale ones make room first), a payload that is not JSON or maps to no
reading. The first drop of each kind is logged (one line naming the topic), then at most one
line a minute with the count since. A reading not refreshed within ``max_age`` is stale: no
longer reported, counted once. The counters are readings too (``_mqtt.*``, ``stats = true``).

Retained messages are a device's last state, of unknown age: one is taken as received when the
subscription delivers it, except that a retained copy of the value the table already holds
keeps that value's age (after a reconnect the broker sends every retained message again; a
dead device's last value must not look fresh each time). While the broker is unreachable,
``perceive()`` raises one line, so the sensor is failing, then degraded with the usual backoff;
the link reconnects and subscribes again by itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Final

import msgspec
from paho.mqtt import client as paho

from agentd.devices.mqtt_link import DeviceLink
from agentd.devices.mqtt_topics import MAX_TOPIC, Namer, Unmapped, parse_payload, placeholders
from agentd.model import Action, Value
from agentd.plugins.base import ActuatorReply
from agentd.plugins.builtin.mqtt_device import (
    STATS,
    MqttAction,
    MqttActuatorConfig,
    MqttSensorConfig,
)
from agentd.plugins.paramschema import ParamsSchema

__all__ = ["DROPS", "START_WAIT", "MqttActuator", "MqttSensor"]

log = logging.getLogger("agentd.devices.mqtt")

#: seconds start() waits for the first connection (a broker that is down is not a start error)
START_WAIT: Final = 2.0
#: a kind of drop is logged at most this often (seconds) after its first line
LOG_EVERY: Final = 60.0
#: the kinds of dropped messages, each counted as ``_mqtt.dropped.<kind>``
DROPS: Final = ("rate", "oversize", "retained", "malformed", "unmapped", "table_full")
#: characters of a param filled into a payload template
MAX_PARAM: Final = 4096


class _Drops:
    """Counts per kind; logs the first of a kind, then at most one line per LOG_EVERY."""

    __slots__ = ("_logged", "_since", "counts", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.counts = dict.fromkeys(DROPS, 0)
        self._logged: dict[str, float] = {}
        self._since = dict.fromkeys(DROPS, 0)

    def drop(self, kind: str, topic: str, reason: str) -> None:
        self.counts[kind] += 1
        self._since[kind] += 1
        now = time.monotonic()
        last = self._logged.get(kind)
        if last is not None and now - last < LOG_EVERY:
            return
        n, self._since[kind] = self._since[kind], 0
        self._logged[kind] = now
        more = f" ({n} such drops since the last line)" if last is not None else ""
        # a message with none of the fields is normal (a plug's power report to a sensor
        # that reads temperatures): said, but not as a fault
        log.log(
            logging.INFO if kind == "unmapped" else logging.WARNING,
            "%s: dropped a message on %r: %s%s; counted in %s.dropped.%s",
            self.where,
            topic[:120],
            reason,
            more,
            STATS,
            kind,
        )


class MqttSensor:
    def __init__(self, config: MqttSensorConfig) -> None:
        self.config = config
        c = config
        # 4 x max_payload and room for the topic: an MQTT 5 broker does not even send more;
        # below that, a payload over max_payload is read, dropped and counted here
        self.link = DeviceLink(
            c,
            role="sensor",
            reconnect=(c.reconnect_min, c.reconnect_max),
            subscriptions=c.topics,
            qos=c.qos,
            on_message=self._message,
            max_packet=4 * c.max_payload + MAX_TOPIC + 1024,
        )
        self.namer = Namer(c.topics, c.metric_names)
        self.fields = [(f, tuple(f.split("."))) for f in c.fields]
        #: metric -> (value, monotonic time received)
        self.table: dict[str, tuple[Value, float]] = {}
        #: metrics in the table reported stale (kept so a retained copy keeps their age)
        self.stale: dict[str, None] = {}
        self.drops = _Drops(self.link.name)
        self.received = 0
        self.accepted = 0
        self.stale_count = 0
        self._window = 0
        self._in_window = 0

    async def start(self) -> None:
        await self.link.start(min(START_WAIT, self.config.connect_timeout))

    async def stop(self) -> None:
        await self.link.stop()

    # -- the paho callback (on the loop's thread) --------------------------------------------
    def _message(self, msg: paho.MQTTMessage) -> None:
        c = self.config
        now = time.monotonic()
        self.received += 1
        window = int(now)
        if window != self._window:
            self._window, self._in_window = window, 0
        self._in_window += 1
        topic = msg.topic
        if self._in_window > c.max_rate:
            self.drops.drop("rate", topic, f"over max_rate ({c.max_rate} messages/s)")
            return
        payload = msg.payload
        if len(payload) > c.max_payload:
            self.drops.drop(
                "oversize", topic, f"{len(payload)} bytes is over max_payload ({c.max_payload})"
            )
            return
        retained = bool(msg.retain)
        if retained and c.retained == "ignore":
            self.drops.drop("retained", topic, 'a retained message (retained = "ignore")')
            return
        name = self.namer.name(topic)
        if name is None:
            self.drops.drop("unmapped", topic, "no configured topic filter matches it")
            return
        try:
            pairs = parse_payload(payload, self.fields)
        except Unmapped as exc:
            self.drops.drop(exc.kind, topic, str(exc))
            return
        table, stale = self.table, self.stale
        for field, value in pairs:
            metric = f"{name}.{field}"
            old = table.get(metric)
            when = now
            if old is None:
                if len(table) >= c.max_metrics:
                    if not stale:
                        self.drops.drop(
                            "table_full",
                            topic,
                            f"new metric {metric!r}: max_metrics ({c.max_metrics}) are kept",
                        )
                        continue
                    oldest = next(iter(stale))
                    del stale[oldest], table[oldest]
            elif retained and old[0] == value and type(old[0]) is type(value):
                table[metric] = old
                continue
            table[metric] = (value, when)
            stale.pop(metric, None)
        self.accepted += 1

    # -- Sensor ------------------------------------------------------------------------------
    async def perceive(self) -> dict[str, Value]:
        problem = self.link.problem()
        if problem is not None:
            raise ConnectionError(problem)
        horizon = time.monotonic() - self.config.max_age
        out: dict[str, Value] = {}
        stale = self.stale
        for metric, (value, when) in self.table.items():
            if when < horizon:
                if metric not in stale:
                    stale[metric] = None
                    self.stale_count += 1
                continue
            out[metric] = value
        if self.config.stats:
            out.update(self.stats())
        return out

    def stats(self) -> dict[str, Value]:
        out: dict[str, Value] = {
            f"{STATS}.received": self.received,
            f"{STATS}.accepted": self.accepted,
            f"{STATS}.metrics": len(self.table) - len(self.stale),
            f"{STATS}.stale": self.stale_count,
            f"{STATS}.reconnects": self.link.reconnects,
        }
        for kind, n in self.drops.counts.items():
            out[f"{STATS}.dropped.{kind}"] = n
        return out


class _Refused(ValueError):
    pass


class MqttActuator:
    def __init__(self, config: MqttActuatorConfig) -> None:
        self.config = config
        self.link = DeviceLink(
            config, role="actuator", reconnect=(config.reconnect_min, config.reconnect_max)
        )
        self._schemas = {name: ParamsSchema(a.params) for name, a in config.actions.items()}
        self._patterns = {name: re.compile(a.value_pattern) for name, a in config.actions.items()}

    async def start(self) -> None:
        await self.link.start(min(START_WAIT, self.config.connect_timeout))

    async def stop(self) -> None:
        await self.link.stop()

    def validate(self, action: Action) -> str | None:
        try:
            self._message(action)
        except _Refused as exc:
            return str(exc)
        return None

    async def act(self, action: Action) -> ActuatorReply:
        decl, topic, payload = self._message(action)
        reason = await self.link.publish(
            topic,
            payload,
            qos=decl.qos,
            retain=decl.retain,
            timeout=self.config.publish_timeout,
        )
        return ActuatorReply(output={"topic": topic, "bytes": len(payload), "ack": reason})

    # -- what to publish ---------------------------------------------------------------------
    def _message(self, action: Action) -> tuple[MqttAction, str, bytes]:
        decl = self.config.actions.get(action.name)
        if decl is None:
            offered = ", ".join(sorted(self.config.actions))
            raise _Refused(f"no action {action.name!r} (offers: {offered})")
        where = f"{action.name}.params"
        problem = self._schemas[action.name].problem(action.params, where)
        if problem is not None:
            raise _Refused(problem)
        pattern = self._patterns[action.name]
        topic = self._fill(decl.topic, action.params, where, pattern)
        if topic.startswith("$") and not decl.topic.startswith("$"):
            raise _Refused(f"{where}: the topic {topic[:60]!r} would be a broker's $-topic")
        if len(topic.encode()) > 65_535:
            raise _Refused(f"{where}: the topic is longer than MQTT allows")
        payload: bytes
        try:
            if isinstance(decl.payload, str):
                payload = self._fill(decl.payload, action.params, where, None).encode()
            elif decl.payload is not None:
                payload = msgspec.json.encode(decl.payload)
            else:
                used = set(placeholders(decl.topic))
                body = {k: v for k, v in action.params.items() if k not in used}
                payload = msgspec.json.encode(body)
        except (TypeError, msgspec.EncodeError) as exc:
            raise _Refused(f"{where}: cannot be sent as JSON: {exc}") from None
        if len(payload) > self.config.max_payload:
            raise _Refused(
                f"{where}: the payload is {len(payload)} bytes, over max_payload "
                f"({self.config.max_payload})"
            )
        return decl, topic, payload

    @staticmethod
    def _fill(
        template: str, params: Mapping[str, object], where: str, pattern: re.Pattern[str] | None
    ) -> str:
        """``template`` with its placeholders filled; a topic's values must match ``pattern``
        and never hold ``+``, ``#`` or NUL, whatever the pattern says."""

        def value(m: re.Match[str]) -> str:
            key = m.group(1)
            v = params.get(key)
            if v is None or isinstance(v, dict | list):
                raise _Refused(f"{where}.{key}: required (a string or number)")
            text = str(v).lower() if isinstance(v, bool) else str(v)
            if pattern is None:
                if len(text) > MAX_PARAM or "\x00" in text:
                    raise _Refused(f"{where}.{key}: not a short text value")
                return text
            if any(ch in text for ch in "+#\x00") or not pattern.fullmatch(text):
                raise _Refused(
                    f"{where}.{key}: {text[:40]!r} is not allowed in the topic "
                    "(does not match value_pattern)"
                )
            return text

        return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", value, template)
