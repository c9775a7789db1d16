"""The plugin protocols and `PluginSpec`, the registry's description of one plugin.

A plugin never sees the daemon: it is built from its typed config (a msgspec Struct) and gets
data (an Observation, an Action); it returns data. Lifecycle hooks `start()`/`stop()` are
optional.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

from agentd.model import Action, Observation, PluginKind, Value

__all__ = [
    "CAPABILITIES",
    "Actuator",
    "ActuatorReply",
    "EventSink",
    "PluginKind",
    "PluginSpec",
    "Policy",
    "PolicyState",
    "Sensor",
    "SessionAccess",
]


@runtime_checkable
class Sensor(Protocol):
    """Produces readings. Must be side-effect free: perceiving twice changes nothing."""

    async def perceive(self) -> Mapping[str, Value]: ...


class PolicyState:
    """A policy's memory: a small mutable mapping that the daemon persists between ticks
    and, with the store, across restarts. ``dirty`` tells the daemon it needs writing."""

    __slots__ = ("_data", "dirty")

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(data or {})
        self.dirty = False

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if self._data.get(key, _MISSING) != value:
            self._data[key] = value
            self.dirty = True

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def pop(self, key: str, default: Any = None) -> Any:
        if key in self._data:
            self.dirty = True
        return self._data.pop(key, default)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)


_MISSING = object()


@runtime_checkable
class Policy(Protocol):
    """Turns an Observation into Actions. Pure decision logic; may keep memory in ``state``.
    May be a plain function body or return an awaitable."""

    def decide(
        self, observation: Observation, state: PolicyState
    ) -> list[Action] | Awaitable[list[Action]]: ...


class ActuatorReply(msgspec.Struct, frozen=True):
    """What an actuator returns for a successful call: free-form output for the journal."""

    output: Any = None


@runtime_checkable
class Actuator(Protocol):
    """Executes Actions. Raises to fail; returns an ActuatorReply (or None) on success."""

    async def act(self, action: Action) -> ActuatorReply | None: ...


class EventSink(Protocol):
    """Where agentd's own state changes go: the store's events journal (the uplink's events
    stream). Given to the parts that make such changes when they are built; never blocks."""

    def journal_event(self, kind: str, data: Mapping[str, object]) -> None: ...


@runtime_checkable
class SessionAccess(Protocol):
    """The narrow handle on the session store given to plugins that declare
    ``requires=("sessions",)``. Returns the session's new version."""

    async def put(self, session_id: str, state: Any, ttl: float | None = None) -> int: ...

    async def delete(self, session_id: str) -> bool: ...


#: capabilities a plugin may ask for in ``PluginSpec.requires``; each is passed to its factory
#: as a keyword argument of the same name (a plugin never sees the daemon itself)
CAPABILITIES: Mapping[str, type] = {"sessions": SessionAccess}


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """Everything the registry knows about one plugin.

    ``factory(config)`` builds an instance from a value of ``config_type`` (plus one keyword
    argument per name in ``requires``, e.g. ``sessions=SessionAccess``). Actuators list their
    ``actions`` with a params Struct each (``"*"``: any action name); ``idempotent=False`` makes
    the action path refuse to run the same idempotency key twice, even across a restart.
    An actuator object may also have ``validate(action) -> str | None`` for checks that depend
    on its config (an unknown command, a path not in the allowlist): a non-None reason rejects.

    What ``check-config`` checks references against is declared on the config Struct with
    optional methods (agentd/config_refs.py): a sensor's ``produces()`` (its metric names and
    units, `metrics` below), an actuator's ``offers()`` and ``needs(action)``, and
    ``host_problems()`` for what the host must have.
    """

    name: str
    kind: PluginKind
    factory: Any
    config_type: type[msgspec.Struct]
    version: str = "builtin"
    origin: str = "builtin"
    description: str = ""
    actions: Mapping[str, type[msgspec.Struct]] = field(default_factory=dict)
    idempotent: bool = True
    requires: tuple[str, ...] = ()

    def metrics(self, config: msgspec.Struct) -> Mapping[str, str] | None:
        """A sensor's metric names (-> unit) for this config, when they are known without
        reading (``produces()`` on its config Struct; ``"prefix.*"`` stands for any under it)."""
        from agentd.config_refs import declared_metrics

        return declared_metrics(config) if self.kind == "sensor" else None
