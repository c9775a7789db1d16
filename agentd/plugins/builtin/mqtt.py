"""`mqtt` uplink: the built-in transport of ``[uplinks.NAME]`` (agentd/uplink/mqtt.py, a thin
asyncio adapter over paho-mqtt). paho is imported when an uplink is built, not when the
registry is: ``agentd plugins`` and ``check-config`` stay fast without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentd.plugins.base import PluginSpec
from agentd.uplink.config import MqttConfig

if TYPE_CHECKING:
    from agentd.uplink.mqtt import MqttTransport

__all__ = ["SPEC", "build"]


def build(config: MqttConfig) -> MqttTransport:
    from agentd.uplink.mqtt import MqttTransport

    return MqttTransport(config)


SPEC = PluginSpec(
    name="mqtt",
    kind="uplink",
    factory=build,
    config_type=MqttConfig,
    description="MQTT 5 (3.1.1 fallback) over TCP or TLS to the fleet's broker (paho-mqtt)",
)
