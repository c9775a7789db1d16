"""`Store`: one long-lived aiosqlite connection, the startup checks, and the group-commit writer.

Every write goes through one bounded FIFO queue drained by one writer task. The writer takes up
to ``batch_size`` queued writes and commits them in one transaction, on the database thread in
one hop (aiosqlite runs each call on its thread; a batch is one call, not one per row). It
commits at once when someone awaits a write (``sessions.put``, ``flush``) and otherwise at the
latest ``flush_interval`` after the first queued row, so the loop's journal rows cost one
commit per second, not one per row. Retention runs in the same transaction as the inserts it
bounds. If a commit fails (disk full, read-only, I/O error) the store is ``degraded``: awaited
writes fail with StoreError, queued rows stay queued (bounded) and are retried with backoff;
the perception loop never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import aiosqlite

from agentd.config import StoreConfig
from agentd.errors import StoreError
from agentd.model import ActionResult, Observation, StoreHealth
from agentd.store import journal as jr
from agentd.store import sessions as ss
from agentd.store.opening import KEY_MEMORY, Unavailable, call, close_quietly, open_database
from agentd.store.recovery import describe

__all__ = ["KEY_MEMORY", "Store"]

log = logging.getLogger("agentd.store")
# aiosqlite logs every call it runs, with its arguments (whole batches), at DEBUG: far too much
# for `--log-level debug`, and it would echo journal contents into the log
logging.getLogger("aiosqlite").setLevel(logging.INFO)

T = TypeVar("T")

#: longest wait between retries of a failing commit
MAX_RETRY: Final = 30.0

OpKind = Literal["observations", "actions", "put", "put_nowait", "delete", "sweep", "claim"]
_SESSION_WRITES: Final = frozenset({"put", "put_nowait", "delete"})


#: a queued write: (kind, args, seq, future or None); a plain tuple, there is one per row
_Op = tuple[OpKind, tuple[Any, ...], int, "asyncio.Future[Any] | None"]
KIND: Final = 0
ARGS: Final = 1
SEQ: Final = 2
FUTURE: Final = 3


@dataclass(slots=True)
class _Committed:
    #: (index in the batch, result) of the writes someone awaits
    results: list[tuple[int, Any]] = field(default_factory=list)
    added: dict[str, tuple[int, int]] = field(default_factory=dict)
    retained: dict[str, jr.Retention] = field(default_factory=dict)


class Store:
    """The agent's SQLite database. ``await open()`` before use, ``await close()`` at the end
    (it commits everything queued first)."""

    def __init__(self, path: Path, config: StoreConfig) -> None:
        self.path = Path(path)
        self.config = config
        self.sessions = ss.SessionStore(self)
        self.journals: dict[str, jr.Journal] = {
            "observations": jr.Journal("observations", config.observations),
            "actions": jr.Journal("actions", config.actions),
        }
        self.state: Literal["closed", "ok", "degraded"] = "closed"
        self.last_error: str | None = None
        self.last_commit: float | None = None
        self.commits = 0
        self.back_pressure = 0
        self.schema_version = 0
        self.journal_mode = ""
        self._db: aiosqlite.Connection | None = None
        self._queue: deque[_Op] = deque()
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
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: the seq of the latest queued write per session id (read-your-writes for get/list)
        self._session_seq: dict[str, int] = {}
        self._session_max = 0
        #: called with each successful commit's duration in seconds (telemetry)
        self.on_commit: Callable[[float], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Open (or create) the database, check it and bring its schema up to date. A corrupt
        or non-SQLite file is moved aside and replaced by a fresh database; a database from a
        newer agentd raises StoreError untouched; a disk that cannot be written leaves the
        store ``degraded`` (logged in one line) and retried, never raising."""
        if self._writer is not None:
            raise RuntimeError("the store is already open")
        self._closing = False
        await self._connect()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Commit everything queued, then close the connection."""
        if self._writer is not None:
            self._closing = True
            self._kick.set()
            self._wake.set()
            try:
                await self._writer
            finally:
                if not self._writer.done():
                    self._writer.cancel()
                    await asyncio.gather(self._writer, return_exceptions=True)
                await self._disconnect()
                self._writer = None
        else:
            await self._disconnect()
        self.state = "closed"

    async def _connect(self) -> None:
        try:
            opened = await open_database(self.path, self.config, self.journals.values())
        except Unavailable as exc:
            self._degrade(str(exc))
            return
        self._db = opened.db
        self.schema_version = opened.schema_version
        self.journal_mode = opened.journal_mode
        for key in opened.keys:
            self._keys[key] = None
        recovered = self.state == "degraded"
        self.state = "ok"
        self.last_error = None
        if recovered:
            log.warning("store: %s is writable again; journaling resumed", self.path)

    async def _disconnect(self) -> None:
        db, self._db = self._db, None
        await close_quietly(db)

    def _degrade(self, message: str) -> None:
        self.last_error = message
        if self.state != "degraded":
            self.state = "degraded"
            log.error("store: %s; journaling is degraded, the loop keeps running", message)

    # -- health ------------------------------------------------------------------------------
    def health(self) -> StoreHealth:
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{self.path}{suffix}").st_size
        j = self.journals
        return StoreHealth(
            state=self.state,
            path=str(self.path),
            size_bytes=size,
            schema_version=self.schema_version,
            synchronous=self.config.synchronous,
            queue_depth=len(self._queue) + self._inflight,
            queue_capacity=self.config.queue_size,
            rows={n: x.rows for n, x in j.items()},
            journal_bytes={n: x.size for n, x in j.items()},
            dropped={n: x.dropped for n, x in j.items()},
            dropped_total={n: x.dropped_total for n, x in j.items()},
            queue_dropped={n: x.queue_dropped for n, x in j.items()},
            back_pressure=self.back_pressure,
            commits=self.commits,
            last_error=self.last_error,
            last_commit=self.last_commit,
        )

    # -- journals ----------------------------------------------------------------------------
    def journal_observation(self, obs: Observation) -> None:
        """Queue a tick's observation (every ``observations.every``-th tick). Never blocks,
        never raises: a full queue drops the row and counts it."""
        c = self.config.observations
        if c.enabled and obs.tick % c.every == 0:
            self._journal("observations", jr.observation_row(obs))

    def journal_result(self, result: ActionResult) -> None:
        """Queue an ActionResult for the audit log (non-blocking, like journal_observation)."""
        a = result.action
        if a.key is not None and result.status in jr.RAN:
            self._remember_key(a.actuator, a.key)
        if self.config.actions.enabled:
            self._journal("actions", jr.action_row(result))

    def _journal(self, name: Literal["observations", "actions"], row: tuple[Any, ...]) -> None:
        if self._writer is None or self._full():
            self.journals[name].queue_dropped += 1
            self.back_pressure += 1
            return
        self._enqueue(name, (row,), None)

    async def query_observations(
        self,
        since: float | None = None,
        until: float | None = None,
        tick_from: int | None = None,
        tick_to: int | None = None,
        limit: int = 100,
        *,
        newest_first: bool = False,
    ) -> list[Observation]:
        """Committed observations with ``since <= wall < until`` and ``tick_from <= tick <=
        tick_to`` (each bound optional), in journal order. Ticks restart at 1 with the daemon."""
        return await self.read(
            jr.query,
            "observations",
            since=since,
            until=until,
            tick_from=tick_from,
            tick_to=tick_to,
            limit=limit,
            newest_first=newest_first,
        )

    async def query_actions(
        self,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        *,
        tick_from: int | None = None,
        tick_to: int | None = None,
        newest_first: bool = False,
    ) -> list[ActionResult]:
        """Committed action results with ``since <= finished_at < until``, in journal order."""
        return await self.read(
            jr.query,
            "actions",
            since=since,
            until=until,
            tick_from=tick_from,
            tick_to=tick_to,
            limit=limit,
            newest_first=newest_first,
        )

    # -- idempotency -------------------------------------------------------------------------
    def key_seen(self, actuator: str, key: str) -> bool:
        """Whether an action with this idempotency key already ran on ``actuator`` (in this run
        or, as far as the action journal's retention reaches, before a restart)."""
        return (actuator, key) in self._keys

    async def claim_key(self, actuator: str, key: str) -> None:
        """Record, durably, that an action with this key is about to run: returns once
        committed, so the key holds even if the process dies while the action runs. Never
        raises: a degraded store leaves the in-memory record only (already logged)."""
        self._remember_key(actuator, key)
        try:
            await self.write("claim", actuator, key)
        except StoreError as exc:
            log.debug("store: idempotency key %r kept in memory only: %s", key, exc)

    def _remember_key(self, actuator: str, key: str) -> None:
        self._keys[(actuator, key)] = None
        self._keys.move_to_end((actuator, key))
        if len(self._keys) > KEY_MEMORY:
            self._keys.popitem(last=False)

    # -- the write path ----------------------------------------------------------------------
    async def flush(self) -> None:
        """Return when everything queued before this call is committed. Raises StoreError if
        the store cannot commit it (degraded)."""
        target = self._seq
        if target <= self._committed:
            return
        if self._writer is None or self._db is None:
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

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` on the database thread (reads only)."""
        db = self._db
        if db is None:
            raise StoreError(f"store unavailable: {self.last_error or 'not open'}")
        try:
            return await call(db, fn, db._conn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {describe(exc)}") from None

    async def write(self, kind: OpKind, *args: Any) -> Any:
        """Queue a session write and wait until it is committed; returns its result."""
        if self._writer is None:
            raise StoreError(f"store unavailable: {self.last_error or 'not open'}")
        if self._db is None:
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
        if self._writer is None or len(queue) + self._inflight >= self.config.queue_size:
            self.back_pressure += 1
            return False
        seq = self._seq = self._seq + 1
        if not queue:
            self._first_at = time.monotonic()
            self._wake.set()
        queue.append(("put_nowait", (sid, data, expires), seq, None))
        self._session_seq[sid] = self._session_max = seq
        if len(queue) == self.config.batch_size:
            self._kick.set()
        return True

    def _full(self) -> bool:
        return len(self._queue) + self._inflight >= self.config.queue_size

    def _enqueue(self, kind: OpKind, args: tuple[Any, ...], fut: asyncio.Future[Any] | None) -> _Op:
        self._seq += 1
        op: _Op = (kind, args, self._seq, fut)
        if not self._queue:
            self._first_at = time.monotonic()
        self._queue.append(op)
        if kind in _SESSION_WRITES:
            self._session_seq[args[0]] = self._session_max = self._seq
        self._wake.set()
        if len(self._queue) == self.config.batch_size:
            self._kick.set()
        return op

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
                # group commit: give the batch until flush_interval after its first row,
                # unless someone awaits a write, the batch fills up or we are closing
                delay = self._first_at + self.config.flush_interval - time.monotonic()
                if delay > 0:
                    await _wait(self._kick, delay)
            self._kick.clear()
            if self._db is None:
                await self._connect()
            error = await self._commit_batch() if self._db is not None else self.last_error
            if error is None:
                retry = 0.0
                continue
            if self._closing:
                self._give_up(error)
                return
            retry = min(MAX_RETRY, max(self.config.flush_interval, retry * 2))
            await _wait(self._kick, retry)

    async def _commit_batch(self) -> str | None:
        """Commit the next batch; None on success, else the error line (the store is then
        degraded and the batch's queued rows are put back for the retry)."""
        db = self._db
        assert db is not None
        batch = [
            self._queue.popleft() for _ in range(min(len(self._queue), self.config.batch_size))
        ]
        self._inflight = len(batch)
        counts = {n: (j.rows, j.size) for n, j in self.journals.items()}
        started = time.perf_counter()
        try:
            done = await call(db, self._apply, db._conn, batch, counts, time.time())
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
        if self.state == "degraded":
            self.state = "ok"
            self.last_error = None
            log.warning("store: commits to %s succeed again; journaling resumed", self.path)
        for name, (rows, size) in done.added.items():
            j = self.journals[name]
            gone = done.retained.get(name, jr.Retention())
            j.rows += rows - gone.rows
            j.size += size - gone.size
            j.dropped += gone.rows
            j.dropped_total += gone.rows
        for i, result in done.results:
            fut = batch[i][FUTURE]
            if fut is not None and not fut.done():
                fut.set_result(result)
        self._settled()
        return None

    def _apply(
        self,
        conn: sqlite3.Connection,
        batch: list[_Op],
        counts: dict[str, tuple[int, int]],
        now: float,
    ) -> _Committed:
        """On the database thread: one transaction for the whole batch."""
        out = _Committed()
        rows: dict[str, list[tuple[Any, ...]]] = {"observations": [], "actions": []}
        plain: list[tuple[Any, ...]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i, (kind, args, _, _) in enumerate(batch):
                if kind == "put_nowait":
                    plain.append((args[0], args[1], now, args[2]))
                    continue
                if kind == "observations" or kind == "actions":  # noqa: PLR1714 - hot loop
                    rows[kind].append(args[0])
                    continue
                if plain:  # keep session writes in queue order
                    conn.executemany(ss.UPSERT, plain)
                    plain = []
                if kind == "put":
                    sid, data, expires, expected = args
                    out.results.append((i, ss.put(conn, sid, data, expires, expected, now)))
                elif kind == "delete":
                    out.results.append((i, ss.delete(conn, args[0], now)))
                elif kind == "claim":
                    jr.claim(conn, args[0], args[1], now, KEY_MEMORY)
                    out.results.append((i, None))
                else:
                    out.results.append((i, ss.sweep(conn, now)))
            if plain:
                conn.executemany(ss.UPSERT, plain)
            for name, j in self.journals.items():
                if not rows[name]:
                    continue  # retention runs with the inserts it bounds
                added = j.insert(conn, rows[name])
                out.added[name] = added
                have_rows, have_size = counts[name]
                out.retained[name] = j.retain(conn, have_rows + added[0], have_size + added[1], now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return out

    def _fail(self, batch: list[_Op], error: StoreError) -> None:
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
        for target, fut in self._flushes:
            if not fut.done():
                fut.set_exception(error)
            del target
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


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
