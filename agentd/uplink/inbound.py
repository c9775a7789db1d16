"""What a transport hands the command channel for one inbound message, with what MQTT 5 said
about it, and the one way to acknowledge it.

The MQTT transport runs its client with manual acknowledgements (paho's ``manual_ack=True``):
a QoS 1 PUBLISH is answered with a PUBACK only when ``ack()`` is called, so the command channel
can acknowledge a command after its once-only claim is committed, not when it arrives.
Messages the channel does not take are acknowledged by the transport at once, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["Ack", "Inbound", "InboundSink", "from_paho"]


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    payload: bytes
    qos: int = 1
    #: a retained message: the broker's copy of something published earlier
    retain: bool = False
    #: the broker says it may have delivered this one before
    dup: bool = False
    #: MQTT 5 properties (None / empty on 3.1.1)
    content_type: str | None = None
    response_topic: str | None = None
    correlation: bytes | None = None
    user: tuple[tuple[str, str], ...] = ()
    #: the Message Expiry Interval the broker forwarded (seconds left), None if none
    expiry: int | None = None
    #: wall time it arrived
    received: float = 0.0

    def prop(self, name: str) -> str | None:
        """A user property's first value."""
        for k, v in self.user:
            if k == name:
                return v
        return None


#: acknowledges the message on the link it came in on (a no-op once that link is gone)
Ack = Callable[[], None]
#: ``sink(message, ack)`` returns True if it takes the message (and then calls ``ack`` itself)
InboundSink = Callable[[Inbound, Ack], bool]


def from_paho(msg: Any) -> Inbound:
    """A paho ``MQTTMessage`` (its ``properties`` exist on MQTT 5 only)."""
    props = getattr(msg, "properties", None)
    corr = getattr(props, "CorrelationData", None)
    expiry = getattr(props, "MessageExpiryInterval", None)
    return Inbound(
        topic=str(msg.topic),
        payload=bytes(msg.payload),
        qos=int(msg.qos),
        retain=bool(msg.retain),
        dup=bool(msg.dup),
        content_type=getattr(props, "ContentType", None),
        response_topic=getattr(props, "ResponseTopic", None),
        correlation=bytes(corr) if corr is not None else None,
        user=tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", None) or ()),
        expiry=int(expiry) if expiry is not None else None,
        received=time.time(),
    )
