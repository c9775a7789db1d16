"""The fleet command protocol on the wire (docs/uplink.md, "Commands", is its specification;
change both together).

A request is one JSON object (msgpack when the MQTT 5 content type says
``application/msgpack``) on ``<prefix>/<node>/cmd/<verb>`` or
``<prefix>/group/<name>/cmd/<verb>``; the reply is a `Reply` on the request's MQTT 5 response
topic with its correlation data, or on ``<prefix>/<node>/reply/<id>`` (MQTT 3.1.1). Unknown
fields are refused, so a misspelt ``deadlne`` is an error and not a command without a deadline.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Final, Literal, cast

import msgspec
from msgspec import Meta

from agentd.uplink.base import Stream

__all__ = [
    "VERBS",
    "ActRequest",
    "AnyRequest",
    "ConfigRequest",
    "ErrorCode",
    "ErrorInfo",
    "ReplayRequest",
    "Reply",
    "Request",
    "Verb",
    "decode_request",
    "encode_reply",
    "error_reply",
    "sign",
    "verify",
]

Verb = Literal["act", "status", "health", "uplink", "config", "replay"]
VERBS: Final[tuple[Verb, ...]] = ("act", "status", "health", "uplink", "config", "replay")

#: every way a command is refused or fails, one word each (the message says the rest)
ErrorCode = Literal[
    "malformed",  # not a request of this verb (bad JSON, a missing or unknown field)
    "unknown_verb",
    "not_allowed",  # not on [commands] allow
    "expired",  # past its deadline or MQTT 5 message expiry
    "no_deadline",
    "unsigned",  # [commands] signature is required and there is none
    "bad_signature",
    "rate_limited",
    "busy",  # too many commands at once, or a config already on probation
    "not_found",  # no such actuator
    "rejected",  # the action's params do not validate
    "skipped",
    "failed",
    "timeout",
    "in_doubt",  # claimed before a crash; whether it ran is not recorded
    "invalid_config",
    "rolled_back",
    "unavailable",  # the store cannot record a claim; no config file to commit to; ...
    "too_large",
    "internal",
]

#: a command id is used in a reply topic: one topic level, no wildcards
CommandId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]


class _Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    id: CommandId
    #: Unix seconds; the command is refused after it
    deadline: float | None = None
    #: who sent it, when the broker cannot say (MQTT 5: the ``sender`` user property wins)
    sender: Annotated[str, Meta(max_length=128)] | None = None


class Request(_Request, frozen=True):
    """``status``, ``health``, ``uplink``: no arguments."""


class ActRequest(_Request, frozen=True):
    actuator: Annotated[str, Meta(min_length=1, max_length=128)]
    action: Annotated[str, Meta(min_length=1, max_length=128)]
    params: dict[str, object] = {}
    priority: int = 0


class ConfigRequest(_Request, frozen=True):
    #: the complete TOML config
    config: Annotated[str, Meta(min_length=1, max_length=1024 * 1024)]
    version: Annotated[str, Meta(pattern=r"^[^\x00-\x1f]{1,64}$")]
    #: seconds of health watching before the config is committed to disk
    probation: Annotated[float, Meta(ge=0, le=86_400)] | None = None
    #: the health that rolls the config back
    rollback_on: Literal["failing", "degraded"] = "failing"


class ReplayRequest(_Request, frozen=True):
    stream: Stream
    first: Annotated[int, Meta(ge=1)] = msgspec.field(name="from")
    last: Annotated[int, Meta(ge=1)] = msgspec.field(name="to")


REQUEST_TYPES: Final[dict[Verb, type[_Request]]] = {
    "act": ActRequest,
    "status": Request,
    "health": Request,
    "uplink": Request,
    "config": ConfigRequest,
    "replay": ReplayRequest,
}


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    code: ErrorCode
    message: str
    #: every problem, when there are several (check-config's errors for ``config``)
    details: list[str] = []


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    ok: bool
    result: object = None
    error: ErrorInfo | None = None
    #: the recorded outcome of an earlier delivery of the same id (nothing ran again)
    duplicate: bool = False
    #: False on the interim reply of a ``config`` (applied, on probation); the final one follows
    final: bool = True


def error_reply(cid: str, code: ErrorCode, message: str, details: list[str] | None = None) -> Reply:
    return Reply(
        id=cid, ok=False, error=ErrorInfo(code=code, message=message, details=details or [])
    )


_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_decoders_json = {v: msgspec.json.Decoder(t) for v, t in REQUEST_TYPES.items()}
_decoders_msgpack = {v: msgspec.msgpack.Decoder(t) for v, t in REQUEST_TYPES.items()}


class _IdOnly(msgspec.Struct):
    id: str = ""


AnyRequest = Request | ActRequest | ConfigRequest | ReplayRequest


def decode_request(verb: Verb, payload: bytes, msgpack: bool) -> AnyRequest | str:
    """The typed request, or a one-line reason it is not one."""
    dec = (_decoders_msgpack if msgpack else _decoders_json)[verb]
    try:
        return cast(AnyRequest, dec.decode(payload))
    except msgspec.ValidationError as exc:
        return f"{verb}: {exc}"
    except msgspec.DecodeError as exc:
        return f"not {'msgpack' if msgpack else 'JSON'}: {exc}"


def salvage_id(payload: bytes, msgpack: bool) -> str:
    """The id of a request that does not decode, if one can be read (for the reply)."""
    try:
        if msgpack:
            got = msgspec.msgpack.decode(payload, type=_IdOnly)
        else:
            got = msgspec.json.decode(payload, type=_IdOnly)
    except msgspec.MsgspecError:
        return ""
    ok = 0 < len(got.id) <= 128 and all(c.isalnum() or c in "_.:@-" for c in got.id)
    return got.id if ok else ""


def encode_reply(reply: Reply, msgpack: bool) -> bytes:
    return _msgpack.encode(reply) if msgpack else _json.encode(reply)


def sign(key: bytes, topic: str, payload: bytes) -> str:
    """``hmac-sha256=<hex>`` over the topic, a NUL and the payload: a signature binds the
    command to its node and verb, so it cannot be replayed on another topic."""
    mac = hmac.new(key, topic.encode() + b"\x00" + payload, hashlib.sha256).hexdigest()
    return f"hmac-sha256={mac}"


def verify(key: bytes, topic: str, payload: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, topic, payload), signature.strip())
