"""Typed configuration: TOML decoded by msgspec into Structs, unknown keys rejected.

Each plugin instance is a table under ``[sensors.NAME]``, ``[policies.NAME]`` or
``[actuators.NAME]``. Its common keys (``plugin``, ``enabled``, ``interval``, ``timeout``, ...)
are read here; every other key belongs to the plugin and is decoded into the plugin's own config
Struct, so ``check-config`` validates plugin settings too. Errors name the key path:
``sensors.cpu.interval: expected a number >= 0.01, got -1``.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agentd.errors import ConfigError

if TYPE_CHECKING:
    from agentd.plugins.registry import Registry

__all__ = [
    "DEFAULT_CONFIG",
    "ActuatorInstance",
    "AgentSection",
    "Config",
    "ControlConfig",
    "HealthConfig",
    "JournalConfig",
    "LogSection",
    "PathsSection",
    "PluginInstance",
    "PolicyInstance",
    "SensorInstance",
    "StoreConfig",
    "TelemetryConfig",
    "default_config_path",
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


class HealthConfig(_Section, frozen=True):
    """Thresholds for `agentctl health` (ok / degraded / failing)."""

    #: degraded when the p99 tick lateness over the last `window` seconds exceeds this
    lateness_p99: Seconds = 0.25
    window: Annotated[float, Meta(ge=1, le=86_400)] = 300.0
    #: degraded above this resident set size (MiB)
    max_rss_mb: Annotated[float, Meta(gt=0)] = 256.0
    #: failing when no tick started for this many intervals (and the loop is not paused)
    stalled_after: Annotated[float, Meta(ge=2)] = 10.0


class PluginsSection(_Section, frozen=True):
    blocked: tuple[str, ...] = ()


class _Common(_Section, frozen=True):
    plugin: str | None = None
    enabled: bool = True
    timeout: Seconds | None = None
    #: when start() fails: refuse to start agentd, run without the plugin, or keep retrying
    startup_error: Literal["fail", "skip", "retry"] = "fail"
    #: sensors/actuators: consecutive failures before `degraded` and backing off
    degraded_after: Annotated[int, Meta(ge=1, le=1000)] = 3
    #: the backed-off interval never exceeds this (default: 64 x the normal interval)
    max_interval: Seconds | None = None


class SensorCommon(_Common, frozen=True):
    interval: Annotated[float, Meta(ge=0.01)] | None = None


class PolicyCommon(_Common, frozen=True):
    pass


class ActuatorCommon(_Common, frozen=True):
    retries: Annotated[int, Meta(ge=0, le=10)] = 0
    backoff: Annotated[float, Meta(ge=0, le=60)] = 0.1
    backoff_max: Annotated[float, Meta(ge=0, le=600)] = 5.0
    retry_on: tuple[Literal["timeout", "error"], ...] = ("timeout", "error")


_COMMON: dict[str, type[_Common]] = {
    "sensor": SensorCommon,
    "policy": PolicyCommon,
    "actuator": ActuatorCommon,
}
_SECTION_KIND = {"sensors": "sensor", "policies": "policy", "actuators": "actuator"}


class PluginInstance(msgspec.Struct, kw_only=True):
    """One configured plugin instance: its name, the plugin it runs, common and own settings."""

    name: str
    plugin: str
    common: _Common
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


class Config(msgspec.Struct, kw_only=True):
    agent: AgentSection = AgentSection()
    paths: PathsSection = PathsSection()
    log: LogSection = LogSection()
    store: StoreConfig = StoreConfig()
    control: ControlConfig = ControlConfig()
    plugins: PluginsSection = PluginsSection()
    telemetry: TelemetryConfig = TelemetryConfig()
    health: HealthConfig = HealthConfig()
    sensors: dict[str, SensorInstance] = {}
    policies: dict[str, PolicyInstance] = {}
    actuators: dict[str, ActuatorInstance] = {}
    #: where it came from: a file path or "<default>"
    source: str = "<default>"

    def instances(self) -> Iterable[PluginInstance]:
        yield from self.sensors.values()
        yield from self.policies.values()
        yield from self.actuators.values()


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "agent": AgentSection,
    "paths": PathsSection,
    "log": LogSection,
    "store": StoreConfig,
    "control": ControlConfig,
    "plugins": PluginsSection,
    "telemetry": TelemetryConfig,
    "health": HealthConfig,
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


def load(path: str | os.PathLike[str] | None, registry: Registry | None = None) -> Config:
    """Load and validate a config file (or the embedded default when ``path`` is None)."""
    if path is None:
        return loads(DEFAULT_CONFIG, registry, source="<default>")
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
    return loads(text, registry, source=str(p))


def loads(text: str, registry: Registry | None = None, *, source: str = "<string>") -> Config:
    """Parse and validate TOML text. Raises ConfigError with every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    if registry is None:
        from agentd.plugins.registry import default_registry

        # a blocked third-party plugin is not even imported
        section = raw.get("plugins")
        blocked = section.get("blocked") if isinstance(section, dict) else None
        ok = isinstance(blocked, list) and all(isinstance(b, str) for b in blocked)
        registry = default_registry(blocked if ok else ())  # type: ignore[arg-type]
    return from_dict(raw, registry, source=source)


