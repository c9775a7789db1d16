"""`Uplinks`: one `UplinkEngine` per running uplink transport, built by the daemon after the
store opens and the loop runs, restarted on reload when its ``[uplinks.NAME]`` table changed,
stopped in the ``flush_uplink`` shutdown stage.

The split of work (the house plan): the `PluginSupervisor` builds, starts and stops the
transports (``uplink`` plugins, built-in ``mqtt``) like any plugin; the engine alone connects,
sends and closes them and owns cursors, batches and accounting. The engine wakes on the
store's commits by itself (``store.wait_head``, a seam of the store it is built with), so
nothing here is called per row or per tick. What this adds is the operator's view: the
engines' states as `UplinkStatus` replies, and the transport handles' state (``failing`` while
an engine is degraded, ``ok`` again when it recovers, each change logged and journalled once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final, final

from agentd.errors import AgentdError, StoreError
from agentd.model import UplinkStatus
from agentd.plugins.transport import UplinkRunner
from agentd.store import Store
from agentd.uplink import UplinkEngine

__all__ = ["RELOAD_STOP_BUDGET", "WATCH_INTERVAL", "Uplinks"]

log = logging.getLogger("agentd")

#: how often the engines' health is carried over to their plugin handles (seconds)
WATCH_INTERVAL: Final = 5.0
#: a reload's restart of a changed uplink: the old engine's budget to publish offline and
#: send what it has (the new one resends anything left: cursors are durable)
RELOAD_STOP_BUDGET: Final = 2.0

#: builds an engine (tests inject a clock or an rng here)
EngineFactory = Callable[[str, UplinkRunner, Store], UplinkEngine]


def _engine(name: str, handle: UplinkRunner, store: Store) -> UplinkEngine:
    return UplinkEngine(name, handle.settings, handle.obj, store)


@final
class Uplinks:
    """The running engines by uplink name, with the transport handle each drives."""

    __slots__ = ("_changing", "_engines", "_factory", "_handles", "_store", "_watch")

    def __init__(self, store: Store, *, factory: EngineFactory = _engine) -> None:
        self._store = store
        self._factory = factory
        self._engines: dict[str, UplinkEngine] = {}
        self._handles: dict[str, UplinkRunner] = {}
        self._watch: asyncio.Task[None] | None = None
        #: a reload and a late start (``retry``) may both apply at once: one at a time
        self._changing = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._engines)

    async def start(self, handles: Mapping[str, UplinkRunner], *, strict: bool = True) -> None:
        """An engine per transport (after the loop started: its first rows are committed).
        Cursors that cannot be read: ``startup_error = "fail"`` raises (agentd refuses to
        start), otherwise it runs without that uplink, its handle ``failing``."""
        async with self._changing:
            for name, handle in handles.items():
                await self._start_one(name, handle, strict=strict)
        if self._watch is None:
            self._watch = asyncio.create_task(self._carry_health(), name="uplink-health")

    async def _start_one(self, name: str, handle: UplinkRunner, *, strict: bool = False) -> None:
        """``strict``: at startup, where ``startup_error = "fail"`` can still refuse; after a
        reload (already committed) or a late start it can only run without the uplink."""
        engine = self._factory(name, handle, self._store)
        try:
            await engine.start()
        except StoreError as exc:
            message = f"uplink {name!r} cannot read its cursors: {exc}"
            if strict and handle.settings.startup_error == "fail":
                raise AgentdError(message) from None
            log.error("%s; running without it", message)
            handle.fail(str(exc))
            return
        self._engines[name] = engine
        self._handles[name] = handle

    async def apply(self, handles: Mapping[str, UplinkRunner]) -> int:
        """After a reload: an uplink whose transport handle was rebuilt (its table changed),
        or that is gone, has its engine stopped (publishing offline first); a new or rebuilt
        one gets a fresh engine that resumes from the durable cursors. Returns how many
        engines were restarted, started or stopped."""
        async with self._changing:
            changed = [n for n, h in self._handles.items() if handles.get(n) is not h]
            await self._stop(changed, RELOAD_STOP_BUDGET)
            new = {n: h for n, h in handles.items() if n not in self._handles}
            for name, handle in new.items():
                await self._start_one(name, handle)
            return len(set(changed) | set(new))

    async def stop(self, budget: float) -> None:
        """The ``flush_uplink`` stage: every engine at once publishes offline, sends what it
        can within ``budget`` seconds and saves its cursors."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        async with self._changing:
            await self._stop(list(self._engines), budget)

    async def _stop(self, names: list[str], budget: float) -> None:
        engines = [(n, self._engines.pop(n)) for n in names]
        for n in names:
            self._handles.pop(n, None)
        try:
            results = await asyncio.gather(
                *(e.stop(budget) for _, e in engines), return_exceptions=True
            )
        except asyncio.CancelledError:
            # a second signal cut the stage short: drop the links now (the broker publishes the
            # will, offline and not clean) rather than leave engines running over a closing store
            await asyncio.gather(*(e.stop(0) for _, e in engines), return_exceptions=True)
            raise
        for (name, _), result in zip(engines, results, strict=True):
            if isinstance(result, BaseException):
                log.error("uplink %r did not stop cleanly: %s", name, result)
            else:
                backlog = sum(s.backlog for s in result.streams)
                log.info("uplink %r stopped; %d rows left for the next start", name, backlog)

    # -- the operator's view ---------------------------------------------------------------
    def states(self) -> list[UplinkStatus]:
        """Every running engine's state (cheap: no I/O)."""
        return [e.state() for e in self._engines.values()]

    async def _carry_health(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            for name, engine in list(self._engines.items()):
                handle = self._handles.get(name)
                if handle is None:
                    continue
                state = engine.state()
                if state.health == "degraded" and handle.state == "ok":
                    handle.fail(state.reason or "degraded")
                elif state.health == "ok" and handle.state == "failing":
                    handle.ok()
