"""The fleet uplink: store-and-forward from the journals to a broker (docs/uplink.md)."""

from agentd.uplink.base import Delivery, Link, Message, Stream, TransportError, Uplink
from agentd.uplink.config import MqttConfig, UplinkSettings

__all__ = [
    "Delivery",
    "Link",
    "Message",
    "MqttConfig",
    "Stream",
    "TransportError",
    "Uplink",
    "UplinkSettings",
]
