"""`Store`: the agent's SQLite database on a thread the store owns, the startup checks, the
journals as streams, and the group-commit writer (`agentd.store.writer`) every write goes
through. Retention runs in the same transaction as the inserts it bounds (docs/storage.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from agentd.config import StoreConfig
from agentd.errors import StoreError
from agentd.model import ActionResult, Observation, StoreHealth
from agentd.store import journal as jr
from agentd.store import sessions as ss
from agentd.store.batch import ARGS, KIND, Committed, Mark, Op, apply_batch
from agentd.store.clock import Clock, SystemClock
from agentd.store.integrity import Checker, IntegrityReport, index_only, reindex
from agentd.store.journal import Stream
from agentd.store.opening import KEY_MEMORY, Unavailable, close_quietly, open_database
from agentd.store.retention import Now
from agentd.store.streams import Backlog, DroppedRange, StreamRow
from agentd.store.streamview import StreamView
from agentd.store.thread import DatabaseThread

__all__ = ["KEY_MEMORY", "Backlog", "DroppedRange", "Store", "Stream", "StreamRow"]

log = logging.getLogger("agentd.store")


class Store(StreamView):
    """The agent's SQLite database. ``await open()`` before use, ``await close()`` at the end
    (it commits everything queued first). ``clock``: where row stamps and retention by age
    read the time (tests inject one; default: the machine's)."""

    def __init__(self, path: Path, config: StoreConfig, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sessions = ss.SessionStore(self)
        self.journals: dict[Stream, jr.Journal] = {
            "observations": jr.Journal("observations", config.observations),
            "actions": jr.Journal("actions", config.actions),
            "events": jr.Journal("events", config.events),
        }
        self.state: Literal["closed", "ok", "degraded"] = "closed"
        self.last_error: str | None = None
        self.schema_version = 0
        self.journal_mode = ""
        self._epoch = ""
        self._db: DatabaseThread | None = None
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._check_task: asyncio.Task[None] | None = None
        self._checker = Checker(self.path)
        self._init_writer()
        self._init_streams()

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Open (or create) the database, check it and bring its schema up to date. A corrupt
        or non-SQLite file is moved aside and replaced by a fresh database holding what could
        be salvaged from it; a database from a newer agentd raises StoreError untouched; one
        that can only be read is opened read-only (reads served, ``degraded``); a disk that
        cannot be used at all leaves the store ``degraded`` (logged in one line) and retried,
        never raising."""
        if self._writer is not None:
            raise RuntimeError("the store is already open")
        await self._connect()
        self._start_writer()
        if self.config.check_interval is not None:
            self._check_task = asyncio.create_task(
                self._check_loop(self.config.check_interval), name="store-check"
            )

    async def close(self) -> None:
        """Commit everything queued, then close the connection."""
        task, self._check_task = self._check_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._stop_writer()
        finally:
            await self._disconnect()
            await self._checker.close()
        self.state = "closed"

    async def _connect(self) -> None:
        if self._db is not None and self.read_only:
            if not _writable(self.path):
                return  # still read-only: keep serving reads
            await self._disconnect()  # reopen it for writing
        try:
            db, opened = await open_database(self.path, self.config, self.journals.values())
        except Unavailable as exc:
            self._degrade(str(exc))
            return
        self._db = db
        self.read_only = opened.read_only is not None
        self.schema_version = opened.schema_version
        self.journal_mode = opened.journal_mode
        self._epoch = opened.epoch
        for key in opened.keys:
            self._keys[key] = None
        for (uplink, stream), keep_after in opened.holds.items():
            self._marks.setdefault(("hold", uplink, stream), keep_after)
        if opened.read_only is not None:
            self._degrade(f"{opened.read_only}; reads are served, writes wait")
            return
        recovered = self.state == "degraded"
        self.state = "ok"
        self.last_error = None
        if recovered:
            log.warning("store: %s is writable again; journaling resumed", self.path)
            self.journal_event("store.recovered", {"path": str(self.path)})

    async def _disconnect(self) -> None:
        db, self._db = self._db, None
        await close_quietly(db)

    def _degrade(self, message: str) -> None:
        self.last_error = message
        if self.state != "degraded":
            self.state = "degraded"
            log.error("store: %s; journaling is degraded, the loop keeps running", message)
            self.journal_event("store.degraded", {"error": message})  # written once it recovers

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

    def journal_event(self, kind: str, data: Mapping[str, object]) -> None:
        """Queue one of agentd's own state changes for the events journal (non-blocking, like
        journal_observation)."""
        if self.config.events.enabled:
            self._journal("events", jr.event_row(kind, self.clock.wall(), data))

    def _journal(self, name: Stream, row: tuple[Any, ...]) -> None:
        if self._writer is None or self._full():
            self.journals[name].queue_dropped += 1
            self.back_pressure += 1
            return
        c = self.clock
        # the boot-relative time at the row's own wall time (journal rows are written moments
        # after they happen): exact unless the clock stepped in between, and immune to any
        # step after
        uptime = c.boottime() - (c.wall() - row[jr.WALL])
        self._enqueue(name, ((c.boot_id, uptime, int(c.synced()), *row),), None)

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

    # -- integrity -----------------------------------------------------------------------------
    async def check(self, *, full: bool = True, repair: bool = True) -> IntegrityReport:
        """Check the database (``integrity_check`` and every row's checksum; ``full=False``:
        ``quick_check`` only) on a connection and thread of its own, so commits go on
        meanwhile. Damage confined to indexes is repaired in place (``REINDEX``) unless
        ``repair=False``. The result is logged in one line and returned."""
        if self._db is None:
            raise StoreError(f"store unavailable: {self.last_error or 'not open'}")
        # opened read-only, nothing can write it: it may be read as immutable (no -shm needed)
        live = not self.read_only
        report = await self._checker.run(full, live=live)
        if repair and live and index_only(report.problems):
            names = sorted({p.rsplit(" ", 1)[-1] for p in report.problems})
            await self.read(reindex, names)
            again = await self._checker.run(full, live=live)
            report = msgspec.structs.replace(again, repaired=[f"index {n}" for n in names])
        if not report.ok:
            log.error("store: integrity check: %s", report.summary())
        elif report.repaired:
            log.warning("store: integrity check found damaged indexes: %s", report.summary())
        else:
            log.info("store: integrity check: %s (%.1f s)", report.summary(), report.seconds)
        return report

    async def _check_loop(self, interval: float) -> None:
        """The background check, at a low rate; a failure to run it is logged, not raised."""
        while True:
            await asyncio.sleep(interval)
            if self._db is None:
                continue
            try:
                await self.check()
            except StoreError as exc:
                log.warning("store: background integrity check skipped: %s", exc)

    async def query_events(
        self,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        *,
        newest_first: bool = False,
    ) -> list[jr.Event]:
        """Committed events with ``since <= wall < until``, in journal order."""
        return await self.read(
            jr.query,
            "events",
            since=since,
            until=until,
            tick_from=None,
            tick_to=None,
            limit=limit,
            newest_first=newest_first,
        )

    # -- the writer's side ------------------------------------------------------------------
    async def _run_batch(self, db: DatabaseThread, batch: list[Op]) -> Committed:
        marks: dict[Mark, int | None] = {}
        for op in batch:
            if op[KIND] == "mark":
                key: Mark = op[ARGS]
                self._marks_queued.discard(key)
                marks[key] = self._marks.get(key)
        c = self.clock
        now = Now(c.wall(), c.boottime(), c.synced(), c.boot_id)
        counts = {n: (j.rows, j.size) for n, j in self.journals.items()}
        return await db.call(
            apply_batch,
            batch,
            self.journals,
            counts,
            now,
            time.time(),
            marks,
            self._holds(),
            KEY_MEMORY,
        )

    def _committed_batch(self, batch: list[Op], done: Committed) -> None:
        del batch
        if self.state == "degraded":
            self.state = "ok"
            self.last_error = None
            log.warning("store: commits to %s succeed again; journaling resumed", self.path)
            # the events journal (and so the fleet) hears of it too, in this very queue
            self.journal_event("store.recovered", {"path": str(self.path)})
        for name, (rows, size) in done.added.items():
            j = self.journals[name]
            gone = done.retained.get(name)
            j.rows += rows - (gone.rows if gone else 0)
            j.size += size - (gone.size if gone else 0)
            if gone:
                j.dropped += gone.rows
                j.dropped_total += gone.rows
            j.head = max(j.head, done.heads.get(name, 0))
        if done.heads:
            self._moved_heads()
        for name, gone in done.corrupt.items():
            self.journals[name].rows -= gone.rows
            self.journals[name].size -= gone.size

    def _failed_batch(self, batch: list[Op]) -> None:
        for op in batch:
            if op[KIND] == "mark":
                self._marks_queued.add(op[ARGS])


def _writable(path: Path) -> bool:
    # access(2) answers EROFS for a read-only file system, even to root
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
