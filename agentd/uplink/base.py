"""The `Uplink` transport protocol and the data it exchanges with the engine.

A transport only moves messages: the engine (``engine.py``) owns cursors, batching, windows,
backoff and accounting. A transport connects, sends one message at a time and reports, per
message, whether the far side took it (MQTT: a PUBACK whose reason code is success) or why not.
A second transport (HTTP batches, Kafka, ...) implements these four methods and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Literal, Protocol, runtime_checkable

import msgspec

from agentd.errors import AgentdError

__all__ = [
    "CHANNELS",
    "STREAMS",
    "Channel",
    "Delivery",
    "Link",
    "Message",
    "Stream",
    "TransportError",
    "Uplink",
]

#: the journals an uplink forwards (the store contract's ``Stream``)
Stream = Literal["observations", "actions", "events"]
STREAMS: Final[tuple[Stream, ...]] = ("observations", "actions", "events")
#: where a message goes: a stream, the retained status, or (inbound) the consumer's ack
Channel = Literal["observations", "actions", "events", "status", "ack"]
CHANNELS: Final[tuple[Channel, ...]] = ("observations", "actions", "events", "status", "ack")


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One outbound message."""

    #: where it goes, e.g. ``agentd/v1/gw-0042/observations`` (a transport maps it to its own
    #: addressing; MQTT uses it as the topic)
    topic: str
    payload: bytes
    retain: bool = False
    content_type: str = "application/msgpack"


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """The far side's answer to one message. ``ok`` only on an explicit success (MQTT: PUBACK
    reason code < 0x80); ``code`` is the protocol's reason code when it has one."""

    ok: bool
    code: int | None = None
    reason: str = ""


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """What a successful connect learnt about the far side."""

    #: at most this many unacknowledged messages (MQTT 5 CONNACK Receive Maximum)
    receive_maximum: int = 65_535
    #: the largest message it accepts in bytes (MQTT 5 Maximum Packet Size), None: no limit
    max_packet_size: int | None = None
    #: e.g. "mqtt5", "mqtt3.1.1"
    protocol: str = ""
    #: False when reason codes are not available (MQTT 3.1.1: a PUBACK carries none, so a
    #: broker that drops a denied publish still acknowledges it)
    reason_codes: bool = True


class TransportError(AgentdError):
    """A connect failed or the link was lost. ``refused`` means the far side answered and said
    no (bad credentials, not authorized, TLS verification failed): health turns degraded."""

    def __init__(self, message: str, *, refused: bool = False, code: int | None = None) -> None:
        self.refused = refused
        self.code = code
        super().__init__(message)


@runtime_checkable
class Uplink(Protocol):
    """A transport (plugin kind ``uplink``; built-in: ``mqtt``)."""

    async def connect(
        self, client_id: str, will: Message, on_message: Callable[[str, bytes], None]
    ) -> Link:
        """Connect within the transport's own timeout as ``client_id`` (stable per node and
        uplink); ``will`` is what the far side publishes if the link dies without `close()`;
        inbound messages on subscribed topics go to ``on_message(topic, payload)``. Any
        earlier link is dropped first. Raises `TransportError`."""
        ...

    def send(self, message: Message) -> Awaitable[Delivery]:
        """Queue ``message`` at once (messages go out in call order) and return an awaitable
        of its `Delivery`. It raises `TransportError` if the link is lost before the answer:
        the message may or may not have arrived."""
        ...

    async def subscribe(self, topic: str) -> None:
        """Deliver inbound messages on ``topic`` to ``on_message``. Raises `TransportError`."""
        ...

    async def wait_lost(self) -> str:
        """Return the reason once the current link is lost (at once if there is none)."""
        ...

    async def close(self, timeout: float) -> None:
        """Disconnect cleanly within ``timeout`` (the will is not published); with 0, drop the
        link at once (the far side publishes the will). Never raises."""
        ...
