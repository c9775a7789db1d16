"""How a control request's failures become replies: the error frame, the one-line message for
a bad argument, the error code and message for an exception a command raised, and what can be
said about a frame that is not a request. `agentd.control.connection` counts and writes them."""

from __future__ import annotations

import logging

import msgspec

from agentd.control.commands import CommandError
from agentd.control.protocol import ErrorCode, ErrorInfo, Response, encode_frame
from agentd.errors import AgentdError, ConfigError, StoreError, VersionConflict

__all__ = ["args_message", "bad_request_reply", "error_frame", "failure_reply"]

log = logging.getLogger("agentd.control")

_any_decoder = msgspec.msgpack.Decoder()


def error_frame(
    rid: int | str | None, code: ErrorCode, message: str, details: list[str] | None = None
) -> bytes:
    error = ErrorInfo(code=code, message=message, details=details or [])
    return encode_frame(Response(id=rid, error=error))


def failure_reply(name: str, exc: BaseException) -> tuple[ErrorCode, str, list[str]]:
    """The error code, message and details for command ``name`` failing with ``exc``; an
    unexpected exception is logged with its traceback (the peer gets one line)."""
    details: list[str] = []
    code: ErrorCode
    if isinstance(exc, CommandError):
        code, message, details = exc.code, str(exc), exc.details
    elif isinstance(exc, VersionConflict):
        code, message = "conflict", str(exc)
    elif isinstance(exc, ConfigError):
        code, message, details = "invalid_config", str(exc), exc.errors
    elif isinstance(exc, StoreError | AgentdError):
        code, message = "failed", str(exc)
    elif isinstance(exc, msgspec.ValidationError):
        code, message = "bad_args", f"{name}: {args_message(exc)}"
    else:
        code, message = "internal", f"{name} failed: {type(exc).__name__}: {exc}"
        log.error("control command %s failed", name, exc_info=exc)
    return code, message, details


def bad_request_reply(body: bytes, exc: Exception) -> tuple[int | str | None, str]:
    """The request id (if the frame carries one) and the message for a frame that did not
    decode as a `Request`."""
    rid: int | str | None = None
    try:
        raw = _any_decoder.decode(body)
    except Exception:  # noqa: BLE001 - any decoding failure means the same to the peer
        return None, "the frame is not a msgpack message"
    if isinstance(raw, dict):
        value = raw.get("id")
        if isinstance(value, int | str) and not isinstance(value, bool):
            rid = value
    if isinstance(exc, msgspec.ValidationError):
        return rid, f"not a request: {args_message(exc)}"
    return rid, "the frame is not a msgpack message"


def args_message(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    head, sep, path = text.partition(" - at `$")
    if sep:
        return f"{path.rstrip('`').lstrip('.')}: {head}"
    return text