def from_dict(raw: Mapping[str, Any], registry: Registry, *, source: str) -> Config:
    errors: list[str] = []
    sections: dict[str, Any] = {}
    instances: dict[str, dict[str, PluginInstance]] = {k: {} for k in _SECTION_KIND}
    for key, value in raw.items():
        if key in _SECTIONS:
            try:
                sections[key] = msgspec.convert(value, _SECTIONS[key], str_keys=True)
            except msgspec.ValidationError as exc:
                errors.append(format_validation_error(key, exc, value))
        elif key in _SECTION_KIND:
            if not isinstance(value, dict):
                errors.append(f"{key}: expected a table of named {key}, got {_show(value)}")
                continue
            for name, table in value.items():
                inst = _instance(_SECTION_KIND[key], key, name, table, registry, errors)
                if inst is not None:
                    instances[key][name] = inst
        else:
            errors.append(f"{key}: unknown key")
    if not errors:
        _cross_check(instances, sections, registry, errors)
    if errors:
        raise ConfigError(errors)
    return Config(
        **sections,
        sensors=instances["sensors"],  # type: ignore[arg-type]
        policies=instances["policies"],  # type: ignore[arg-type]
        actuators=instances["actuators"],  # type: ignore[arg-type]
        source=source,
    )


_INSTANCE_TYPES: dict[str, type[PluginInstance]] = {
    "sensor": SensorInstance,
    "policy": PolicyInstance,
    "actuator": ActuatorInstance,
}


def _instance(
    kind: str, section: str, name: str, table: Any, registry: Registry, errors: list[str]
) -> PluginInstance | None:
    where = f"{section}.{name}"
    if not isinstance(table, dict):
        errors.append(f"{where}: expected a table, got {_show(table)}")
        return None
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_\-]*", name):
        errors.append(f"{where}: instance names use letters, digits, '_' and '-' only")
        return None
    common_type = _COMMON[kind]
    common_keys = set(common_type.__struct_fields__)
    common_raw = {k: v for k, v in table.items() if k in common_keys}
    own_raw = {k: v for k, v in table.items() if k not in common_keys}
    common: _Common | None = None
    try:
        common = msgspec.convert(common_raw, common_type)
    except msgspec.ValidationError as exc:
        errors.append(format_validation_error(where, exc, common_raw))
    plugin = table.get("plugin")
    plugin_name = plugin if isinstance(plugin, str) else name
    spec = registry.find(plugin_name, kind) or registry.find(plugin_name)  # type: ignore[arg-type]
    if spec is None and registry.is_blocked(plugin_name):
        if table.get("enabled", True) is not False:
            errors.append(f"{where}.plugin: plugin {plugin_name!r} is blocked")
        return None
    if spec is None:
        known = ", ".join(registry.names(kind)) or "none"  # type: ignore[arg-type]
        key = f"{where}.plugin" if isinstance(plugin, str) else where
        failed = registry.failed(plugin_name)
        if failed:  # installed, but it did not load: say why
            errors.append(f"{key}: {failed}")
            return None
        errors.append(f"{key}: unknown {kind} plugin {plugin_name!r} (known: {known})")
        return None
    if spec.kind != kind:
        errors.append(f"{where}.plugin: {plugin_name!r} is a {spec.kind} plugin, not a {kind}")
        return None
    try:
        config = msgspec.convert(own_raw, spec.config_type, str_keys=True)
    except msgspec.ValidationError as exc:
        errors.append(format_validation_error(where, exc, own_raw))
        return None
    if common is None:
        return None
    return _INSTANCE_TYPES[kind](
        name=name, plugin=plugin_name, common=common, config=config, raw=dict(table)
    )


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
    registry: Registry,
    errors: list[str],
) -> None:
    telemetry = sections.get("telemetry")
    if telemetry is not None and telemetry.exporter == "otlp" and not _otlp_installed():
        errors.append(OTLP_MISSING)
    blocked = set(sections.get("plugins", PluginsSection()).blocked)
    for section, by_name in instances.items():
        for name, inst in by_name.items():
            if inst.plugin in blocked and inst.enabled:
                errors.append(f"{section}.{name}.plugin: plugin {inst.plugin!r} is blocked")
    actuators = instances["actuators"]
    for name, inst in instances["policies"].items():
        target = getattr(inst.config, "actuator", None)
        if isinstance(target, str) and target not in actuators:
            known = ", ".join(sorted(actuators)) or "none"
            errors.append(
                f"policies.{name}.actuator: no actuator named {target!r} is configured "
                f"(configured: {known})"
            )
    if not any(i.enabled for i in instances["sensors"].values()):
        errors.append("sensors: at least one enabled sensor must be configured")
    del registry


