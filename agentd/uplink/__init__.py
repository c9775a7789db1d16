"""The fleet uplink: store-and-forward from the journals to a broker (docs/uplink.md).

`UplinkEngine` owns cursors, batches, windows, backoff and accounting; a transport satisfying
`Uplink` only sends. The built-in ``mqtt`` transport is `agentd.uplink.mqtt.MqttTransport`
(imported on demand: it pulls in paho-mqtt).
"""

from agentd.uplink.base import Delivery, Link, Message, Stream, TransportError, Uplink
from agentd.uplink.config import MqttConfig, UplinkSettings
from agentd.uplink.engine import UplinkEngine

__all__ = [
    "Delivery",
    "Link",
    "Message",
    "MqttConfig",
    "Stream",
    "TransportError",
    "Uplink",
    "UplinkEngine",
    "UplinkSettings",
]
