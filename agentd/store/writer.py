"""The group-commit writer: one bounded FIFO queue drained by one task.

The writer takes up to ``batch_size`` queued writes and commits them in one transaction, on the
database thread in one hop (a batch is one call, not one per row). It commits at once when
someone awaits a write (``sessions.put``, ``flush``) and otherwise with the first write that
arrives from 0.9 ``flush_interval`` after the first queued row on (at the latest 1.1
``flush_interval`` after it, by the writer's timer), so the loop's journal rows cost one commit
per two ticks at the default one second, not one per row. If a commit fails (disk full,
read-only, I/O error) the store is ``degraded``: awaited writes fail with StoreError, queued
rows stay queued (bounded) and are retried with backoff; the perception loop never notices.

`GroupCommit` is the queue and its writer task; `Store` adds what is written and read.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from agentd.config import StoreConfig
from agentd.errors import StoreError
from agentd.store import journal as jr
from agentd.store.batch import FUTURE, KIND, SEQ, SESSION_WRITES, Committed, Op, OpKind
from agentd.store.recovery import describe

if TYPE_CHECKING:
    from agentd.store.thread import DatabaseThread

__all__ = ["COALESCE", "MAX_RETRY", "GroupCommit", "wait_event"]

log = logging.getLogger("agentd.store")

T = TypeVar("T")

#: longest wait between retries of a failing commit
MAX_RETRY: Final = 30.0
#: a write arriving in the last tenth of the batch window commits the batch with it; with
#: none, the writer's timer commits it a tenth after the window
COALESCE: Final = 0.1


class GroupCommit:
    """The write queue, its writer task and the bookkeeping of what is committed. Subclasses
    provide `_connect`, `_degrade`, `_run_batch` and `_committed_batch`."""

    path: Path
    config: StoreConfig
    journals: dict[jr.Stream, jr.Journal]
    _db: DatabaseThread | None
    state: str
    last_error: str | None

    def _init_writer(self) -> None:
        #: the database could only be opened read-only: reads are served, writes wait
        self.read_only = False
        self.last_commit: float | None = None
        self.commits = 0
        self.back_pressure = 0
        self._queue: deque[Op] = deque()
        self._inflight = 0
        self._seq = 0
        self._committed = 0
        self._urgent = 0  # the highest seq someone awaits
        self._first_at = 0.0
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._space = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        #: the seq of the latest queued write per session id (read-your-writes for get/list)
        self._session_seq: dict[str, int] = {}
        self._session_max = 0
        #: called with each successful commit's duration in seconds (telemetry)
        self.on_commit: Callable[[float], None] | None = None

    async def _connect(self) -> None:
        raise NotImplementedError

    def _degrade(self, message: str) -> None:
        raise NotImplementedError

    async def _run_batch(self, db: DatabaseThread, batch: list[Op]) -> Committed:
        """Commit ``batch`` on the database thread (raises what the commit raised)."""
        raise NotImplementedError

    def _committed_batch(self, batch: list[Op], done: Committed) -> None:
        """Bookkeeping after ``batch`` committed."""
        raise NotImplementedError

    def _failed_batch(self, batch: list[Op]) -> None:
        """Bookkeeping after ``batch`` failed (its queued writes go back into the queue)."""

    # -- the public side ---------------------------------------------------------------------
    async def flush(self) -> None:
        """Return when everything queued before this call is committed. Raises StoreError if
        the store cannot commit it (degraded)."""
        target = self._seq
        if target <= self._committed:
            return
        if self._writer is None or self._db is None or self.read_only:
            raise StoreError(f"store unavailable: {self.last_error or 'not open'}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((target, fut))
        self._urgent = max(self._urgent, target)
        self._kick.set()
        await fut

    def pending_session(self, sid: str | None) -> bool:
        """Whether a queued, uncommitted write touches ``sid`` (None: any session)."""
        if sid is None:
            return self._session_max > self._committed
        return self._session_seq.get(sid, 0) > self._committed

    async def write(self, kind: OpKind, *args: Any) -> Any:
        """Queue a session write and wait until it is committed; returns its result."""
        if self._writer is None:
            raise StoreError(f"store unavailable: {self.last_error or 'not open'}")
        if self._db is None or self.read_only:
            raise StoreError(f"store unavailable: {self.last_error}")
        while self._full():
            self.back_pressure += 1
            if self.state == "degraded":  # room comes back only when commits do
                raise StoreError(f"store unavailable: {self.last_error}")
            self._urgent = max(self._urgent, self._seq)  # commit what is queued: make room
            self._kick.set()
            self._space.clear()
            await self._space.wait()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        op = self._enqueue(kind, args, fut)
        self._urgent = max(self._urgent, op[SEQ])
        self._kick.set()
        return await fut

    def write_nowait(self, sid: str, data: bytes, expires: float | None) -> bool:
        # the batched path's hot loop: _enqueue inlined
        queue = self._queue
        if (
            self._writer is None
            or self.read_only
            or len(queue) + self._inflight >= self.config.queue_size
        ):
            self.back_pressure += 1
            return False
        seq = self._seq = self._seq + 1
        if not queue:
            self._first_at = time.monotonic()
            self._wake.set()
        elif self._due_soon():
            self._kick.set()
        queue.append(("put_nowait", (sid, data, expires), seq, None))
        self._session_seq[sid] = self._session_max = seq
        if len(queue) == self.config.batch_size:
            self._kick.set()
        return True

    def _full(self) -> bool:
        return len(self._queue) + self._inflight >= self.config.queue_size

    def _enqueue(self, kind: OpKind, args: tuple[Any, ...], fut: asyncio.Future[Any] | None) -> Op:
        self._seq += 1
        op: Op = (kind, args, self._seq, fut)
        if not self._queue:
            self._first_at = time.monotonic()
        elif self._due_soon():
            self._kick.set()
        self._queue.append(op)
        if kind in SESSION_WRITES:
            self._session_seq[args[0]] = self._session_max = self._seq
        self._wake.set()
        if len(self._queue) == self.config.batch_size:
            self._kick.set()
        return op

    def _due_soon(self) -> bool:
        """Whether the batch has had all but `COALESCE` of its window: a write arriving now
        commits it, in the wake that brought the write (the tick's), instead of the writer's
        timer waking the process again (issue #18)."""
        window = self.config.flush_interval
        return time.monotonic() - self._first_at >= window - window * COALESCE

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` on the database thread (reads only)."""
        db = self._db
        if db is None:
            raise StoreError(f"store unavailable: {self.last_error or 'not open'}")
        try:
            return await db.call(fn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {describe(exc)}") from None

    # -- the writer task ---------------------------------------------------------------------
    def _start_writer(self) -> None:
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def _stop_writer(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._closing = True
        self._kick.set()
        self._wake.set()
        try:
            await writer
        finally:
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._writer = None

    async def _write_loop(self) -> None:
        retry = 0.0
        while True:
            if not self._queue:
                self._resolve_flushes()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            urgent = self._urgent > self._committed or self._closing
            if not urgent and len(self._queue) < self.config.batch_size:
                # group commit: give the batch flush_interval after its first row, unless
                # someone awaits a write, the batch fills up or we are closing. The timer is
                # the fallback, a tenth later: a write arriving from 0.9 of the window on
                # commits the batch (_due_soon), so rows that come every flush_interval (the
                # tick's) commit in the wake that brought them, two at a time, and the
                # writer's own timer, which uvloop may fire in the same millisecond as the
                # ticker's, never races them into a second commit (issue #18)
                window = self.config.flush_interval
                delay = self._first_at + window + window * COALESCE - time.monotonic()
                if delay > 0:
                    await wait_event(self._kick, delay)
            self._kick.clear()
            if self._db is None or self.read_only:
                await self._connect()
            writable = self._db is not None and not self.read_only
            error = await self._commit_batch() if writable else self.last_error
            if error is None:
                retry = 0.0
                continue
            if self._closing:
                self._give_up(error or "store unavailable")
                return
            retry = min(MAX_RETRY, max(self.config.flush_interval, retry * 2))
            await wait_event(self._kick, retry)

    async def _commit_batch(self) -> str | None:
        """Commit the next batch; None on success, else the error line (the store is then
        degraded and the batch's queued rows are put back for the retry)."""
        db = self._db
        assert db is not None
        batch = [
            self._queue.popleft() for _ in range(min(len(self._queue), self.config.batch_size))
        ]
        self._inflight = len(batch)
        started = time.perf_counter()
        try:
            done = await self._run_batch(db, batch)
        except Exception as exc:  # noqa: BLE001 - any failure degrades; the writer goes on
            self._inflight = 0
            message = f"cannot write {self.path}: {describe(exc)}"
            self._degrade(message)
            self._fail(batch, StoreError(message))
            return message
        finally:
            self._inflight = 0
            self._space.set()
        self.commits += 1
        self.last_commit = time.time()
        if self.on_commit is not None:
            try:
                self.on_commit(time.perf_counter() - started)
            except Exception:  # a broken observer must not stop the writer
                log.exception("store: on_commit hook failed")
                self.on_commit = None
        self._committed_batch(batch, done)
        for i, result in done.results:
            fut = batch[i][FUTURE]
            if fut is not None and not fut.done():
                fut.set_result(result)
        self._settled()
        return None

    def _fail(self, batch: list[Op], error: StoreError) -> None:
        """A batch did not commit: awaited writes fail now; queued rows go back to the front
        of the queue, in order, for the retry."""
        keep = []
        for op in batch:
            if op[FUTURE] is not None:
                if not op[FUTURE].done():
                    op[FUTURE].set_exception(error)
            else:
                keep.append(op)
        self._queue.extendleft(reversed(keep))
        self._failed_batch(keep)
        for _, fut in self._flushes:
            if not fut.done():
                fut.set_exception(error)
        self._flushes.clear()
        self._settled()

    def _give_up(self, error: str) -> None:
        """Closing while commits fail: what is still queued is lost; say how much."""
        ops = list(self._queue)
        self._queue.clear()
        exc = StoreError(error)
        for op in ops:
            if op[FUTURE] is not None and not op[FUTURE].done():
                op[FUTURE].set_exception(exc)
            if op[KIND] in self.journals:
                self.journals[op[KIND]].queue_dropped += 1
        for _, fut in self._flushes:
            if not fut.done():
                fut.set_exception(exc)
        self._flushes.clear()
        self._committed = self._seq
        if ops:
            log.error(
                "store: %d queued writes could not be committed at shutdown: %s", len(ops), error
            )

    def _settled(self) -> None:
        """Every write before the head of the queue is settled: committed, or failed loudly
        to the caller that awaited it."""
        self._committed = done = self._queue[0][SEQ] - 1 if self._queue else self._seq
        if len(self._session_seq) > 4096:
            self._session_seq = {k: v for k, v in self._session_seq.items() if v > done}
        self._resolve_flushes()

    def _resolve_flushes(self) -> None:
        if not self._flushes:
            return
        keep = []
        for target, fut in self._flushes:
            if target <= self._committed:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._flushes = keep


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
