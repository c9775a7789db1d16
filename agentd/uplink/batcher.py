"""`Batcher`: reads the rows after each stream's position, closes batches on rows, bytes or
time, and sends them (rows, and gap records for ranges the store removed) while the window
has room. The engine owns what happens to the answers."""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from agentd.uplink import envelope as env
from agentd.uplink.base import Delivery, Message, Uplink
from agentd.uplink.config import UplinkSettings
from agentd.uplink.parts import (
    Batch,
    Prefetch,
    RateLimit,
    StreamCursor,
    contiguous,
    split_gap,
)
from agentd.uplink.storeview import RowLike, UplinkStore

__all__ = ["PACKET_OVERHEAD", "Batcher"]

log = logging.getLogger("agentd.uplink")

#: a PUBLISH's fixed header, topic and properties, for the Maximum Packet Size bound
PACKET_OVERHEAD: Final = 512
_UNLIMITED: Final = 1 << 62
#: batches read from the store at a time while catching up (memory: this many per stream)
READ_AHEAD: Final = 4
_DATA: Final = operator.attrgetter("data")


class Batcher:
    def __init__(
        self,
        name: str,
        settings: UplinkSettings,
        store: UplinkStore,
        transport: Uplink,
        node: str,
        topics: dict[str, str],
        on_sent: Callable[[asyncio.Future[Delivery]], None],
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.transport = transport
        self.node = node
        self.topics = topics
        self._on_sent = on_sent
        self._content_type = env.CONTENT_TYPES[settings.format]
        self.rate = RateLimit(settings.catch_up_rate, settings.batch_bytes)
        #: set per connection from what the broker said (`configure`)
        self.window = settings.window
        self.max_payload = settings.batch_bytes
        self.max_packet: int | None = None

    def configure(self, receive_maximum: int, max_packet: int | None) -> None:
        """One slot stays free for status messages; a batch fits the broker's packet limit."""
        s = self.settings
        self.window = max(1, min(s.window, receive_maximum - 1))
        self.max_packet = max_packet
        self.max_payload = s.batch_bytes
        if max_packet:
            self.max_payload = max(1024, min(s.batch_bytes, max_packet - 4096))

    async def fill(
        self, streams: Iterable[StreamCursor], stopping: bool, lost: Callable[[], bool]
    ) -> float:
        """Send every batch that is ready while the window has room; returns how long to
        sleep before a partial batch or a blocked stream is due."""
        s = self.settings
        wait = s.batch_interval
        now = time.monotonic()
        streams = list(streams)
        for st in streams:
            while _inflight(streams) < self.window and not lost():
                if now < st.blocked_until:
                    wait = min(wait, st.blocked_until - now)
                    break
                head = self.store.stream_head(st.name)
                if (
                    st.read < head
                    and len(st.buffer) < s.batch_rows
                    and st.buffer_bytes < self.max_payload
                ):
                    await self._read(st, head)
                    if lost():
                        return 0.0
                    now = time.monotonic()
                if not st.buffer:
                    break
                full = (
                    len(st.buffer) >= s.batch_rows
                    or st.buffer_bytes >= self.max_payload
                    or st.read < head  # more rows wait behind this batch: catching up
                )
                due = st.buffer_since + s.batch_interval
                # the tail of a backlog goes at once: only a stream that was idle waits
                if not (full or st.catching_up or stopping or now >= due):
                    wait = min(wait, due - now)
                    break
                if (delay := self.rate.delay(min(st.buffer_bytes, self.max_payload))) > 0:
                    return min(wait, delay)
                st.catching_up = full
                self._send_rows(st)
        return max(wait, 0.0)

    async def _read(self, st: StreamCursor, head: int) -> None:
        s = self.settings
        pf, st.prefetch = st.prefetch, None
        if pf is not None and pf.gen == st.gen and pf.after == st.read and not st.buffer:
            rows, head = await pf.task, pf.head
        else:
            if pf is not None:
                pf.task.cancel()
            # a few batches per read: one thread hop to the store feeds several sends
            room = READ_AHEAD * self.max_payload - st.buffer_bytes
            rows = await self.store.stream_rows(
                st.name, st.read, READ_AHEAD * s.batch_rows - len(st.buffer), max(room, 1)
            )
        if not rows and not st.buffer:
            # nothing fitted the bytes left, or rows are gone: one row, whatever its size
            rows = await self.store.stream_rows(st.name, st.read, 1, _UNLIMITED)
        if rows and rows[0].id == st.read + 1:
            taken = contiguous(rows)
            if not st.buffer:
                # the interval runs from the row's commit, not from our read: the tail of a
                # backlog goes at once (a clock step only makes one batch early or late)
                waited = self.store.clock.wall() - taken[0].wall
                st.buffer_since = time.monotonic() - min(max(waited, 0.0), s.batch_interval)
            st.buffer.extend(taken)
            st.read = taken[-1].id
            overhead = env.row_overhead(self.store.boot_id)
            st.buffer_bytes += _data_bytes(taken) + overhead * len(taken)
            self._prefetch(st)
            return
        if st.buffer:
            return  # the buffer goes out first: a gap ends a batch
        last = rows[0].id - 1 if rows else head
        if last > st.read:
            await self._send_gaps(st, st.read + 1, last)

    def _prefetch(self, st: StreamCursor) -> None:
        """Catching up: read the next rows while the buffer goes out (the store reads on its
        own thread), so reading and sending overlap. At most one read ahead per stream."""
        head = self.store.stream_head(st.name)
        if st.read >= head or not st.catching_up:
            return
        task = asyncio.ensure_future(
            self.store.stream_rows(
                st.name,
                st.read,
                READ_AHEAD * self.settings.batch_rows,
                READ_AHEAD * self.max_payload,
            )
        )
        task.add_done_callback(_retrieve)
        st.prefetch = Prefetch(st.gen, st.read, head, task)

    def _send_rows(self, st: StreamCursor) -> None:
        """Send the batch at the front of the buffer: up to batch_rows rows and max_payload
        bytes (at least one row)."""
        overhead = env.row_overhead(self.store.boot_id)
        rows = st.buffer[: self.settings.batch_rows]
        size = _data_bytes(rows) + overhead * len(rows)
        if size > self.max_payload and len(rows) > 1:
            # the bytes bound closes this batch early: find where, row by row
            n = size = 0
            for r in rows:
                add = len(r.data) + overhead
                if n and size + add > self.max_payload:
                    break
                n += 1
                size += add
            rows = rows[:n]
        del st.buffer[: len(rows)]
        st.buffer_bytes -= size
        limit = self.max_packet
        if limit and len(rows) == 1 and size + PACKET_OVERHEAD > limit:
            # one row larger than the broker takes would block its stream forever
            self._queue_gap(st, rows[0].id, rows[0].id, "uplink.too_large")
            return
        e = env.rows_envelope(
            self.node, self.store.epoch, self.store.boot_id, st.name, rows, self.settings.format
        )
        payload = env.encode(e, self.settings.format)
        self.rate.take(len(payload))
        if e.first <= st.sent_high:
            st.duplicates += min(e.last, st.sent_high) - e.first + 1
        st.sent_high = max(st.sent_high, e.last)
        msg = Message(topic=self.topics[st.name], payload=payload, content_type=self._content_type)
        self._dispatch(st, e.first, e.last, len(rows), msg)

    async def _send_gaps(self, st: StreamCursor, first: int, last: int) -> None:
        """Rows ``first..last`` are gone: one gap record per reason the store logged."""
        drops = await self.store.stream_drops(st.name, first, last)
        for lo, hi, reason in split_gap(first, last, drops):
            self._queue_gap(st, lo, hi, reason)
        st.read = last

    def _queue_gap(self, st: StreamCursor, first: int, last: int, reason: str) -> None:
        if last > st.gap_high:  # count a range once, however often it is resent
            lo = max(first, st.gap_high + 1)
            st.gap_rows += last - lo + 1
            st.gaps += 1
            st.gap_high = last
            log.warning(
                "uplink %s: %s rows %d..%d are gone (%s): sending a gap record",
                self.name,
                st.name,
                first,
                last,
                reason,
            )
            self.store.journal_event(
                "uplink.gap",
                {
                    "uplink": self.name,
                    "stream": st.name,
                    "from": first,
                    "to": last,
                    "reason": reason,
                },
            )
        e = env.GapEnvelope(
            node=self.node,
            epoch=self.store.epoch,
            boot_id=self.store.boot_id,
            stream=st.name,
            first=first,
            last=last,
            reason=reason,
        )
        msg = Message(
            topic=self.topics[st.name],
            payload=env.encode(e, self.settings.format),
            content_type=self._content_type,
        )
        st.sent_high = max(st.sent_high, last)
        self._dispatch(st, first, last, 0, msg)

    def _dispatch(self, st: StreamCursor, first: int, last: int, rows: int, msg: Message) -> None:
        fut = asyncio.ensure_future(self.transport.send(msg))
        self._on_sent(fut)
        st.inflight.append(
            Batch(st.name, first, last, rows, len(msg.payload), st.gen, fut, time.monotonic())
        )


def _data_bytes(rows: Sequence[RowLike]) -> int:
    # a drain sends every row: sum in C, not a Python loop per row
    return sum(map(len, map(_DATA, rows)))


def _retrieve(task: asyncio.Future[Sequence[RowLike]]) -> None:
    if not task.cancelled():
        task.exception()  # a read nobody awaits any more (a rewind) must not log an error


def _inflight(streams: Sequence[StreamCursor]) -> int:
    return sum(len(st.inflight) for st in streams)
