"""The plugin half of the config: the common keys every instance has, one instance Struct per
kind, and the decoding of one ``[<section>.NAME]`` table.

The config never imports the plugin registry: `config.load` is handed a `PluginCatalog` (the
registry satisfies it) that says which kinds exist (their sections and Structs) and which
plugin config Struct decodes each instance's own keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal, Protocol

import msgspec
from msgspec import Meta

from agentd.validation import format_validation_error, show

__all__ = [
    "ActuatorCommon",
    "ActuatorInstance",
    "CatalogFactory",
    "KindSchema",
    "PluginCatalog",
    "PluginCommon",
    "PluginInstance",
    "PluginSchema",
    "PolicyCommon",
    "PolicyInstance",
    "SensorCommon",
    "SensorInstance",
    "decode_instance",
]

Seconds = Annotated[float, Meta(gt=0)]


class PluginCommon(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The keys every plugin instance has, whatever its kind."""

    plugin: str | None = None
    enabled: bool = True
    timeout: Seconds | None = None
    #: when start() fails: refuse to start agentd, run without the plugin, or keep retrying
    startup_error: Literal["fail", "skip", "retry"] = "fail"
    #: sensors/actuators: consecutive failures before `degraded` and backing off
    degraded_after: Annotated[int, Meta(ge=1, le=1000)] = 3
    #: consecutive failures before the plugin is `failing` (and it is logged)
    failing_after: Annotated[int, Meta(ge=1, le=1000)] = 1
    #: consecutive successes before a failing plugin is `ok` again (doubles while it flaps)
    recovered_after: Annotated[int, Meta(ge=1, le=1000)] = 1
    #: the backed-off interval never exceeds this (default: 64 x the normal interval)
    max_interval: Seconds | None = None


class SensorCommon(PluginCommon, frozen=True):
    interval: Annotated[float, Meta(ge=0.01)] | None = None


class PolicyCommon(PluginCommon, frozen=True):
    pass


class ActuatorCommon(PluginCommon, frozen=True):
    retries: Annotated[int, Meta(ge=0, le=10)] = 0
    backoff: Annotated[float, Meta(ge=0, le=60)] = 0.1
    backoff_max: Annotated[float, Meta(ge=0, le=600)] = 5.0
    retry_on: tuple[Literal["timeout", "error"], ...] = ("timeout", "error")


class PluginInstance(msgspec.Struct, kw_only=True):
    """One configured plugin instance: its name, the plugin it runs, common and own settings."""

    name: str
    plugin: str
    common: PluginCommon
    config: msgspec.Struct
    #: the instance's table as written; reload compares these to find what changed
    raw: dict[str, Any]

    @property
    def enabled(self) -> bool:
        return self.common.enabled


class SensorInstance(PluginInstance, kw_only=True):
    common: SensorCommon


class PolicyInstance(PluginInstance, kw_only=True):
    common: PolicyCommon


class ActuatorInstance(PluginInstance, kw_only=True):
    common: ActuatorCommon


class KindSchema(Protocol):
    """What the config needs of one plugin kind (a row of `agentd.plugins.kinds.KINDS`)."""

    @property
    def name(self) -> str: ...

    @property
    def section(self) -> str: ...

    @property
    def common(self) -> type[PluginCommon]: ...

    @property
    def instance(self) -> type[PluginInstance]: ...


class PluginSchema(Protocol):
    """What the config needs of one registered plugin (a `PluginSpec`)."""

    @property
    def kind(self) -> str: ...

    @property
    def config_type(self) -> type[msgspec.Struct]: ...


class PluginCatalog(Protocol):
    """The lookup `config.load` validates plugin sections through (the registry is one)."""

    def kinds(self) -> Sequence[KindSchema]: ...

    def schema(self, name: str, kind: str | None = None) -> PluginSchema | None: ...

    def is_blocked(self, name: str) -> bool: ...

    def known(self, kind: str) -> list[str]: ...

    def failed(self, name: str) -> str | None: ...


#: builds the catalog from ``[plugins] blocked`` (a blocked third-party plugin is not even
#: imported), e.g. `agentd.plugins.registry.default_registry`
CatalogFactory = Callable[[Iterable[str]], PluginCatalog]


def decode_instance(
    kind: KindSchema, name: str, table: Any, catalog: PluginCatalog, errors: list[str]
) -> PluginInstance | None:
    """One ``[<section>.NAME]`` table: common keys into the kind's Struct, the rest into the
    plugin's own. Problems go to ``errors`` (each names its key path); None when there were."""
    where = f"{kind.section}.{name}"
    if not isinstance(table, dict):
        errors.append(f"{where}: expected a table, got {show(table)}")
        return None
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_\-]*", name):
        errors.append(f"{where}: instance names use letters, digits, '_' and '-' only")
        return None
    common_keys = set(kind.common.__struct_fields__)
    common_raw = {k: v for k, v in table.items() if k in common_keys}
    own_raw = {k: v for k, v in table.items() if k not in common_keys}
    common: PluginCommon | None = None
    try:
        common = msgspec.convert(common_raw, kind.common)
    except msgspec.ValidationError as exc:
        errors.append(format_validation_error(where, exc, common_raw))
    plugin = table.get("plugin")
    plugin_name = plugin if isinstance(plugin, str) else name
    spec = catalog.schema(plugin_name, kind.name) or catalog.schema(plugin_name)
    if spec is None and catalog.is_blocked(plugin_name):
        if table.get("enabled", True) is not False:
            errors.append(f"{where}.plugin: plugin {plugin_name!r} is blocked")
        return None
    if spec is None:
        known = ", ".join(catalog.known(kind.name)) or "none"
        key = f"{where}.plugin" if isinstance(plugin, str) else where
        failed = catalog.failed(plugin_name)
        if failed:  # installed, but it did not load: say why
            errors.append(f"{key}: {failed}")
            return None
        errors.append(f"{key}: unknown {kind.name} plugin {plugin_name!r} (known: {known})")
        return None
    if spec.kind != kind.name:
        errors.append(f"{where}.plugin: {plugin_name!r} is a {spec.kind} plugin, not a {kind.name}")
        return None
    try:
        config = msgspec.convert(own_raw, spec.config_type, str_keys=True)
    except msgspec.ValidationError as exc:
        errors.append(format_validation_error(where, exc, own_raw))
        return None
    if common is None:
        return None
    return kind.instance(
        name=name, plugin=plugin_name, common=common, config=config, raw=dict(table)
    )
