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
from typing import Final, Literal, get_args

import msgspec

__all__ = [
    "ADMIN_COMMANDS",
    "DEFAULT_MAX_FRAME",
    "ERROR_CODES",
    "HEADER",
    "NIL",
    "PROTOCOL_VERSION",
    "CommandInfo",
    "Deleted",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "EventKind",
    "Flushed",
    "FrameBuffer",
    "FrameTooLarge",
    "HelloInfo",
    "LoopChange",
    "Message",
    "Reloaded",
    "Request",
    "Response",
    "ServerLimits",
    "StateEvent",
    "WatchStarted",
    "decode_message",
    "encode_frame",
]

#: bumped when a change would break an existing client; new commands and fields do not
PROTOCOL_VERSION: Final = 1
HEADER: Final = struct.Struct(">I")
DEFAULT_MAX_FRAME: Final = 1024 * 1024

ErrorCode = Literal[
    "bad_frame",
    "bad_request",
    "unsupported_version",
    "unknown_command",
    "bad_args",
    "forbidden",
    "not_found",
    "conflict",
    "invalid_config",
    "unavailable",
    "busy",
    "too_large",
    "failed",
    "shutting_down",
    "internal",
]

#: every ``error.code`` the server sends, with what it means
ERROR_CODES: Final[dict[ErrorCode, str]] = {
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


if tuple(ERROR_CODES) != get_args(ErrorCode):  # pragma: no cover - caught at import
    raise AssertionError("ERROR_CODES and ErrorCode disagree")


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    code: ErrorCode
    message: str
    #: extra lines, e.g. one per config validation error for ``invalid_config``
    details: list[str] = []


# gc=False: these are made per request and never form cycles; the collector need not track them
class Request(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    #: chosen by the client (an integer or a string), echoed in the response
    id: int | str
    cmd: str
    #: validated by the command's args Struct (``object``: any msgpack map until then)
    args: dict[str, object] = {}
    #: W3C trace context of the caller: ``00-<trace id>-<span id>-<flags>``
    traceparent: str | None = None


class Response(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    #: None only when the request's id could not be read (a malformed request)
    id: int | str | None
    #: a reply Struct (model.py, or the small ones below), a list of them, or a string
    result: object = msgspec.UNSET
    error: ErrorInfo | msgspec.UnsetType = msgspec.UNSET


EventKind = Literal["tick", "action", "state"]


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One streamed item of a `watch`: ``id`` is the watch request's id; ``data`` is a
    `TickReport` (tick), an `ActionResult` (action) or a `StateEvent` (state), pre-encoded
    once for every watcher."""

    id: int | str
    event: EventKind
    data: msgspec.Raw


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Any frame the server sends, as a client decodes it: a response has ``result`` or
    ``error``; an event has ``event`` and ``data``. ``result`` and ``data`` stay raw msgpack
    until the caller decodes them into the reply Struct it expects."""

    id: int | str | None = None
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: ErrorInfo | msgspec.UnsetType = msgspec.UNSET
    #: a str, not `EventKind`: a newer server may stream kinds this client skips
    event: str | msgspec.UnsetType = msgspec.UNSET
    data: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


# -- replies of the control plane's own commands (the daemon's are in agentd/model.py) -------
class CommandInfo(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["none", "read", "admin"]
    help: str


class ServerLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_frame: int
    max_connections: int
    idle_timeout: float
    watch_buffer: int


class HelloInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``hello``: what this server speaks and what the caller may do."""

    protocol: int
    server: str
    pid: int
    role: Literal["none", "read", "admin"]
    uid: int
    commands: dict[str, CommandInfo]
    limits: ServerLimits


class LoopChange(msgspec.Struct, frozen=True, kw_only=True):
    """``pause`` / ``resume``: the loop's state now, and whether this request changed it."""

    state: Literal["paused", "running"]
    changed: bool


class Reloaded(msgspec.Struct, frozen=True, kw_only=True):
    reloaded: bool
    generation: int


class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    deleted: str


class Flushed(msgspec.Struct, frozen=True, kw_only=True):
    flushed: bool


class WatchStarted(msgspec.Struct, frozen=True, kw_only=True):
    watching: list[str]
    buffer: int


class StateEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A ``state`` watch event; ``generation`` only for ``reloaded``."""

    state: Literal["paused", "running", "reloaded"]
    generation: int | None = None


#: msgpack nil: the raw result of a response that carried none
NIL: Final = msgspec.Raw(b"\xc0")

_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(Message)


def encode_frame(message: object, encoder: msgspec.msgpack.Encoder = _encoder) -> bytes:
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

    def ready(self) -> bool:
        """A complete frame is buffered (raises `FrameTooLarge` like `next`)."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER.size:
            return False
        size: int = HEADER.unpack_from(buf, pos)[0]
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        return len(buf) - pos - HEADER.size >= size

    def clear(self) -> None:
        self._buf.clear()
        self._pos = 0

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
