"""Typed configuration: TOML decoded by msgspec into Structs, unknown keys rejected.

Each plugin instance is a table under its kind's section (``[sensors.NAME]``,
``[policies.NAME]``, ``[actuators.NAME]``). Its common keys (``plugin``, ``enabled``,
``interval``, ``timeout``, ...) and every other key, which belongs to the plugin and is decoded
into the plugin's own config Struct, are read through the `PluginCatalog` the caller hands in
(agentd/config_plugins.py), so ``check-config`` validates plugin settings too. Errors name
the key path: ``sensors.cpu.interval: expected a number >= 0.01, got -1``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import msgspec
from msgspec import Meta

from agentd import paths
from agentd.config_plugins import (
    ActuatorCommon,
    ActuatorInstance,
    CatalogFactory,
    PluginCatalog,
    PluginCommon,
    PluginInstance,
    PolicyCommon,
    PolicyInstance,
    SensorCommon,
    SensorInstance,
    UplinkCommon,
    UplinkInstance,
    decode_instance,
)
from agentd.config_refs import did_you_mean
from agentd.errors import ConfigError
from agentd.validation import format_validation_error, show

__all__ = [
    "DEFAULT_CONFIG",
    "OTLP_MISSING",
    "SECTIONS",
    "ActuatorCommon",
    "ActuatorInstance",
    "AgentSection",
    "CommandsConfig",
    "Config",
    "ControlConfig",
    "HealthConfig",
    "JournalConfig",
    "LogSection",
    "PathsSection",
    "PluginCatalog",
    "PluginCommon",
    "PluginInstance",
    "PolicyCommon",
    "PolicyInstance",
    "SensorCommon",
    "SensorInstance",
    "StoreConfig",
    "TelemetryConfig",
    "UplinkCommon",
    "UplinkInstance",
    "default_config_path",
    "format_validation_error",
    "load",
    "loads",
    "resolve_runtime_dir",
    "resolve_state_dir",
]

Seconds = Annotated[float, Meta(gt=0)]
LogLevel = Literal["debug", "info", "warning", "error"]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class AgentSection(_Section, frozen=True):
    """The perception loop."""

    interval: Annotated[float, Meta(ge=0.01)] = 1.0
    align: bool = False
    offset: Annotated[float, Meta(ge=0)] = 0.0
    #: per-stage and per-plugin-call timeouts; default: the interval
    stage_timeout: Seconds | None = None
    plugin_timeout: Seconds | None = None
    max_actions_per_tick: Annotated[int, Meta(ge=1, le=10_000)] = 64
    max_concurrent_actions: Annotated[int, Meta(ge=1, le=1024)] = 8
    #: how long shutdown waits for in-flight actions before cancelling them
    drain_timeout: Annotated[float, Meta(ge=0, le=60)] = 5.0


class PathsSection(_Section, frozen=True):
    state_dir: str | None = None
    runtime_dir: str | None = None


class LogSection(_Section, frozen=True):
    level: LogLevel = "info"
    #: an INFO summary line every N seconds (0: never)
    heartbeat: Annotated[float, Meta(ge=0)] = 60.0


class JournalConfig(_Section, frozen=True):
    enabled: bool = True
    #: journal every Nth tick (observations only)
    every: Annotated[int, Meta(ge=1)] = 1
    max_age: Seconds | None = 7 * 86400.0
    max_rows: Annotated[int, Meta(ge=1)] | None = 100_000
    max_bytes: Annotated[int, Meta(ge=4096)] | None = None


class StoreConfig(_Section, frozen=True):
    enabled: bool = True
    #: relative paths are inside the state directory
    path: str = "agentd.db"
    synchronous: Literal["normal", "full"] = "full"
    busy_timeout: Seconds = 5.0
    flush_interval: Seconds = 1.0
    batch_size: Annotated[int, Meta(ge=1, le=100_000)] = 500
    queue_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    sweep_interval: Seconds = 60.0
    #: seconds between background integrity checks (read-only, off the writer); none: never
    check_interval: Seconds | None = 86400.0
    observations: JournalConfig = JournalConfig()
    actions: JournalConfig = JournalConfig(max_rows=100_000)
    #: agentd's own state changes (the uplink's events stream); `every` does not apply
    events: JournalConfig = JournalConfig(max_rows=100_000)


class ControlConfig(_Section, frozen=True):
    enabled: bool = True
    #: default: <runtime dir>/agentd.sock
    socket: str | None = None
    group: str | None = None
    mode: Annotated[int, Meta(ge=0, le=0o777)] = 0o660
    max_frame: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    max_connections: Annotated[int, Meta(ge=1, le=4096)] = 64
    idle_timeout: Seconds = 300.0
    watch_buffer: Annotated[int, Meta(ge=1, le=100_000)] = 1000


class TelemetryFileConfig(_Section, frozen=True):
    #: JSON lines in <state dir>/telemetry/; a file is rotated at max_bytes, `keep` old ones kept
    max_bytes: Annotated[int, Meta(ge=4096, le=1 << 30)] = 4 * 1024 * 1024
    keep: Annotated[int, Meta(ge=1, le=100)] = 2


class TelemetryOtlpConfig(_Section, frozen=True):
    #: the collector's OTLP/HTTP base URL; /v1/traces and /v1/metrics are appended
    endpoint: str = "http://localhost:4318"
    headers: dict[str, str] = {}
    timeout: Annotated[float, Meta(gt=0, le=60)] = 5.0
    compression: Literal["none", "gzip"] = "gzip"


#: ``[telemetry] prometheus``: an IPv4 or [IPv6] address (or localhost) and a port, or a port
_LISTEN = re.compile(r"((\[[0-9A-Fa-f:.]+\]|[0-9.]+|localhost):)?[0-9]{1,5}")


class TelemetryConfig(_Section, frozen=True):
    """Self-monitoring (docs/telemetry.md)."""

    enabled: bool = True
    exporter: Literal["none", "file", "otlp"] = "none"
    #: fraction of ticks traced; control requests and failed or overrunning ticks always are
    tick_sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.001
    sample_failed_ticks: bool = True
    metrics_interval: Annotated[float, Meta(ge=1)] = 60.0
    #: spans waiting for export; more are dropped (and counted), never queued without bound
    max_queue: Annotated[int, Meta(ge=16, le=100_000)] = 2048
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 512
    #: extra resource attributes (site, fleet, ...); service.name, host.name are set already
    resource: dict[str, str] = {}
    file: TelemetryFileConfig = TelemetryFileConfig()
    otlp: TelemetryOtlpConfig = TelemetryOtlpConfig()
    #: serve /metrics for Prometheus on this address (``"127.0.0.1:9464"``; a bare port is
    #: loopback); off by default
    prometheus: str | None = None

    def __post_init__(self) -> None:
        if self.prometheus is not None and not _LISTEN.fullmatch(self.prometheus):
            raise ValueError(
                f"`prometheus`: {self.prometheus!r} is not an address to listen on: write "
                'HOST:PORT with an IP address ("127.0.0.1:9464", "[::1]:9464") or a bare port'
            )


class HealthConfig(_Section, frozen=True):
    """Thresholds for `agentctl health` (ok / degraded / failing)."""

    #: degraded when the p99 tick lateness over the last `window` seconds exceeds this
    lateness_p99: Seconds = 0.25
    window: Annotated[float, Meta(ge=1, le=86_400)] = 300.0
    #: degraded above this resident set size (MiB)
    max_rss_mb: Annotated[float, Meta(gt=0)] = 256.0
    #: failing when no tick started for this many intervals (and the loop is not paused)
    stalled_after: Annotated[float, Meta(ge=2)] = 10.0
    #: failing when the loop has been paused for more than this many intervals
    paused_after: Annotated[float, Meta(ge=1)] = 300.0


class PluginsSection(_Section, frozen=True):
    blocked: tuple[str, ...] = ()


class CommandsConfig(_Section, frozen=True):
    """Fleet commands over the uplink's MQTT connection (docs/uplink.md, "Commands"). Deny by
    default: a verb runs only if a rule of ``allow`` matches it (``"status"``, ``"act"``,
    ``"act:valve.*"``: ``verb`` or ``verb:detail`` as a shell pattern, the detail of ``act``
    being ``actuator.action`` and of ``replay`` the stream)."""

    allow: tuple[Annotated[str, Meta(min_length=1, max_length=256)], ...] = ()
    #: the uplink whose connection carries commands (default: the only mqtt one)
    uplink: str | None = None
    #: also listen on <prefix>/group/<name>/cmd/<verb> for these groups
    groups: tuple[Annotated[str, Meta(pattern=r"^[^/+#\x00]{1,128}$")], ...] = ()
    rate_per_minute: Annotated[int, Meta(ge=1, le=60_000)] = 60
    max_concurrent: Annotated[int, Meta(ge=1, le=256)] = 8
    max_payload: Annotated[int, Meta(ge=1024, le=4 * 1024 * 1024)] = 1024 * 1024
    #: a deadline further ahead than this is refused (the once-only memory must outlive it)
    max_deadline: Annotated[float, Meta(gt=0, le=7 * 86_400)] = 3600.0
    #: "hmac-sha256": every command carries the MQTT 5 user property signature
    signature: Literal["none", "hmac-sha256"] = "none"
    key_file: str | None = None
    #: a systemd credential name holding the key (LoadCredential=NAME:...)
    key_credential: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@-]{1,128}$")] | None = None
    #: default probation of a config pushed by the fleet (seconds)
    probation: Annotated[float, Meta(ge=0, le=86_400)] = 300.0
    replay_max_rows: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000

    def __post_init__(self) -> None:
        if self.signature != "none" and not (self.key_file or self.key_credential):
            raise ValueError("signature needs key_file or key_credential")
        if self.key_file and self.key_credential:
            raise ValueError("key_file and key_credential: give one")


class Config(msgspec.Struct, kw_only=True):
    agent: AgentSection = AgentSection()
    paths: PathsSection = PathsSection()
    log: LogSection = LogSection()
    store: StoreConfig = StoreConfig()
    control: ControlConfig = ControlConfig()
    plugins: PluginsSection = PluginsSection()
    telemetry: TelemetryConfig = TelemetryConfig()
    health: HealthConfig = HealthConfig()
    commands: CommandsConfig = CommandsConfig()
    #: plugin instances by kind section (``sensors``, ``policies``, ...), in kind order
    plugin_sections: dict[str, dict[str, PluginInstance]] = {}
    #: where it came from: a file path or "<default>"
    source: str = "<default>"

    def section(self, name: str) -> dict[str, PluginInstance]:
        """The instances under ``[<name>.*]`` (empty if there are none)."""
        return self.plugin_sections.get(name, {})

    @property
    def sensors(self) -> dict[str, SensorInstance]:
        return cast(dict[str, SensorInstance], self.section("sensors"))

    @property
    def policies(self) -> dict[str, PolicyInstance]:
        return cast(dict[str, PolicyInstance], self.section("policies"))

    @property
    def actuators(self) -> dict[str, ActuatorInstance]:
        return cast(dict[str, ActuatorInstance], self.section("actuators"))

    @property
    def uplinks(self) -> dict[str, UplinkInstance]:
        return cast(dict[str, UplinkInstance], self.section("uplinks"))

    def instances(self) -> Iterable[PluginInstance]:
        for by_name in self.plugin_sections.values():
            yield from by_name.values()

    def check_reloadable(self, new: Config) -> None:
        """Raises ConfigError naming the sections ``new`` changes that need a restart."""
        changed = [
            name
            for name in ("paths", "store", "control", "telemetry")
            if getattr(new, name) != getattr(self, name)
        ]
        if changed:
            raise ConfigError([f"{name}: changes need a restart, not a reload" for name in changed])


#: the config's own sections (plugin sections come from the catalog's kinds)
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "agent": AgentSection,
    "paths": PathsSection,
    "log": LogSection,
    "store": StoreConfig,
    "control": ControlConfig,
    "plugins": PluginsSection,
    "telemetry": TelemetryConfig,
    "health": HealthConfig,
    "commands": CommandsConfig,
}

DEFAULT_CONFIG = """\
# agentd's embedded default configuration (`agentd print-default-config`).
# Every key is optional; `agentd schema` prints them all.

