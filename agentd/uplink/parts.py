"""The engine's small parts: per-stream bookkeeping, the batch in flight, the catch-up rate
limit, the full-jitter backoff and the splitting of a gap by the store's drop log."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentd.model import UplinkStreamStatus
from agentd.uplink.base import Delivery, Stream
from agentd.uplink.storeview import DroppedLike, RowLike

__all__ = [
    "Batch",
    "Prefetch",
    "RateLimit",
    "StreamCursor",
    "contiguous",
    "describe",
    "full_jitter",
    "split_gap",
]


@dataclass(slots=True)
class Batch:
    stream: Stream
    first: int
    last: int
    rows: int  # 0 for a gap record
    size: int
    gen: int
    fut: asyncio.Future[Delivery]
    sent_at: float


@dataclass(slots=True)
class Prefetch:
    """A read of the rows after ``after`` started while catching up (``head`` as it was
    then, for gap detection); used only if the stream is still at ``after`` in ``gen``."""

    gen: int
    after: int
    head: int
    task: asyncio.Future[Sequence[RowLike]]


@dataclass(slots=True)
class StreamCursor:
    name: Stream
    acked: int = 0
    #: the highest id read from the store (buffered, in flight or acknowledged)
    read: int = 0
    buffer: list[RowLike] = field(default_factory=list)
    buffer_bytes: int = 0
    buffer_since: float = 0.0
    inflight: deque[Batch] = field(default_factory=deque)
    #: bumped on a rewind: answers for batches of an older generation are ignored
    gen: int = 0
    sent_high: int = 0
    gap_high: int = 0
    confirmed: int | None = None
    blocked_until: float = 0.0
    failures: int = 0
    delivered: int = 0
    batches: int = 0
    duplicates: int = 0
    gap_rows: int = 0
    gaps: int = 0
    refused: int = 0
    last_error: str | None = None
    backlog_rows: int = 0
    backlog_bytes: int = 0
    #: the oldest unacknowledged row's wall time, when it can be trusted (synchronized)
    oldest_wall: float | None = None
    prefetch: Prefetch | None = None
    #: the last batch sent was full: a backlog is being drained
    catching_up: bool = False
    #: monotonic time the backlog was first seen non-empty (the age when wall time is not)
    backlog_since: float | None = None

    def snapshot(
        self, head: int, now: float, max_age: float | None
    ) -> tuple[UplinkStreamStatus, list[str]]:
        """The operator's view of this stream, and why it makes the uplink degraded."""
        age = None
        if self.oldest_wall is not None:
            age = max(0.0, now - self.oldest_wall)
        elif self.backlog_since is not None:
            age = time.monotonic() - self.backlog_since
        problems = []
        if age is not None and max_age is not None and age > max_age:
            problems.append(f"{self.name} backlog is {age:.0f}s old")
        if self.failures:
            problems.append(f"{self.name}: {self.last_error}")
        return UplinkStreamStatus(
            stream=self.name,
            acked=self.acked,
            head=head,
            confirmed=self.confirmed,
            backlog=self.backlog_rows,
            backlog_bytes=self.backlog_bytes,
            oldest_age=age,
            in_flight=len(self.inflight),
            delivered=self.delivered,
            batches=self.batches,
            duplicates=self.duplicates,
            gap_rows=self.gap_rows,
            gaps=self.gaps,
            refused=self.refused,
            last_error=self.last_error,
        ), problems


class RateLimit:
    """A token bucket in payload bytes: ``rate`` bytes/s, bursts up to one batch (or one
    second of rate). None: no limit."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: int | None, batch_bytes: int) -> None:
        self._rate = rate
        self._burst = float(max(rate or 0, batch_bytes))
        self._tokens = self._burst
        self._at = time.monotonic()

    def delay(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go (0: now)."""
        if not self._rate:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        need = min(float(size), self._burst)
        return 0.0 if self._tokens >= need else (need - self._tokens) / self._rate

    def take(self, size: int) -> None:
        if self._rate:
            self._tokens -= size


def full_jitter(rng: random.Random, attempt: int, base: float, cap: float) -> float:
    """AWS's "full jitter": uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


def split_gap(first: int, last: int, drops: Sequence[DroppedLike]) -> list[tuple[int, int, str]]:
    """Cover ``first..last`` with the store's logged drop ranges; what no range covers is
    ``unknown`` (it should not happen: the store logs every deletion)."""
    out: list[tuple[int, int, str]] = []
    at = first
    for d in sorted(drops, key=lambda d: d.first):
        lo, hi = max(d.first, at), min(d.last, last)
        if hi < lo:
            continue
        if lo > at:
            out.append((at, lo - 1, "unknown"))
        out.append((lo, hi, d.reason))
        at = hi + 1
    if at <= last:
        out.append((at, last, "unknown"))
    return out


def contiguous(rows: Sequence[RowLike]) -> list[RowLike]:
    """The leading run of consecutive ids (ids only ever increase: equal spans mean none
    is missing)."""
    if rows[-1].id - rows[0].id == len(rows) - 1:
        return list(rows)
    out = [rows[0]]
    for r in rows[1:]:
        if r.id != out[-1].id + 1:
            break
        out.append(r)
    return out


def describe(got: Delivery) -> str:
    return f"0x{got.code:02x} {got.reason}" if got.code is not None else got.reason or "refused"