_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
    "null": "nothing",
}
_MSG = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def format_validation_error(prefix: str, exc: msgspec.ValidationError, raw: Any) -> str:
    """Turn msgspec's message into ``prefix.path: expected ..., got VALUE``."""
    m = _MSG.match(str(exc))
    assert m is not None  # the pattern matches any string
    msg, path = m.group("msg"), m.group("path") or ""
    dotted = prefix + re.sub(r"^\.", ".", path) if path else prefix
    unknown = re.match(r"Object contains unknown field `(.*)`", msg)
    if unknown:
        return f"{dotted}.{unknown.group(1)}: unknown key"
    missing = re.match(r"Object missing required field `(.*)`", msg)
    if missing:
        return f"{dotted}.{missing.group(1)}: required key is missing"
    if not msg.startswith("Expected"):
        return f"{dotted}: {msg}"  # a plugin's own check (__post_init__): already a sentence
    msg = re.sub(r"`([^`]+)`", lambda t: _type_words(t.group(1)), msg, count=1)
    msg = "expected" + re.sub(r", got `[^`]*`$", "", msg[len("Expected") :])
    value = _lookup(raw, path)
    if value is not _NOT_FOUND:
        msg = f"{msg}, got {_show(value)}"
    return f"{dotted}: {msg}"


def _type_words(types: str) -> str:
    words = [_TYPE_WORDS.get(t.strip(), t.strip()) for t in types.split("|")]
    words = [w for w in words if w != "nothing"] or ["nothing"]
    if "a number" in words and "an integer" in words:
        words.remove("an integer")
    return " or ".join(dict.fromkeys(words))


_NOT_FOUND = object()


def _lookup(raw: Any, path: str) -> Any:
    node = raw
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        key, index = part
        try:
            node = node[int(index)] if index else node[key]
        except (KeyError, IndexError, TypeError):
            return _NOT_FOUND
    return node


def _show(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _env_dir(var: str) -> Path | None:
    # systemd may pass several colon-separated directories; the first is ours
    value = os.environ.get(var, "").split(":")[0]
    return Path(value) if value else None


def resolve_state_dir(config: Config, override: str | None = None) -> Path:
    """--state-dir, else config, else $STATE_DIRECTORY, else /var/lib/agentd (root),
    else $XDG_STATE_HOME/agentd (~/.local/state/agentd)."""
    chosen = override or config.paths.state_dir
    if chosen:
        return Path(chosen)
    env = _env_dir("STATE_DIRECTORY")
    if env:
        return env
    if os.geteuid() == 0:
        return Path("/var/lib/agentd")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "agentd"


def resolve_runtime_dir(config: Config, override: str | None = None) -> Path:
    """--runtime-dir, else config, else $RUNTIME_DIRECTORY, else /run/agentd (root),
    else $XDG_RUNTIME_DIR/agentd (or /tmp/agentd-UID without a session)."""
    chosen = override or config.paths.runtime_dir
    if chosen:
        return Path(chosen)
    env = _env_dir("RUNTIME_DIRECTORY")
    if env:
        return env
    if os.geteuid() == 0:
        return Path("/run/agentd")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "agentd" if xdg else Path(f"/tmp/agentd-{os.geteuid()}")
