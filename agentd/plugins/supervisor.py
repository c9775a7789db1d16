"""`PluginSupervisor`: builds, starts, retries, rebuilds and stops the configured plugins.

It owns the running handles by kind and the plugins that did not start (``startup_error`` =
``skip`` or ``retry``); the loop is handed its maps, the control plane and telemetry read
`statuses()`. A plugin never sees the supervisor: it gets its config and the capabilities it
declared (the daemon's ``capabilities`` callable decides what those are).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar, cast

import msgspec

from agentd.config import Config, PluginInstance
from agentd.errors import AgentdError, PluginError
from agentd.model import PluginStatus
from agentd.plugins.base import EventSink
from agentd.plugins.handle import (
    ActuatorRunner,
    PluginHandle,
    PolicyRunner,
    SensorRunner,
    build_handle,
    reload_key,
)
from agentd.plugins.kinds import KINDS, kind_of
from agentd.plugins.registry import Registry
from agentd.plugins.transport import UplinkRunner

__all__ = [
    "RETRY_START_FIRST",
    "RETRY_START_MAX",
    "START_PLUGIN_TIMEOUT",
    "PluginSupervisor",
    "Rebuild",
]

log = logging.getLogger("agentd")

#: how long one plugin's start() may take before it counts as failed to start
START_PLUGIN_TIMEOUT: Final = 5.0
#: startup_error = "retry": first delay before trying again and the default cap (seconds)
RETRY_START_FIRST: Final = 1.0
RETRY_START_MAX: Final = 300.0

#: the narrow handles a plugin asked for in ``PluginSpec.requires``, by name
Capabilities = Callable[[Sequence[str]], Mapping[str, object]]
#: run after a plugin started and before it joins (the daemon restores policy memory here)
Prepare = Callable[[PluginHandle], Awaitable[None]]
#: a plugin that started late (``retry``) joins the loop through this
Join = Callable[[PluginHandle], None]

H = TypeVar("H", bound=PluginHandle)
_Key = tuple[str, str]


@dataclass(slots=True)
class Rebuild:
    """A reload's new plugin set, built but not yet in use (see `PluginSupervisor.commit`)."""

    handles: dict[str, dict[str, PluginHandle]]
    unstarted: dict[_Key, PluginStatus] = field(default_factory=dict)
    deferred: list[PluginInstance] = field(default_factory=list)