[agent]
interval = 1.0          # seconds between ticks, on absolute deadlines (no drift)

[log]
level = "info"
heartbeat = 60.0        # an INFO summary line every minute

# Sensors: CPU, load, memory, disk usage and temperatures, every tick.
[sensors.system]
plugin = "system"
mounts = { root = "/" }

# Policies: warn when CPU stays above 90 % for 3 ticks; clear below 80 %.
[policies.cpu_high]
plugin = "threshold"
metric = "system.cpu.percent"
above = 90.0
for_ticks = 3
hysteresis = 10.0
cooldown = 300.0
actuator = "log"
action = "alert"
params = { message = "CPU above 90 % for 3 ticks" }

# Actuators: write actions to the log.
[actuators.log]
plugin = "log"
"""


def default_config_path() -> Path | None:
    """The config file used when none is given: `$CONFIGURATION_DIRECTORY/agentd.toml`
    (systemd's ConfigurationDirectory=), else `/etc/agentd/agentd.toml`, if it exists."""
    base = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0] or "/etc/agentd"
    candidate = Path(base) / "agentd.toml"
    return candidate if candidate.is_file() else None


def load(path: str | os.PathLike[str] | None, plugins: PluginCatalog | CatalogFactory) -> Config:
    """Load and validate a config file (or the embedded default when ``path`` is None).
    ``plugins`` validates the plugin sections: a catalog, or a factory that builds one from
    ``[plugins] blocked`` (`agentd.plugins.registry.default_registry`)."""
    if path is None:
        return loads(DEFAULT_CONFIG, plugins, source="<default>")
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{p}: is a directory, not a config file"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not a TOML file (not UTF-8 text at byte {exc.start})"]) from None
    if not text.strip():
        raise ConfigError([f"{p}: the file is empty (configure at least one sensor)"])
    return loads(text, plugins, source=str(p))


