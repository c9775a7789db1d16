"""The fleet uplink: store-and-forward from the journals to a broker (docs/uplink.md).

`UplinkEngine` owns cursors, batches, windows, backoff and accounting; a transport satisfying
`Uplink` only sends. The built-in ``mqtt`` transport is `agentd.uplink.mqtt.MqttTransport`
(imported on demand: it pulls in paho-mqtt).

The names below are imported when first used: every daemon start imports
`agentd.uplink.config` (the ``mqtt`` plugin's config Struct), and a package that imported the
engine here would load it, its batcher, envelopes and the fleet command protocol on a config
without an uplink (0.5 MiB, issue #18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

_HOME = {
    "Delivery": "base",
    "Link": "base",
    "Message": "base",
    "Stream": "base",
    "TransportError": "base",
    "Uplink": "base",
    "MqttConfig": "config",
    "UplinkSettings": "config",
    "UplinkEngine": "engine",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:  # also how `from agentd.uplink import cmdproto` finds a submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
