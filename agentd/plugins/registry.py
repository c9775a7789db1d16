"""The plugin registry: built-ins registered in code (a frozen binary has them without package
metadata) plus third-party plugins from the entry-point group ``agentd.plugins``.

An entry point names a `PluginSpec`, or a callable returning one or a list of them. Plugins are
validated when registered; a broken third-party plugin is reported in ``problems`` and skipped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from importlib import metadata
from typing import Any, final

import msgspec

from agentd.errors import PluginError
from agentd.plugins.base import PluginKind, PluginSpec

__all__ = ["ENTRY_POINT_GROUP", "Registry", "default_registry"]

ENTRY_POINT_GROUP = "agentd.plugins"
_METHOD = {"sensor": "perceive", "policy": "decide", "actuator": "act"}
log = logging.getLogger("agentd.plugins")


@final
class Registry:
    """Plugin specs by name. ``problems`` lists third-party plugins that were skipped."""

    __slots__ = ("_blocked", "_specs", "problems")

    def __init__(self, blocked: Iterable[str] = ()) -> None:
        self._specs: dict[str, PluginSpec] = {}
        self._blocked = set(blocked)
        self.problems: list[str] = []

    def register(self, spec: PluginSpec) -> None:
        """Validate and add a plugin; raises PluginError naming the plugin and its origin."""
        where = spec.origin
        if not isinstance(spec, PluginSpec):
            raise PluginError(str(spec), "entry point did not give a PluginSpec", where)
        if spec.kind not in _METHOD:
            raise PluginError(spec.name, f"unknown kind {spec.kind!r}", where)
        if not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(spec.name, "plugin names use letters, digits, '_' and '-'", where)
        if spec.name in self._specs:
            other = self._specs[spec.name].origin
            raise PluginError(spec.name, f"duplicate plugin name (already from {other})", where)
        if not (
            isinstance(spec.config_type, type) and issubclass(spec.config_type, msgspec.Struct)
        ):
            raise PluginError(spec.name, "config_type is not a msgspec.Struct", where)
        method = _METHOD[spec.kind]
        target = spec.factory
        if not callable(target):
            raise PluginError(spec.name, "factory is not callable", where)
        if inspect.isclass(target) and not callable(getattr(target, method, None)):
            raise PluginError(
                spec.name,
                f"{target.__name__} does not satisfy the {spec.kind} protocol "
                f"(no {method}() method)",
                where,
            )
        for action, params in spec.actions.items():
            if not (isinstance(params, type) and issubclass(params, msgspec.Struct)):
                raise PluginError(spec.name, f"params of action {action!r} is not a Struct", where)
        if spec.kind == "actuator" and not spec.actions:
            raise PluginError(spec.name, "an actuator must declare at least one action", where)
        self._specs[spec.name] = spec

    def find(self, name: str) -> PluginSpec | None:
        if name in self._blocked:
            return None
        return self._specs.get(name)

    def get(self, name: str) -> PluginSpec:
        spec = self.find(name)
        if spec is None:
            reason = "is blocked by config" if name in self._blocked else "is not registered"
            raise PluginError(name, reason)
        return spec

    def names(self, kind: PluginKind | None = None) -> list[str]:
        return sorted(
            n
            for n, s in self._specs.items()
            if (kind is None or s.kind == kind) and n not in self._blocked
        )

    def specs(self) -> list[PluginSpec]:
        return [self._specs[n] for n in self.names()]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register third-party plugins; failures go to ``problems`` (and the log), not up."""
        for ep in metadata.entry_points(group=group):
            dist = ep.dist
            origin = f"{dist.name}=={dist.version}" if dist is not None else ep.value
            try:
                loaded: Any = ep.load()
                specs = (
                    loaded() if callable(loaded) and not isinstance(loaded, PluginSpec) else loaded
                )
                for item in specs if isinstance(specs, list | tuple) else [specs]:
                    if isinstance(item, PluginSpec) and item.origin == "builtin":
                        item = _with_origin(item, origin)  # noqa: PLW2901
                    self.register(item)
            except PluginError as exc:
                self._problem(str(exc))
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop agentd
                self._problem(
                    f"plugin {ep.name!r} ({origin}): cannot load {ep.value}: "
                    f"{type(exc).__name__}: {exc}"
                )

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        log.error("%s; skipped", message)


def _with_origin(spec: PluginSpec, origin: str) -> PluginSpec:
    version = origin.partition("==")[2] or spec.version
    return PluginSpec(
        name=spec.name,
        kind=spec.kind,
        factory=spec.factory,
        config_type=spec.config_type,
        version=version,
        origin=origin,
        description=spec.description,
        actions=spec.actions,
        idempotent=spec.idempotent,
    )


def default_registry(blocked: Iterable[str] = (), entry_points: bool = True) -> Registry:
    """The built-ins plus, unless disabled, the third-party plugins installed."""
    from agentd.plugins.builtin import BUILTINS

    registry = Registry(blocked)
    for spec in BUILTINS:
        registry.register(spec)
    if entry_points:
        registry.load_entry_points()
    return registry
