"""The built-in plugins, registered in code so a frozen binary has them.

`TABLE` names each built-in (name, kind, and the module that defines its `PluginSpec`); the
registry imports a module only when a config uses the plugin, or when everything is listed
(``agentd plugins``, ``agentd schema``): a daemon on the default config never imports the
modbus, mqtt, openapi, exec or webhook modules, nor what they import (issue #18). `BUILTINS`
(read on first use) is every built-in's spec; `EXTRA` holds specs registered beside the
table as they are (the test suites' plugins).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentd.plugins.base import PluginKind, PluginSpec

__all__ = ["BUILTINS", "EXTRA", "TABLE", "Builtin", "load_all"]


@dataclass(frozen=True, slots=True)
class Builtin:
    """One built-in: ``agentd.plugins.builtin.<module>.<attr>`` is its spec."""

    name: str
    kind: PluginKind
    module: str
    attr: str = "SPEC"

    def load(self) -> PluginSpec:
        spec: PluginSpec = getattr(importlib.import_module(f"{__name__}.{self.module}"), self.attr)
        return spec


TABLE: tuple[Builtin, ...] = (
    # sensors
    Builtin("system", "sensor", "system"),
    Builtin("file", "sensor", "file_sensor"),
    Builtin("command", "sensor", "command"),
    Builtin("net", "sensor", "net"),
    Builtin("process", "sensor", "process"),
    Builtin("modbus", "sensor", "modbus", "SENSOR_SPEC"),
    Builtin("mqtt", "sensor", "mqtt_device", "SENSOR_SPEC"),
    # policies
    Builtin("threshold", "policy", "threshold"),
    Builtin("rules", "policy", "rules"),
    Builtin("rate", "policy", "rate"),
    # actuators
    Builtin("log", "actuator", "log_actuator"),
    Builtin("exec", "actuator", "exec_actuator"),
    Builtin("file", "actuator", "file_actuator"),
    Builtin("webhook", "actuator", "webhook"),
    Builtin("openapi", "actuator", "openapi"),
    Builtin("session", "actuator", "session"),
    Builtin("modbus", "actuator", "modbus", "ACTUATOR_SPEC"),
    Builtin("mqtt", "actuator", "mqtt_device", "ACTUATOR_SPEC"),
    # uplinks (transports)
    Builtin("mqtt", "uplink", "mqtt"),
)

#: specs registered as they are, beside `TABLE` (tests/testplugins.py adds its plugins here)
EXTRA: list[PluginSpec] = []


def load_all() -> list[PluginSpec]:
    """Every built-in's spec (imports every built-in module)."""
    return [b.load() for b in TABLE]


def __getattr__(name: str) -> object:
    if name == "BUILTINS":
        value = load_all()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