def loads(
    text: str, plugins: PluginCatalog | CatalogFactory, *, source: str = "<string>"
) -> Config:
    """Parse and validate TOML text. Raises ConfigError with every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    if callable(plugins):
        # a blocked third-party plugin is not even imported
        section = raw.get("plugins")
        blocked = section.get("blocked") if isinstance(section, dict) else None
        ok = isinstance(blocked, list) and all(isinstance(b, str) for b in blocked)
        plugins = plugins(blocked if ok else ())  # type: ignore[arg-type]
    return from_dict(raw, plugins, source=source)


def from_dict(raw: Mapping[str, Any], catalog: PluginCatalog, *, source: str) -> Config:
    errors: list[str] = []
    sections: dict[str, Any] = {}
    kinds = {k.section: k for k in catalog.kinds()}
    instances: dict[str, dict[str, PluginInstance]] = {k: {} for k in kinds}
    for key, value in raw.items():
        if key in SECTIONS:
            try:
                sections[key] = msgspec.convert(value, SECTIONS[key], str_keys=True)
            except msgspec.ValidationError as exc:
                errors.append(format_validation_error(key, exc, value))
        elif key in kinds:
            if not isinstance(value, dict):
                errors.append(f"{key}: expected a table of named {key}, got {show(value)}")
                continue
            for name, table in value.items():
                inst = decode_instance(kinds[key], name, table, catalog, errors)
                if inst is not None:
                    instances[key][name] = inst
        else:
            errors.append(f"{key}: unknown key")
    if not errors:
        _cross_check(instances, sections, errors)
    if errors:
        raise ConfigError(errors)
    return Config(**sections, plugin_sections=instances, source=source)


OTLP_MISSING = (
    "telemetry.exporter: 'otlp' needs the optional OTLP exporter, which is not installed "
    "(pip install 'agentd[otlp]')"
)


def _otlp_installed() -> bool:
    """Without importing it (check-config stays fast)."""
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except (ImportError, ValueError):
        return False


def _cross_check(
    instances: dict[str, dict[str, PluginInstance]],
    sections: dict[str, Any],
    errors: list[str],
) -> None:
    telemetry = sections.get("telemetry")
    if telemetry is not None and telemetry.exporter == "otlp" and not _otlp_installed():
        errors.append(OTLP_MISSING)
    if telemetry is not None and telemetry.prometheus and not telemetry.enabled:
        errors.append("telemetry.prometheus: needs [telemetry] enabled = true (it serves it)")
    blocked = set(sections.get("plugins", PluginsSection()).blocked)
    for section, by_name in instances.items():
        for name, inst in by_name.items():
            if inst.plugin in blocked and inst.enabled:
                errors.append(f"{section}.{name}.plugin: plugin {inst.plugin!r} is blocked")
    actuators = instances.get("actuators", {})
    for name, inst in instances.get("policies", {}).items():
        target = getattr(inst.config, "actuator", None)
        if isinstance(target, str) and target not in actuators:
            known = ", ".join(sorted(actuators)) or "none"
            errors.append(
                f"policies.{name}.actuator: no actuator named {target!r} is configured"
                f"{did_you_mean(target, actuators)} (configured: {known})"
            )
    store = sections.get("store", StoreConfig())
    for name, inst in instances.get("uplinks", {}).items():
        if inst.enabled and not store.enabled:
            errors.append(
                f"uplinks.{name}: an uplink sends the journals, so it needs the store "
                "([store] enabled = true)"
            )
    if not any(i.enabled for i in instances.get("sensors", {}).values()):
        errors.append("sensors: at least one enabled sensor must be configured")


def resolve_state_dir(config: Config, override: str | None = None) -> Path:
    """--state-dir, else config, else the rule in agentd/paths.py."""
    return paths.state_dir(override or config.paths.state_dir)


def resolve_runtime_dir(config: Config, override: str | None = None) -> Path:
    """--runtime-dir, else config, else the rule in agentd/paths.py."""
    return paths.runtime_dir(override or config.paths.runtime_dir)