class PluginSupervisor:
    """The configured plugin instances of one daemon, by kind and name."""

    def __init__(
        self,
        registry: Registry,
        *,
        capabilities: Capabilities | None = None,
        prepare: Prepare | None = None,
        start_timeout: float = START_PLUGIN_TIMEOUT,
        events: EventSink | None = None,
    ) -> None:
        self.registry = registry
        #: plugin state changes (failing, recovered, did not start) go here and to the log
        self._events = events
        self._capabilities = capabilities
        self._prepare = prepare
        self._start_timeout = start_timeout
        self._handles: dict[str, dict[str, PluginHandle]] = {k.name: {} for k in KINDS}
        #: plugins whose start failed under startup_error "skip"/"retry", by (kind, name)
        self._unstarted: dict[_Key, PluginStatus] = {}
        self._deferred: list[PluginInstance] = []
        self._retries: dict[_Key, asyncio.Task[None]] = {}
        #: held while the plugin set changes: a reload, a late start joining
        self.lock = asyncio.Lock()

    # -- reads -------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> PluginHandle | None:
        return self._handles.get(kind, {}).get(name)

    def all(self) -> list[PluginHandle]:
        """Every running handle, in kind order."""
        return [h for by in self._handles.values() for h in by.values()]

    def by_kind(self, kind: str) -> Mapping[str, PluginHandle]:
        return self._handles.get(kind, {})

    def sensors(self) -> dict[str, SensorRunner]:
        return _typed(self._handles["sensor"], SensorRunner)

    def policies(self) -> dict[str, PolicyRunner]:
        return _typed(self._handles["policy"], PolicyRunner)

    def actuators(self) -> dict[str, ActuatorRunner]:
        return _typed(self._handles["actuator"], ActuatorRunner)

    def uplinks(self) -> dict[str, UplinkRunner]:
        """The uplink transports (an `agentd.uplinking.Uplinks` engine drives each)."""
        return _typed(self._handles["uplink"], UplinkRunner)

    def statuses(self) -> list[PluginStatus]:
        """Every configured, enabled plugin instance: running ones and those that did not
        start (``disabled`` under skip, ``starting`` under retry)."""
        return [h.status() for h in self.all()] + list(self._unstarted.values())

    def summary(self) -> str:
        """``N/M ok`` over `statuses()`."""
        states = [h.state for h in self.all()] + [s.state for s in self._unstarted.values()]
        bad = sum(s != "ok" for s in states)
        return f"{len(states) - bad}/{len(states)} ok"

    # -- building ----------------------------------------------------------------------------
    async def start_all(self, config: Config) -> None:
        """Build and start every enabled instance (startup). ``fail`` raises, with the ones
        already started left for `stop_all`."""
        for inst in config.instances():
            if inst.enabled:
                handle = await self._build_or_defer(inst, self._unstarted, self._deferred)
                if handle is not None:
                    self._handles[handle.kind][inst.name] = handle

    async def _build(self, inst: PluginInstance) -> PluginHandle:
        kind = kind_of(inst)
        spec = self.registry.get(inst.plugin, kind.name)
        caps = self._capabilities(spec.requires) if self._capabilities else None
        handle = build_handle(kind.runner, inst, spec, caps, self._events)
        try:
            async with asyncio.timeout(self._start_timeout):
                await handle.start()
        except Exception as exc:
            # a device may quote its credentials back (a broker's or an API's error text)
            why = handle.redact(f"{type(exc).__name__}: {exc}")
            raise PluginError(inst.name, f"failed to start: {why}", handle.spec.origin) from exc
        if self._prepare is not None:
            await self._prepare(handle)
        return handle

    async def _build_or_defer(
        self,
        inst: PluginInstance,
        unstarted: dict[_Key, PluginStatus],
        deferred: list[PluginInstance],
    ) -> PluginHandle | None:
        """Build and start a plugin. If that fails, its ``startup_error`` decides: ``fail``
        raises (agentd refuses to start, a reload is refused), ``skip`` runs without it
        (reported `disabled`), ``retry`` runs without it and keeps trying in the background."""
        try:
            return await self._build(inst)
        except PluginError as exc:
            policy = inst.common.startup_error
            if policy == "fail":
                raise
            kind = kind_of(inst).name
            unstarted[kind, inst.name] = PluginStatus(
                name=inst.name,
                plugin=inst.plugin,
                kind=kind,
                state="disabled" if policy == "skip" else "starting",
                errors=1,
                consecutive_failures=1,
                last_error=str(exc),
            )
            if policy == "retry":
                deferred.append(inst)
            then = "running without it" if policy == "skip" else "retrying in background"
            log.error("%s; %s", exc, then)
            self._event("plugin.start_failed", inst, error=str(exc), then=policy)
            return None

    # -- startup_error = "retry" -------------------------------------------------------------
    def start_retries(self, join: Join) -> None:
        """Keep trying the deferred plugins in the background; each joins through ``join``."""
        for inst in self._deferred:
            key = (kind_of(inst).name, inst.name)
            self._retries[key] = asyncio.create_task(
                self._retry_start(inst, join), name=f"start:{inst.name}"
            )
        self._deferred = []

    def cancel_retries(self) -> None:
        for task in self._retries.values():
            task.cancel()
        self._retries.clear()

    async def _retry_start(self, inst: PluginInstance, join: Join) -> None:
        """Try to start ``inst`` again with exponential backoff and jitter (1 s doubling up
        to ``max_interval``, default 5 min); once it starts it joins the loop."""
        kind = kind_of(inst).name
        key = (kind, inst.name)
        cap = inst.common.max_interval or RETRY_START_MAX
        delay = min(RETRY_START_FIRST, cap)
        attempts = 1
        while True:
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))
            attempts += 1
            try:
                handle = await self._build(inst)
            except PluginError as exc:
                old = self._unstarted.get(key)
                if old is not None:
                    self._unstarted[key] = msgspec.structs.replace(
                        old,
                        errors=old.errors + 1,
                        consecutive_failures=old.consecutive_failures + 1,
                        last_error=str(exc),
                    )
                delay = min(delay * 2, cap)
                continue
            async with self.lock:
                self._handles.setdefault(kind, {})[inst.name] = handle
                join(handle)
                self._unstarted.pop(key, None)
                self._retries.pop(key, None)
            log.warning("%s %r started after %d attempts", kind, inst.name, attempts)
            self._event("plugin.started", inst, attempts=attempts)
            return

    # -- reload ------------------------------------------------------------------------------
    async def rebuild(self, new: Config) -> Rebuild:
        """Handles for ``new``: unchanged instances are kept, changed ones built fresh. If any
        new one fails to build or start, the ones already built are stopped, nothing changes
        and the error is raised. Call with `lock` held; `commit` puts the result in use."""
        plan = Rebuild({k.name: {} for k in KINDS})
        built: list[PluginHandle] = []
        old_all = {(h.kind, h.name): h for h in self.all()}
        try:
            for inst in new.instances():
                if not inst.enabled:
                    continue
                kind = kind_of(inst).name
                old = old_all.get((kind, inst.name))
                if old is not None and _unchanged(old, inst):
                    plan.handles[kind][inst.name] = old
                    continue
                handle = await self._build_or_defer(inst, plan.unstarted, plan.deferred)
                if handle is None:
                    continue
                built.append(handle)
                plan.handles[kind][inst.name] = handle
        except AgentdError:
            await self.stop_all(self._start_timeout, built)
            raise
        return plan

    def commit(self, plan: Rebuild) -> list[PluginHandle]:
        """Put a rebuild in use; returns the retired handles (stop them with `stop_all`).
        Policy memory carries over to a rebuilt policy of the same name."""
        self.cancel_retries()
        for name, handle in plan.handles["policy"].items():
            old = self._handles["policy"].get(name)
            rebuilt = old is not None and old is not handle
            if rebuilt and isinstance(old, PolicyRunner) and isinstance(handle, PolicyRunner):
                handle.policy_state = old.policy_state
        kept = {id(h) for by in plan.handles.values() for h in by.values()}
        retired = [h for h in self.all() if id(h) not in kept]
        self._handles = plan.handles
        self._unstarted = plan.unstarted
        self._deferred = plan.deferred
        return retired

    def _event(self, what: str, inst: PluginInstance, **data: object) -> None:
        if self._events is not None:
            where = {"kind": kind_of(inst).name, "name": inst.name, "plugin": inst.plugin}
            self._events.journal_event(what, {**where, **data})

    # -- stopping ----------------------------------------------------------------------------
    async def stop_all(
        self, timeout: float, handles: Iterable[PluginHandle] | None = None
    ) -> list[str]:
        """Stop every handle (default: all, and the retries), each as its own task under one
        budget of ``timeout`` seconds. Returns the ones still stopping when it ran out (or when
        this was cancelled), which are named in the log and cancelled."""
        if handles is None:
            self.cancel_retries()
            handles = self.all()
        tasks = {
            asyncio.create_task(self._stop_one(h), name=f"stop:{h.kind}:{h.name}"): h
            for h in handles
        }
        if not tasks:
            return []
        pending: set[asyncio.Task[None]] = set(tasks)
        try:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
        finally:
            pending = {t for t in pending if not t.done()}
            if pending:
                names = ", ".join(f"{tasks[t].kind} {tasks[t].name!r}" for t in pending)
                log.warning("stop_plugins: still stopping after the budget, cancelled: %s", names)
                for task in pending:
                    task.cancel()
        return [tasks[t].name for t in pending]

    @staticmethod
    async def _stop_one(handle: PluginHandle) -> None:
        try:
            await handle.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            log.error("%s %r failed to stop: %s", handle.kind, handle.name, exc)


def _typed(by_name: Mapping[str, PluginHandle], runner: type[H]) -> dict[str, H]:
    assert all(isinstance(h, runner) for h in by_name.values())
    return cast(dict[str, H], dict(by_name))


def _unchanged(old: PluginHandle, new: PluginInstance) -> bool:
    """The same table, and the same outside inputs where the config declares them
    (``reload_key()`` on its Struct: the ``openapi`` document's digest, the header files'),
    as read when the running handle was built."""
    return old.instance.raw == new.raw and old.inputs == reload_key(new.config)
