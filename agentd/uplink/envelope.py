"""The wire format (docs/uplink.md is its specification; change both together).

Stream messages on ``<prefix>/<node>/<stream>`` are one of two envelopes, told apart by
``kind``: ``rows`` carries the stored rows ``first..last`` (contiguous ids, each row's msgpack
blob embedded as it is stored, not re-encoded), ``gap`` says rows ``from..to`` are gone and why.
``<prefix>/<node>/status`` (retained) is the birth/will `Status`; a consumer in end-to-end mode
publishes an `Ack` (retained) on ``<prefix>/<node>/ack``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import msgspec

from agentd.uplink.base import Stream
from agentd.uplink.config import Format
from agentd.uplink.storeview import RowLike

__all__ = [
    "CONTENT_TYPES",
    "VERSION",
    "Ack",
    "GapEnvelope",
    "Row",
    "RowsEnvelope",
    "Status",
    "decode_ack",
    "encode",
    "row_overhead",
    "rows_envelope",
]

VERSION: Final = 1
CONTENT_TYPES: Final[dict[Format, str]] = {
    "msgpack": "application/msgpack",
    "json": "application/json",
}


class Row(msgspec.Struct, array_like=True, frozen=True):
    """``[id, wall, synced, boot_id, data]``; ``data`` is the stored msgpack value (an
    Observation, an ActionResult or an event) embedded as is."""

    id: int
    wall: float
    synced: bool
    boot_id: str
    data: msgspec.Raw | object


class RowsEnvelope(msgspec.Struct, kw_only=True, frozen=True):
    v: int = VERSION
    kind: Literal["rows"] = "rows"
    node: str
    epoch: str
    boot_id: str
    stream: Stream
    first: int
    last: int
    rows: list[Row]


class GapEnvelope(msgspec.Struct, kw_only=True, frozen=True):
    v: int = VERSION
    kind: Literal["gap"] = "gap"
    node: str
    epoch: str
    boot_id: str
    stream: Stream
    first: int = msgspec.field(name="from")
    last: int = msgspec.field(name="to")
    reason: str


class Status(msgspec.Struct, kw_only=True, frozen=True):
    v: int = VERSION
    node: str
    state: Literal["online", "offline"]
    #: offline: True after a graceful stop, False when published by the broker as the will
    clean: bool = False
    version: str
    epoch: str
    boot_id: str
    #: wall time the status was made
    at: float
    #: rows not yet acknowledged per stream (by id: head - cursor)
    backlog: dict[str, int] = {}


class Ack(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=False):
    """The consumer's watermark: every row id <= it is durably processed, per stream."""

    epoch: str
    observations: int | None = None
    actions: int | None = None
    events: int | None = None


_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
_ack_msgpack = msgspec.msgpack.Decoder(Ack)
_ack_json = msgspec.json.Decoder(Ack)


def rows_envelope(
    node: str, epoch: str, boot_id: str, stream: Stream, rows: Sequence[RowLike], fmt: Format
) -> RowsEnvelope:
    if fmt == "msgpack":
        out = [Row(r.id, r.wall, r.synced, r.boot_id, msgspec.Raw(r.data)) for r in rows]
    else:  # JSON cannot embed msgpack: the one place a row is decoded
        out = [Row(r.id, r.wall, r.synced, r.boot_id, msgspec.msgpack.decode(r.data)) for r in rows]
    return RowsEnvelope(
        node=node,
        epoch=epoch,
        boot_id=boot_id,
        stream=stream,
        first=rows[0].id,
        last=rows[-1].id,
        rows=out,
    )


def encode(msg: RowsEnvelope | GapEnvelope | Status, fmt: Format) -> bytes:
    return _msgpack.encode(msg) if fmt == "msgpack" else _json.encode(msg)


def row_overhead(boot_id: str) -> int:
    """Bytes an envelope adds per row around its data, at most (for the size bound)."""
    return 32 + len(boot_id)


def decode_ack(payload: bytes) -> Ack | None:
    """An Ack in either format, or None for anything else (logged by the caller)."""
    for dec in (_ack_msgpack, _ack_json):
        try:
            return dec.decode(payload)
        except msgspec.DecodeError:
            continue
    return None
