"""What happens to a stream's `StreamCursor` outside the send path: a rewind after a loss or a
refusal, the checks the pump makes (an answer overdue, everything drained), the backlog figures
for `state()` and health, and the consumer's end-to-end watermarks. `UplinkEngine` owns the
cursors and calls these; none of them sends anything."""

from __future__ import annotations

import time
from collections.abc import Iterable

from agentd.uplink.envelope import Ack
from agentd.uplink.parts import StreamCursor
from agentd.uplink.storeview import UplinkStore

__all__ = ["apply_watermarks", "count_backlog", "drained", "first_overdue", "rewind"]


def rewind(st: StreamCursor) -> None:
    """Forget what is buffered and in flight: the next read starts after the cursor
    (end_to_end: after the consumer's watermark), and old answers are ignored."""
    st.gen += 1
    st.inflight.clear()
    st.buffer.clear()
    if st.prefetch is not None:
        st.prefetch.task.cancel()
        st.prefetch = None
    st.buffer_bytes = 0
    start = st.acked if st.confirmed is None else min(st.confirmed, st.acked)
    st.read = start


def first_overdue(streams: Iterable[StreamCursor], limit: float) -> float | None:
    """``limit`` if the oldest batch in flight on some stream has waited longer for its
    answer, else None."""
    now = time.monotonic()
    for st in streams:
        if st.inflight and now - st.inflight[0].sent_at > limit:
            return limit
    return None


def drained(streams: Iterable[StreamCursor], store: UplinkStore) -> bool:
    """Nothing left to send or to wait for on any stream that is not backing off."""
    now = time.monotonic()
    return not any(
        (st.inflight or st.buffer or st.read < store.stream_head(st.name))
        and now >= st.blocked_until
        for st in streams
    )


async def count_backlog(store: UplinkStore, streams: Iterable[StreamCursor], now: float) -> None:
    """Refresh each stream's backlog figures (rows and bytes after its cursor, and their
    age); ``now`` is the monotonic time of this refresh."""
    for st in streams:
        if st.acked >= store.stream_head(st.name):
            # nothing committed above the cursor: no read (an idle stream costs the store's
            # thread nothing; most refreshes find two of the three streams so)
            rows = size = 0
        else:
            b = await store.stream_backlog(st.name, st.acked)
            rows, size = b.rows, b.bytes
        st.backlog_rows, st.backlog_bytes = rows, size
        if not rows:
            st.backlog_since = st.oldest_wall = None
            continue
        if st.backlog_since is None:
            st.backlog_since = now
        # a wall time is an age only if the row was written, and is read, synchronized
        # (a Pi boots in 1970 and steps at the first NTP sync); else: how long we've lagged
        first = await store.stream_rows(st.name, st.acked, 1, 1)
        trusted = bool(first) and first[0].synced and store.clock.synced()
        st.oldest_wall = first[0].wall if trusted else None


def apply_watermarks(
    ack: Ack, streams: Iterable[StreamCursor], store: UplinkStore, uplink: str, e2e_key: str
) -> None:
    """The consumer confirmed rows up to its watermarks: lift the retention hold to them
    and keep them durable (never past what was sent, never backwards)."""
    for st in streams:
        mark = getattr(ack, st.name)
        if mark is None:
            continue
        mark = min(int(mark), st.sent_high)
        if st.confirmed is None or mark > st.confirmed:
            st.confirmed = mark
            store.hold_retention(uplink, st.name, mark)
            store.save_cursor(e2e_key, st.name, mark)
