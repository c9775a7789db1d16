"""`UplinkEngine`: store-and-forward from the journals through one transport.

Per stream the engine keeps the durable cursor ``acked`` (every id <= it was acknowledged or
reported as a gap), reads the rows after it from the store, closes batches on rows, bytes or
time, keeps at most ``window`` batches in flight and moves the cursor only over a contiguous
run of successful acknowledgements. A refused batch (a PUBACK with a failure reason code)
rewinds its stream to the cursor and backs off; a lost link fails everything in flight and the
next connection resends from the cursor, so duplicates are bounded by what was in flight and
counted. Rows that retention removed before they were sent become gap records with the
store's reason. Actions and events fill the window before observations.

Lifecycle (called by the daemon): ``await start()`` loads the cursors and starts the task that
connects (never waits for the broker); ``notify()`` after each commit wakes the reader;
``await stop(budget)`` publishes offline, drains what it can within ``budget`` seconds,
disconnects and flushes the cursors; ``state()`` is the operator's view at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

from agentd import __version__
from agentd.errors import AgentdError, StoreError
from agentd.model import UplinkPhase, UplinkStatus, UplinkStreamStatus
from agentd.uplink import envelope as env
from agentd.uplink.base import STREAMS, Delivery, Link, Message, Stream, TransportError, Uplink
from agentd.uplink.batcher import Batcher
from agentd.uplink.config import UplinkSettings
from agentd.uplink.cursors import (
    apply_watermarks,
    count_backlog,
    drained,
    first_overdue,
    rewind,
)
from agentd.uplink.parts import (
    Batch,
    StreamCursor,
    describe,
    full_jitter,
)
from agentd.uplink.rollout import ConfigView
from agentd.uplink.storeview import UplinkStore

__all__ = ["PRIORITY", "UplinkEngine"]

log = logging.getLogger("agentd.uplink")

#: the order streams fill the window in (catch-up drains the audit trail first)
PRIORITY: Final[tuple[Stream, ...]] = ("actions", "events", "observations")
#: how often the backlog figures (a store query) are refreshed for state() and health
BACKLOG_EVERY: Final = 2.0


class UplinkEngine:
    def __init__(
        self,
        name: str,
        settings: UplinkSettings,
        transport: Uplink,
        store: UplinkStore,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        config_view: Callable[[], ConfigView | None] | None = None,
    ) -> None:
        self.name = name
        self._config_view = config_view  # the fleet config's version, in the status
        self.settings = settings
        self.transport = transport
        self.store = store
        self.node = settings.resolved_node()
        self._clock = clock or store.clock.wall
        self._rng = rng or random.Random()
        base = f"{settings.prefix.rstrip('/')}/{self.node}"
        self.topics: dict[str, str] = {c: f"{base}/{c}" for c in (*STREAMS, "status", "ack")}
        self.client_id = f"agentd-{self.node}-{name}"[:128]
        self._streams = {s: StreamCursor(s) for s in PRIORITY if s in settings.streams}
        self._content_type = env.CONTENT_TYPES[settings.format]
        self._phase: UplinkPhase = "stopped"
        self._task: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._link: Link | None = None
        self._lost = False
        self._since: float | None = None
        self._reconnects = 0
        self._attempt = 0
        self._refused: str | None = None
        self._last_error: str | None = None
        self._stop_at: float | None = None
        self._drained = asyncio.Event()
        self._offline_sent = False
        self._batcher = Batcher(
            name, settings, store, transport, self.node, self.topics, self._track
        )
        self._backlog_at = 0.0
        self._counting: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the cursors and start connecting in the background. Raises StoreError if the
        cursors cannot be read."""
        if self._task is not None:
            raise RuntimeError(f"uplink {self.name!r} is already running")
        cursors = await self.store.load_cursors(self.name)
        confirmed = await self.store.load_cursors(self._e2e_key) if self.settings.end_to_end else {}
        for s in self._streams.values():
            s.acked = s.read = s.sent_high = s.gap_high = int(cursors.get(s.name, 0))
            if self.settings.end_to_end:
                s.confirmed = min(int(confirmed.get(s.name, 0)), s.acked)
                self.store.hold_retention(self.name, s.name, s.confirmed)
            else:  # end_to_end was turned off: a hold left in the database would never lift
                self.store.hold_retention(self.name, s.name, None)
        self._phase = "connecting"
        self._stop_at = None
        self._task = asyncio.create_task(self._run(), name=f"uplink-{self.name}")
        self._watchers = [
            asyncio.create_task(self._watch(st.name), name=f"uplink-{self.name}-{st.name}")
            for st in self._streams.values()
        ]

    def notify(self) -> None:
        """New rows are committed: wake the reader. The engine also wakes by itself on the
        store's commits (`wait_head`); this only saves a hop."""
        self._wake.set()

    async def _watch(self, stream: Stream) -> None:
        while True:
            await self.store.wait_head(stream, self.store.stream_head(stream), 3600.0)
            self._wake.set()

    async def stop(self, budget: float) -> UplinkStatus:
        """Publish offline, send what is left within ``budget`` seconds, disconnect, flush the
        cursors. Returns the final state (its backlog is what the next start resends)."""
        task = self._task
        if task is None:
            return self.state()
        loop = asyncio.get_running_loop()
        self._stop_at = loop.time() + max(budget, 0.0)
        self._phase = "stopping"
        self._wake.set()
        if self._link is not None and not self._lost:
            # drained, or the run ended (the link died): whichever first, within the budget
            drained = asyncio.ensure_future(self._drained.wait())
            await asyncio.wait(
                {drained, task}, timeout=max(budget, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            drained.cancel()
            await asyncio.gather(drained, return_exceptions=True)
        task.cancel()
        for w in self._watchers:
            w.cancel()
        reads: list[Awaitable[object]] = [
            st.prefetch.task for st in self._streams.values() if st.prefetch is not None
        ]
        reads += self._watchers
        if self._counting is not None:
            self._counting.cancel()
            reads.append(self._counting)
        self._watchers = []
        for st in self._streams.values():
            rewind(st)  # nothing is in flight after this; reads ahead are cancelled
        await asyncio.gather(task, *reads, return_exceptions=True)
        self._task = None
        remaining = max(0.0, self._stop_at - loop.time())
        await self.transport.close(min(1.0, remaining) if remaining > 0 else 0.05)
        self._link = None
        self._phase = "stopped"
        try:
            await asyncio.wait_for(self.store.flush(), max(remaining, 1.0))
        except (TimeoutError, OSError, AgentdError) as exc:  # the cursor lags: we resend
            log.warning("uplink %s: flushing the cursors failed: %s", self.name, exc)
        return self.state()

    # -- the operator's view -----------------------------------------------------------------
    def state(self) -> UplinkStatus:
        now = self._clock()
        streams: list[UplinkStreamStatus] = []
        degraded: list[str] = []
        if self._refused:
            degraded.append(self._refused)
        for cur in self._streams.values():
            snap, problems = cur.snapshot(
                self.store.stream_head(cur.name), now, self.settings.backlog_max_age
            )
            streams.append(snap)
            degraded += problems
        connected = self._link is not None and not self._lost
        return UplinkStatus(
            name=self.name,
            node=self.node,
            phase=self._phase,
            health="degraded" if degraded else "ok",
            reason="; ".join(degraded) if degraded else None,
            connected=connected,
            since=self._since,
            protocol=self._link.protocol if connected and self._link else "",
            window=self._batcher.window,
            reconnects=self._reconnects,
            last_error=self._last_error,
            epoch=self.store.epoch,
            streams=streams,
        )

    def _is_lost(self) -> bool:
        return self._lost

    def _stopping(self) -> bool:
        return self._stop_at is not None

    @property
    def _e2e_key(self) -> str:
        return f"{self.name}:confirmed"

    # -- connect, backoff --------------------------------------------------------------------
    async def _run(self) -> None:
        while self._stop_at is None:
            self._phase = "connecting"
            try:
                link = await self.transport.connect(
                    self.client_id, self._status(online=False, clean=False), self._inbound
                )
            except TransportError as exc:
                self._connect_failed(exc)
                await self._backoff()
                continue
            if self._stopping():
                break
            self._connected(link)
            try:
                await self._session()
            except TransportError as exc:
                self._last_error = str(exc)
            except StoreError as exc:  # the store is degraded: reconnect once it reads again
                self._last_error = f"store: {exc}"
                log.error("uplink %s: reading the journals failed: %s", self.name, exc)
                await self.transport.close(0.5)
            except Exception as exc:  # a bug must not end the uplink silently
                self._last_error = f"internal error: {exc!r}"
                log.exception("uplink %s: internal error; reconnecting", self.name)
                await self.transport.close(0.5)
            self._disconnected()
            if self._stop_at is None:
                await self._backoff()

    def _connect_failed(self, exc: TransportError) -> None:
        self._last_error = str(exc)
        if exc.refused:
            if self._refused != str(exc):
                log.error("uplink %s: %s", self.name, exc)
                self._event("uplink.refused", reason=str(exc))
            self._refused = str(exc)
        elif self._attempt == 0:
            log.warning("uplink %s: %s; retrying with backoff", self.name, exc)
        self._phase = "backoff"

    async def _backoff(self) -> None:
        """Full jitter: uniform(0, min(max, min * 2**attempt)); stop() cuts it short."""
        s = self.settings
        delay = full_jitter(self._rng, self._attempt, s.reconnect_min, s.reconnect_max)
        self._attempt += 1
        self._phase = "backoff"
        self._wake.clear()
        deadline = time.monotonic() + delay
        while self._stop_at is None and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, BACKLOG_EVERY))
            self._wake.clear()
            with contextlib.suppress(StoreError):  # the backlog grows during an outage: show it
                await self._refresh_backlog()

    def _connected(self, link: Link) -> None:
        self._link, self._lost = link, False
        self._refused = None
        self._since = self._clock()
        self._phase = "connected"
        self._batcher.configure(link.receive_maximum, link.max_packet_size)
        if self._reconnects or self._attempt:
            log.info("uplink %s: connected (%s)", self.name, link.protocol)
            self._event("uplink.connected", protocol=link.protocol, reconnects=self._reconnects)
        for st in self._streams.values():
            rewind(st)

    def _disconnected(self) -> None:
        if self._link is not None and self._stop_at is None:
            self._reconnects += 1
            log.warning("uplink %s: link lost (%s)", self.name, self._last_error)
            self._event("uplink.lost", reason=self._last_error or "")
        self._link = None
        self._since = self._clock()
        for st in self._streams.values():
            rewind(st)

    def _event(self, kind: str, **data: object) -> None:
        """The uplink's state changes go into the events journal (and so to the fleet)."""
        self.store.journal_event(kind, {"uplink": self.name, **data})

    # -- one connection ----------------------------------------------------------------------
    async def _session(self) -> None:
        lost = asyncio.ensure_future(self.transport.wait_lost())
        lost.add_done_callback(self._on_lost)
        try:
            if self.settings.end_to_end:
                try:
                    await self.transport.subscribe(self.topics["ack"])
                except TransportError as exc:
                    if not exc.refused:
                        raise
                    # rows still go out; they stay held until a watermark arrives (degraded)
                    self._refused = f"end_to_end: {exc}"
                    log.error("uplink %s: %s", self.name, self._refused)
            birth = self._send_status(online=True, clean=False)
            await self._pump(birth)
        finally:
            lost.cancel()

    def _on_lost(self, fut: asyncio.Future[str]) -> None:
        if not fut.cancelled():
            self._lost = True
            self._last_error = f"link lost: {fut.result()}" if not fut.exception() else None
        self._wake.set()

    def _track(self, fut: asyncio.Future[Delivery]) -> None:
        fut.add_done_callback(self._answer_arrived)

    def _answer_arrived(self, fut: asyncio.Future[Delivery]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: a send abandoned by a rewind must not log an error
        self._wake.set()

    async def _pump(self, birth: asyncio.Future[Delivery]) -> None:
        loop = asyncio.get_running_loop()
        birth_seen = False
        while not self._is_lost():
            self._wake.clear()
            if not birth_seen and birth.done():
                birth_seen = True
                self._birth_answered(birth)
            self._collect()
            stopping = self._stop_at is not None
            if stopping and not self._offline_sent:
                self._offline_sent = True
                self._send_status(online=False, clean=True)
            overdue = first_overdue(self._streams.values(), self.settings.ack_timeout)
            if overdue is not None:
                # a broker that keeps the link (pings) but never answers must not stall us
                await self.transport.close(0)
                raise TransportError(f"no PUBACK within {overdue:.0f}s")
            timeout = await self._batcher.fill(self._streams.values(), stopping, self._is_lost)
            if self._is_lost():
                break
            if stopping and drained(self._streams.values(), self.store):
                self._drained.set()
                await asyncio.sleep(3600)  # stop() cancels us
            self._refresh_soon()
            if self._wake.is_set():
                continue
            if stopping and self._stop_at is not None:
                timeout = min(timeout, max(0.0, self._stop_at - loop.time()))
            timeout = min(timeout, self.settings.ack_timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        raise TransportError(self._last_error or "link lost")

    def _birth_answered(self, birth: asyncio.Future[Delivery]) -> None:
        if birth.cancelled() or birth.exception() is not None:
            return
        got = birth.result()
        if got.ok:
            self._attempt = 0  # the link works: the next loss starts the backoff afresh
        else:
            self._refused = f"status refused by the broker ({describe(got)})"
            log.error("uplink %s: %s", self.name, self._refused)

    # -- answers -----------------------------------------------------------------------------
    def _collect(self) -> None:
        for st in self._streams.values():
            while st.inflight and st.inflight[0].fut.done():
                b = st.inflight.popleft()
                fut = b.fut
                if fut.cancelled() or fut.exception() is not None:
                    self._lost = True  # the transport fails pending sends only on a lost link
                    return
                self._answered(st, b, fut.result())

    def _answered(self, st: StreamCursor, b: Batch, got: Delivery) -> None:
        if b.gen != st.gen:
            return
        if not got.ok:
            st.refused += 1
            st.failures += 1
            st.last_error = f"batch {b.first}..{b.last} refused by the broker ({describe(got)})"
            if st.failures == 1:
                log.error(
                    "uplink %s: %s; the cursor stays at %d", self.name, st.last_error, st.acked
                )
            s = self.settings
            delay = full_jitter(self._rng, st.failures, s.reconnect_min, s.reconnect_max)
            st.blocked_until = time.monotonic() + delay
            rewind(st)
            return
        if st.failures:
            log.warning("uplink %s: %s accepted again", self.name, st.name)
        st.failures = 0
        st.last_error = None
        st.acked = max(st.acked, b.last)  # end_to_end resends below the cursor
        st.delivered += b.rows
        st.batches += 1
        self.store.save_cursor(self.name, st.name, st.acked)

    # -- backlog figures, status, inbound ----------------------------------------------------
    def _refresh_soon(self) -> None:
        # off the send path: counting a large backlog holds the store's thread for tens of ms,
        # and the next batch must not wait for it (a failed read shows in the next fill)
        busy = self._counting is not None and not self._counting.done()
        if not busy and time.monotonic() - self._backlog_at >= BACKLOG_EVERY:
            self._counting = asyncio.ensure_future(self._refresh_backlog())
            self._counting.add_done_callback(_retrieve)

    async def _refresh_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_at < BACKLOG_EVERY:
            return
        self._backlog_at = now
        await count_backlog(self.store, self._streams.values(), now)

    def _send_status(self, *, online: bool, clean: bool) -> asyncio.Future[Delivery]:
        fut = asyncio.ensure_future(self.transport.send(self._status(online=online, clean=clean)))
        self._track(fut)
        return fut

    def publish_status(self) -> None:
        """Publish the retained online status again (the config version changed)."""
        if self._link is not None and not self._lost and self._stop_at is None:
            self._send_status(online=True, clean=False)

    def _status(self, *, online: bool, clean: bool) -> Message:
        backlog: dict[str, int] = {
            st.name: max(0, self.store.stream_head(st.name) - st.acked)
            for st in self._streams.values()
        }
        st = env.Status(
            node=self.node,
            state="online" if online else "offline",
            clean=clean,
            version=__version__,
            epoch=self.store.epoch,
            boot_id=self.store.boot_id,
            at=self._clock(),
            backlog=backlog,
            config=self._config_view() if self._config_view is not None else None,
        )
        return Message(
            topic=self.topics["status"],
            payload=env.encode(st, self.settings.format),
            retain=True,
            content_type=self._content_type,
        )

    def _inbound(self, topic: str, payload: bytes) -> None:
        if topic != self.topics["ack"] or not self.settings.end_to_end:
            return
        ack = env.decode_ack(payload)
        if ack is None or ack.epoch != self.store.epoch:
            log.warning(
                "uplink %s: ignoring an ack that is not for epoch %s", self.name, self.store.epoch
            )
            return
        apply_watermarks(ack, self._streams.values(), self.store, self.name, self._e2e_key)


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        log.debug("uplink: counting the backlog failed: %s", exc)
