"""The control protocol: length-prefixed msgpack frames (see docs/protocol.md).

A frame is a 4-byte big-endian unsigned length followed by that many bytes of one msgpack
message. A client sends `Request`s; the server answers each with a `Response` carrying the same
``id`` and either ``result`` or ``error``. A `watch` request is answered once, then followed by
`Event` frames with the watch request's ``id`` until the client disconnects. Requests on one
connection may be pipelined; responses are matched by ``id`` (fast commands are answered in
order, slow ones when they finish).

Imported by agentctl: keep it free of asyncio and the daemon.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import msgspec

__all__ = [
    "ADMIN_COMMANDS",
    "DEFAULT_MAX_FRAME",
    "ERROR_CODES",
    "HEADER",
    "PROTOCOL_VERSION",
    "ErrorInfo",
    "Event",
    "FrameBuffer",
    "FrameTooLarge",
    "Message",
    "Request",
    "Response",
    "decode_message",
    "encode_frame",
]

#: bumped when a change would break an existing client; new commands and fields do not
PROTOCOL_VERSION: Final = 1
HEADER: Final = struct.Struct(">I")
DEFAULT_MAX_FRAME: Final = 1024 * 1024

#: every ``error.code`` the server sends, with what it means
ERROR_CODES: Final = {
    "bad_frame": "the frame is too large or malformed; the server closes the connection",
    "bad_request": "the frame is not a msgpack map of the request shape",
    "unsupported_version": "the client asked for a protocol version this server does not speak",
    "unknown_command": "no such command",
    "bad_args": "the command's arguments are missing or of the wrong type",
    "forbidden": "the peer's role does not allow this command",
    "not_found": "the named plugin, session or actuator does not exist",
    "conflict": "a compare-and-set write found another version",
    "invalid_config": "reload refused: the new config is invalid (details lists the errors)",
    "unavailable": "the part of the daemon this needs is disabled or not running (e.g. the store)",
    "busy": "too many connections or requests in flight",
    "too_large": "the result does not fit in one frame (ask for less: --limit)",
    "failed": "the command ran and failed (message says why)",
    "shutting_down": "the daemon is stopping",
    "internal": "a bug in agentd: the message names it, the daemon keeps running",
}

#: commands that need the ``admin`` role (anything that changes state)
ADMIN_COMMANDS: Final = frozenset(
    {"tick", "pause", "resume", "reload", "act", "sessions.put", "sessions.delete", "flush"}
)


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    code: str
    message: str
    #: extra lines, e.g. one per config validation error for ``invalid_config``
    details: list[str] = []


# gc=False: these are made per request and never form cycles; the collector need not track them
class Request(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    #: chosen by the client (an integer or a string), echoed in the response
    id: int | str
    cmd: str
    args: dict[str, Any] = {}
    #: W3C trace context of the caller: ``00-<trace id>-<span id>-<flags>``
    traceparent: str | None = None


class Response(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    #: None only when the request's id could not be read (a malformed request)
    id: int | str | None
    result: Any = msgspec.UNSET
    error: ErrorInfo | msgspec.UnsetType = msgspec.UNSET


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One streamed item of a `watch`: ``id`` is the watch request's id."""

    id: int | str
    event: str
    data: Any


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Any frame the server sends, as a client decodes it: a response has ``result`` or
    ``error``; an event has ``event`` and ``data``."""

    id: int | str | None = None
    result: Any = msgspec.UNSET
    error: ErrorInfo | msgspec.UnsetType = msgspec.UNSET
    event: str | msgspec.UnsetType = msgspec.UNSET
    data: Any = None


_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(Message)


def encode_frame(message: Any, encoder: msgspec.msgpack.Encoder = _encoder) -> bytes:
    """One frame: the length header and the msgpack body."""
    buf = bytearray(HEADER.size)
    encoder.encode_into(message, buf, HEADER.size)
    HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
    return bytes(buf)


def decode_message(body: bytes | memoryview) -> Message:
    return _message_decoder.decode(body)


class FrameTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")


class FrameBuffer:
    """Accumulates bytes from a stream and cuts them into frame bodies."""

    __slots__ = ("_buf", "_pos", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self) -> bytes | None:
        """The next complete frame body, or None if more bytes are needed. Raises
        `FrameTooLarge` as soon as a header announces an oversized frame."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(buf, pos)
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        end = pos + HEADER.size + size
        if len(buf) < end:
            return None
        self._pos = end
        return bytes(buf[pos + HEADER.size : end])

    @property
    def pending(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos
