"""`StreamView`: the journals as streams for the uplink (issue 14), on top of the group-commit
writer: rows after a cursor exactly as stored, the logged removals that explain missing ids,
heads and backlogs, and the per-uplink cursors and retention holds, which ride the group commit
as coalesced "marks" (one queued write per cursor, however often it is saved)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentd.errors import StoreError
from agentd.store import streams as st
from agentd.store.batch import Mark
from agentd.store.clock import Clock
from agentd.store.journal import STREAMS, Stream
from agentd.store.streams import Backlog, DroppedRange, StreamRow
from agentd.store.writer import GroupCommit, wait_event

__all__ = ["StreamView", "stream_name"]

log = logging.getLogger("agentd.store")


class StreamView(GroupCommit):
    """The uplink's side of the store (`Store` is one)."""

    clock: Clock
    _epoch: str

    def _init_streams(self) -> None:
        #: latest value of each uplink cursor and hold (written through the group commit)
        self._marks: dict[Mark, int | None] = {}
        #: marks with a write queued that has not been taken into a batch yet
        self._marks_queued: set[Mark] = set()
        #: set (and replaced) by every commit that moved a journal's head
        self._heads_moved = asyncio.Event()

    @property
    def epoch(self) -> str:
        """This database's id (128-bit hex), made when it was created; a fresh database after
        corruption gets a new one. "" until opened."""
        return self._epoch

    @property
    def boot_id(self) -> str:
        """The kernel's id of this boot, stamped on every journal row."""
        return self.clock.boot_id

    async def stream_rows(
        self, stream: Stream, after: int, limit: int, max_bytes: int
    ) -> list[StreamRow]:
        """Committed rows of ``stream`` with ids above ``after``, in id order: at most ``limit``
        rows and (past the first) ``max_bytes`` of data. A missing id is a row retention (or
        corruption) removed: `stream_drops` says which and why."""
        name = stream_name(stream)
        rows, corrupt = await self.read(st.rows, name, after, limit, max_bytes)
        if corrupt:
            log.error(
                "store: %d rows of the %s journal in %s are corrupt (their checksums do not "
                "match); removed and logged as dropped: ids %s",
                len(corrupt),
                name,
                self.path,
                ", ".join(map(str, corrupt[:10])),
            )
            with contextlib.suppress(StoreError):  # degraded: reported again next time
                await self.write("corrupt", name, corrupt)
        return rows

    async def stream_drops(self, stream: Stream, first: int, last: int) -> list[DroppedRange]:
        """The logged removals of ``stream`` that overlap ids ``first..last``, in id order."""
        return await self.read(st.drops, stream_name(stream), first, last)

    def stream_head(self, stream: Stream) -> int:
        """The highest committed id of ``stream`` (0 if none yet)."""
        return self.journals[stream_name(stream)].head

    async def wait_head(self, stream: Stream, after: int, timeout: float) -> int:
        """``stream``'s head once it is above ``after`` (rows to send), or whatever it is after
        ``timeout`` seconds: an uplink waits on commits instead of polling."""
        name = stream_name(stream)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.journals[name].head <= after:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            await wait_event(self._heads_moved, remaining)
        return self.journals[name].head

    def _moved_heads(self) -> None:
        moved, self._heads_moved = self._heads_moved, asyncio.Event()
        moved.set()

    async def stream_backlog(self, stream: Stream, after: int) -> Backlog:
        """The committed rows of ``stream`` above ``after``: count, bytes, oldest wall time."""
        return await self.read(st.backlog, stream_name(stream), after)

    async def load_cursors(self, uplink: str) -> dict[Stream, int]:
        """``uplink``'s acknowledged id per stream (0: nothing acknowledged), including saves
        not yet committed."""
        got = await self.read(st.load_cursors, uplink)
        for stream in STREAMS:
            pending = self._marks.get(("cursor", uplink, stream))
            if pending is not None and pending > got[stream]:
                got[stream] = pending
        for stream, acked in got.items():
            key: Mark = ("cursor", uplink, stream)
            if (self._marks.get(key) or 0) < acked:
                self._marks[key] = acked
        return got

    def save_cursor(self, uplink: str, stream: Stream, acked: int) -> None:
        """Record that ``uplink`` has every row of ``stream`` up to ``acked``. Non-blocking:
        committed with the next group commit (``await flush()`` to wait for it); saves of one
        cursor coalesce, and a cursor never moves backwards."""
        key: Mark = ("cursor", uplink, stream_name(stream))
        if acked <= (self._marks.get(key) or 0):
            return
        self._set_mark(key, acked)

    def hold_retention(self, uplink: str, stream: Stream, keep_after: int | None) -> None:
        """Keep rows of ``stream`` with ids above ``keep_after`` from retention (an uplink with
        end-to-end acknowledgement) unless the journal passes its hard cap; None releases the
        hold. Durable through the group commit, so a restart keeps it."""
        key: Mark = ("hold", uplink, stream_name(stream))
        if key in self._marks and self._marks[key] == keep_after:
            return
        self._set_mark(key, keep_after)

    def _set_mark(self, key: Mark, value: int | None) -> None:
        self._marks[key] = value
        if key not in self._marks_queued and self._writer is not None:
            # one queued write per mark, bounded by construction: outside the queue's bound
            self._marks_queued.add(key)
            self._enqueue("mark", key, None)

    def _holds(self) -> dict[Stream, int]:
        out: dict[Stream, int] = {}
        for (what, _, stream), value in self._marks.items():
            if what == "hold" and value is not None:
                out[stream] = min(value, out.get(stream, value))
        return out


def stream_name(stream: str) -> Stream:
    """``stream`` as a Stream; ValueError naming the choices for anything else."""
    for s in STREAMS:
        if s == stream:
            return s
    raise ValueError(f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}")
