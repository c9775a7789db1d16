"""`TickJournal`: the loop observer that writes every tick to the store: the observation, the
action results (late ones too) and the policies' memory when it changed. `EventLog`: the
daemon's `EventSink`, agentd's own state changes into the events journal (the store journals
its own, degraded and recovered)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import final

from agentd.errors import StoreError
from agentd.model import ActionResult, TickReport
from agentd.plugins.base import PolicyState
from agentd.plugins.handle import PluginHandle, PolicyRunner
from agentd.store import Store

__all__ = ["EventLog", "TickJournal", "restore_policy_state", "sweep_sessions"]

log = logging.getLogger("agentd")


@final
class TickJournal:
    __slots__ = ("_policies", "_store")

    def __init__(self, store: Store, policies: Callable[[], Mapping[str, PolicyRunner]]) -> None:
        self._store = store
        self._policies = policies

    def on_tick(self, report: TickReport) -> None:
        store = self._store
        store.journal_observation(report.observation)
        for result in report.results:
            store.journal_result(result)
        for name, handle in self._policies().items():
            state = handle.policy_state
            if not state.dirty:
                continue
            try:
                # a full queue returns False: the state stays dirty and goes next tick
                state.dirty = not store.sessions.put_nowait(f"policy:{name}", state.to_dict())
            except StoreError as exc:
                state.dirty = False  # unencodable: logged, not retried every tick
                log.error("policy %r: memory not saved: %s", name, exc)

    def on_late_result(self, result: ActionResult) -> None:
        self._store.journal_result(result)


async def restore_policy_state(store: Store, handle: PluginHandle) -> None:
    """Restore a policy's memory from its session ``policy:<name>``."""
    if not isinstance(handle, PolicyRunner):
        return
    try:
        session = await store.sessions.get(f"policy:{handle.name}")
    except StoreError as exc:
        log.warning("policy %r starts without its saved memory: %s", handle.name, exc)
        return
    if session is not None and isinstance(session.state, dict):
        handle.policy_state = PolicyState(session.state)


async def sweep_sessions(store: Store, every: Callable[[], float]) -> None:
    """Remove expired sessions every ``every()`` seconds (``store.sweep_interval``), forever."""
    while True:
        await asyncio.sleep(every())
        try:
            swept = await store.sessions.sweep()
        except StoreError as exc:
            log.debug("session sweep skipped: %s", exc)
            continue
        if swept:
            log.info("store: removed %d expired sessions", swept)


@final
class EventLog:
    """The `agentd.plugins.base.EventSink` the daemon hands its parts when it builds them.
    Events go to the store's events journal once the store is open (`use_store`, called by
    the daemon that opened it); before that, or with no store, the log line the part writes
    anyway is all there is."""

    __slots__ = ("_store",)

    def __init__(self) -> None:
        self._store: Store | None = None

    def use_store(self, store: Store) -> None:
        self._store = store

    def journal_event(self, kind: str, data: Mapping[str, object]) -> None:
        store = self._store
        if store is not None:
            store.journal_event(kind, data)
