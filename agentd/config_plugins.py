"""The plugin half of the config: the common keys every instance has, one instance Struct per
kind, and the decoding of one ``[<section>.NAME]`` table.

The config never imports the plugin registry: `config.load` is handed a `PluginCatalog` (the
registry satisfies it) that says which kinds exist (their sections and Structs) and which
plugin config Struct decodes each instance's own keys.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol, get_args

import msgspec
from msgspec import Meta

from agentd.model import Stream
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
    "UplinkCommon",
    "UplinkInstance",
    "decode_instance",
    "default_node",
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
    #: seconds between two reads (rounded to a whole number of loop intervals; default: every
    #: tick)
    interval: Annotated[float, Meta(ge=0.01)] | None = None
    #: serve its latest readings as gauges on the Prometheus endpoint ([telemetry] prometheus)
    export: bool = False


class PolicyCommon(PluginCommon, frozen=True):
    pass


class ActuatorCommon(PluginCommon, frozen=True):
    retries: Annotated[int, Meta(ge=0, le=10)] = 0
    backoff: Annotated[float, Meta(ge=0, le=60)] = 0.1
    backoff_max: Annotated[float, Meta(ge=0, le=600)] = 5.0
    retry_on: tuple[Literal["timeout", "error"], ...] = ("timeout", "error")


#: a topic level we build from: no wildcards, separators or NUL, not empty
TopicLevel = Annotated[str, Meta(pattern=r"^[^/+#\x00]{1,128}$")]
Prefix = Annotated[str, Meta(pattern=r"^[^+#\x00]{1,256}$")]
STREAMS: Final[tuple[Stream, ...]] = get_args(Stream)
_NODE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.:-]")


class UplinkCommon(PluginCommon, frozen=True):
    """An uplink's engine keys (``[uplinks.NAME]``, whatever its transport): what the engine
    (`agentd.uplink.UplinkEngine`, which calls this `UplinkSettings`) forwards and how. The
    transport's own keys (``url``, TLS, credentials) go to its plugin's config Struct.
    ``timeout`` and ``degraded_after`` do not apply; ``startup_error`` decides what happens
    when the transport cannot be built or the cursors cannot be read."""

    plugin: str | None = "mqtt"
    #: this gateway's name in topics and envelopes; default: /etc/machine-id or the hostname
    node: TopicLevel | None = None
    prefix: Prefix = "agentd/v1"
    streams: tuple[Stream, ...] = STREAMS
    format: Literal["msgpack", "json"] = "msgpack"
    #: batches in flight (sent, not acknowledged); never above the broker's Receive Maximum
    window: Annotated[int, Meta(ge=1, le=1024)] = 8
    #: a batch closes on whichever comes first
    batch_rows: Annotated[int, Meta(ge=1, le=65_535)] = 256
    batch_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 128 * 1024
    batch_interval: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    #: bytes/s of payload at most (a long outage must not saturate a cellular link); None: no cap
    catch_up_rate: Annotated[int, Meta(ge=1024)] | None = None
    #: keep rows past the PUBACK until the consumer's watermark on <prefix>/<node>/ack passes
    end_to_end: bool = False
    #: health turns degraded when the oldest unsent row is older than this (seconds)
    backlog_max_age: Annotated[float, Meta(gt=0)] | None = 300.0
    #: a batch not answered within this many seconds means the link is broken: reconnect
    ack_timeout: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    #: full-jitter reconnect backoff: sleep uniform(0, min(max, min * 2**attempt))
    reconnect_min: Annotated[float, Meta(gt=0, le=60)] = 0.5
    reconnect_max: Annotated[float, Meta(gt=0, le=3600)] = 60.0

    def __post_init__(self) -> None:
        if len(set(self.streams)) != len(self.streams):
            raise ValueError("streams: each stream at most once")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be below reconnect_min")

    def resolved_node(self) -> str:
        return self.node or default_node()


def default_node() -> str:
    """/etc/machine-id, else the hostname, made safe as one topic level."""
    try:
        node = Path("/etc/machine-id").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        node = ""
    node = node or socket.gethostname() or "agentd"
    return _NODE_CHARS.sub("_", node)[:128]


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


class UplinkInstance(PluginInstance, kw_only=True):
    common: UplinkCommon


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


def _defaults(common: type[PluginCommon]) -> PluginCommon:
    return msgspec.convert({}, common)


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
    # without a ``plugin`` key: the kind's default (an uplink's is "mqtt"), else the name
    implied = (common or _defaults(kind.common)).plugin
    plugin_name = plugin if isinstance(plugin, str) else implied or name
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
