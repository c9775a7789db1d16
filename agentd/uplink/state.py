"""The operator's view of an uplink (``agentctl uplink``, health, metrics): plain Structs
made by `UplinkEngine.state()`."""

from __future__ import annotations

from typing import Literal

import msgspec

from agentd.uplink.base import Stream

__all__ = ["Phase", "StreamState", "UplinkHealth", "UplinkState"]

Phase = Literal["stopped", "connecting", "connected", "backoff", "stopping"]
UplinkHealth = Literal["ok", "degraded"]


class StreamState(msgspec.Struct, kw_only=True, frozen=True):
    stream: Stream
    #: the durable cursor: every id <= acked is acknowledged (or reported as a gap)
    acked: int
    #: the highest committed id in the journal
    head: int
    #: end_to_end: the consumer's watermark (None without end_to_end)
    confirmed: int | None
    #: rows committed but not yet acknowledged, their bytes, the oldest one's age (seconds)
    backlog_rows: int
    backlog_bytes: int
    oldest_age: float | None
    #: batches sent and not yet answered
    in_flight: int
    #: rows acknowledged since start
    delivered: int
    batches: int
    #: rows sent again after a lost link or a refused batch: downstream sees at most this many
    #: duplicates
    duplicates: int
    #: rows reported lost (gap records sent), and in how many records
    gap_rows: int
    gaps: int
    #: batches the broker refused (a PUBACK with a failure reason code)
    refused: int
    last_error: str | None


class UplinkState(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    node: str
    phase: Phase
    health: UplinkHealth
    #: why it is degraded (None when ok)
    reason: str | None
    connected: bool
    #: wall time of the last connect (connected) or of the loss of the link
    since: float | None
    protocol: str
    #: in-flight batches allowed: min(window, the broker's Receive Maximum - 1)
    window: int
    reconnects: int
    last_error: str | None
    epoch: str
    streams: tuple[StreamState, ...]
