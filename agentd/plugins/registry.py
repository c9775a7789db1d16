"""The plugin registry: built-ins registered in code (a frozen binary has them without package
metadata) plus third-party plugins from the entry-point group ``agentd.plugins``.

An entry point names a `PluginSpec`, or a callable returning one or a list of them. Plugins are
validated when registered; a broken third-party plugin is reported in ``problems`` (one line
naming the plugin and its distribution) and skipped. A blocked entry point is not even imported.
Built-ins are known by name and kind (`register_lazy`) and their module is imported when one is
looked up or everything is listed, so a config imports only the plugins it uses.

``importlib.metadata`` is imported only when some installed distribution declares the group
(a look at the ``entry_points.txt`` files on ``sys.path`` first): it brings email, zipfile,
csv and more, about 1.6 MiB of the daemon's memory, for nothing when no plugin is installed.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, final

import msgspec

from agentd.errors import PluginError
from agentd.plugins.base import CAPABILITIES, PluginKind, PluginSpec
from agentd.plugins.kinds import BY_KIND, KINDS, Kind

__all__ = ["ENTRY_POINT_GROUP", "Registry", "default_registry"]

ENTRY_POINT_GROUP = "agentd.plugins"
_KIND_NAMES: tuple[PluginKind, ...] = tuple(k.name for k in KINDS)
log = logging.getLogger("agentd.plugins")


@final
class Registry:
    """Plugin specs by kind and name (a sensor and an actuator may share a name, like the
    built-in ``file`` ones). ``problems`` lists third-party plugins that were skipped. It is
    the `PluginCatalog` the config is validated through (`kinds`, `schema`, `known`)."""

    __slots__ = ("_blocked", "_failed", "_lazy", "_specs", "problems")

    def __init__(self, blocked: Iterable[str] = ()) -> None:
        self._specs: dict[tuple[str, str], PluginSpec] = {}
        #: plugins known by name whose spec is loaded when first needed (the built-ins)
        self._lazy: dict[tuple[str, str], Callable[[], PluginSpec]] = {}
        self._blocked = set(blocked)
        self.problems: list[str] = []
        self._failed: dict[str, str] = {}

    def register(self, spec: PluginSpec) -> None:
        """Validate and add a plugin; raises PluginError naming the plugin and its origin."""
        if not isinstance(spec, PluginSpec):
            raise PluginError(repr(spec)[:60], "is not a PluginSpec", "?")
        where = spec.origin
        kind = BY_KIND.get(spec.kind)
        if kind is None:
            raise PluginError(spec.name, f"unknown kind {spec.kind!r}", where)
        if not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(spec.name, "plugin names use letters, digits, '_' and '-'", where)
        if (spec.kind, spec.name) in self._lazy:
            raise PluginError(
                spec.name, f"duplicate {spec.kind} plugin name (already from builtin)", where
            )
        if (spec.kind, spec.name) in self._specs:
            other = self._specs[spec.kind, spec.name].origin
            raise PluginError(
                spec.name, f"duplicate {spec.kind} plugin name (already from {other})", where
            )
        if not (
            isinstance(spec.config_type, type) and issubclass(spec.config_type, msgspec.Struct)
        ):
            raise PluginError(spec.name, "config_type is not a msgspec.Struct", where)
        method = kind.method
        target = spec.factory
        if not callable(target):
            raise PluginError(spec.name, "factory is not callable", where)
        if inspect.isclass(target):
            impl = getattr(target, method, None)
            if not callable(impl):
                raise PluginError(
                    spec.name,
                    f"{target.__name__} does not satisfy the {spec.kind} protocol "
                    f"(no {method}() method)",
                    where,
                )
            if kind.coroutine and not inspect.iscoroutinefunction(impl):
                raise PluginError(
                    spec.name,
                    f"{target.__name__}.{method}() must be `async def` (the {spec.kind} protocol)",
                    where,
                )
        for need in spec.requires:
            if need not in CAPABILITIES:
                known = ", ".join(sorted(CAPABILITIES))
                raise PluginError(
                    spec.name, f"requires unknown capability {need!r} (known: {known})", where
                )
        for action, params in spec.actions.items():
            if not (isinstance(params, type) and issubclass(params, msgspec.Struct)):
                raise PluginError(spec.name, f"params of action {action!r} is not a Struct", where)
        if kind.needs_actions and not spec.actions:
            raise PluginError(spec.name, f"an {kind.name} must declare at least one action", where)
        self._specs[spec.kind, spec.name] = spec

    def register_lazy(self, name: str, kind: PluginKind, load: Callable[[], PluginSpec]) -> None:
        """Know plugin ``name`` of ``kind`` now, and import its spec (``load()``, then
        `register`) only when it is first looked up or everything is listed."""
        if (kind, name) in self._specs or (kind, name) in self._lazy:
            raise PluginError(name, f"duplicate {kind} plugin name", "builtin")
        self._lazy[kind, name] = load

    def _load(self, kind: str, name: str) -> None:
        load = self._lazy.pop((kind, name), None)
        if load is None:
            return
        spec = load()
        if (spec.kind, spec.name) != (kind, name):
            raise PluginError(name, f"its spec says {spec.kind} {spec.name!r}", spec.origin)
        self.register(spec)

    def _load_all(self) -> None:
        for kind, name in list(self._lazy):
            if name not in self._blocked:  # a blocked plugin is never imported
                self._load(kind, name)

    def find(self, name: str, kind: PluginKind | None = None) -> PluginSpec | None:
        """The plugin called ``name`` (of ``kind``; without it, the first of sensor, policy,
        actuator). None if unknown or blocked."""
        if name in self._blocked:
            return None
        for k in (kind,) if kind else _KIND_NAMES:
            self._load(k, name)
            spec = self._specs.get((k, name))
            if spec is not None:
                return spec
        return None

    def find_all(self, name: str) -> list[PluginSpec]:
        return [s for k in _KIND_NAMES if (s := self.find(name, k)) is not None]

    def get(self, name: str, kind: PluginKind | None = None) -> PluginSpec:
        spec = self.find(name, kind)
        if spec is None:
            reason = "is blocked by config" if name in self._blocked else "is not registered"
            raise PluginError(name, reason)
        return spec

    def is_blocked(self, name: str) -> bool:
        return name in self._blocked

    def names(self, kind: PluginKind | None = None) -> list[str]:
        known = [*self._specs, *self._lazy]  # the names need no import
        return sorted(
            {n for (k, n) in known if (kind is None or k == kind) and n not in self._blocked}
        )

    def specs(self) -> list[PluginSpec]:
        self._load_all()
        return sorted(
            (s for s in self._specs.values() if s.name not in self._blocked),
            key=lambda s: (s.name, _KIND_NAMES.index(s.kind)),
        )

    # -- the PluginCatalog the config is validated through -----------------------------------
    def kinds(self) -> Sequence[Kind]:
        return KINDS

    def schema(self, name: str, kind: str | None = None) -> PluginSpec | None:
        if kind is None:
            return self.find(name)
        k = BY_KIND.get(kind)
        return None if k is None else self.find(name, k.name)

    def known(self, kind: str) -> list[str]:
        k = BY_KIND.get(kind)
        return [] if k is None else self.names(k.name)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register third-party plugins; failures go to ``problems`` (and the log), not up."""
        if not _declared(group):
            return
        from importlib import metadata

        for ep in metadata.entry_points(group=group):
            dist = ep.dist
            origin = f"{dist.name}=={dist.version}" if dist is not None else ep.value
            if ep.name in self._blocked:
                log.debug("plugin %r (%s) is blocked by config: not loaded", ep.name, origin)
                continue
            try:
                loaded: Any = ep.load()
                specs = (
                    loaded() if callable(loaded) and not isinstance(loaded, PluginSpec) else loaded
                )
                for item in specs if isinstance(specs, list | tuple) else [specs]:
                    if not isinstance(item, PluginSpec):
                        raise PluginError(  # noqa: TRY301 - reported like any other problem
                            ep.name,
                            f"entry point {ep.value} gave a {type(item).__name__}, "
                            "not a PluginSpec",
                            origin,
                        )
                    if item.origin == "builtin":
                        item = _with_origin(item, origin)  # noqa: PLW2901
                    self.register(item)
            except PluginError as exc:
                self._problem(str(exc), ep.name, exc.plugin)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop agentd
                self._problem(
                    f"plugin {ep.name!r} ({origin}): cannot load {ep.value}: "
                    f"{type(exc).__name__}: {exc}",
                    ep.name,
                )

    def _problem(self, message: str, *names: str) -> None:
        # one line, whatever the exception text looked like; the daemon and the CLI report it
        line = " ".join(message.split())
        self.problems.append(line)
        for name in names:
            self._failed.setdefault(name, line)
        log.debug("plugin skipped: %s", line)

    def failed(self, name: str) -> str | None:
        """Why a third-party plugin called ``name`` was skipped, if it was."""
        return self._failed.get(name)


def _declared(group: str) -> bool:
    """Whether a distribution on ``sys.path`` may declare entry points in ``group``: False only
    when every path entry is a directory (or the frozen bundle's stdlib zip) and none of its
    ``*.dist-info`` / ``*.egg-info`` directories names the group in its ``entry_points.txt``."""
    header = f"[{group}]"
    for entry in sys.path:
        where = entry or "."
        if not os.path.isdir(where):
            if os.path.isfile(where) and not where.endswith("base_library.zip"):
                return True  # a zip or egg on the path: let importlib.metadata look inside
            continue
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(where, name, "entry_points.txt"), encoding="utf-8") as fh:
                    if any(line.strip() == header for line in fh):
                        return True
            except OSError:
                continue
    return False


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
        requires=spec.requires,
    )


def default_registry(blocked: Iterable[str] = (), entry_points: bool = True) -> Registry:
    """The built-ins plus, unless disabled, the third-party plugins installed."""
    from agentd.plugins.builtin import EXTRA, TABLE

    registry = Registry(blocked)
    for builtin in TABLE:
        registry.register_lazy(builtin.name, builtin.kind, builtin.load)
    for spec in EXTRA:
        registry.register(spec)
    if entry_points:
        registry.load_entry_points()
    return registry
