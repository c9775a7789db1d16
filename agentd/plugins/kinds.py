"""The one table of plugin kinds: for each, its config section, its common and instance config
Structs, the method the loop calls and the runner type that wraps it.

Adding a kind is one row here (plus its name in `PluginKind`): the config loader, the
registry's checks, the supervisor and the schema all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentd.config import (
    ActuatorCommon,
    ActuatorInstance,
    PluginCommon,
    PluginInstance,
    PolicyCommon,
    PolicyInstance,
    SensorCommon,
    SensorInstance,
    UplinkCommon,
    UplinkInstance,
)
from agentd.plugins.base import PluginKind
from agentd.plugins.handle import ActuatorRunner, PluginHandle, PolicyRunner, SensorRunner
from agentd.plugins.transport import UplinkRunner

__all__ = ["BY_KIND", "BY_SECTION", "KINDS", "Kind", "kind_of"]


@dataclass(frozen=True, slots=True)
class Kind:
    """One plugin kind."""

    name: PluginKind
    #: the config table its instances live under (``[sensors.NAME]``)
    section: str
    common: type[PluginCommon]
    instance: type[PluginInstance]
    #: the method the loop (or the action path, or the uplink engine) calls on the plugin
    method: str
    runner: type[PluginHandle]
    #: whether ``method`` must be ``async def`` (a policy may answer synchronously)
    coroutine: bool = True
    #: whether a plugin of this kind must declare at least one action
    needs_actions: bool = False


KINDS: tuple[Kind, ...] = (
    Kind("sensor", "sensors", SensorCommon, SensorInstance, "perceive", SensorRunner),
    Kind("policy", "policies", PolicyCommon, PolicyInstance, "decide", PolicyRunner, False),
    Kind(
        "actuator", "actuators", ActuatorCommon, ActuatorInstance, "act", ActuatorRunner, True, True
    ),
    # a transport: the uplink engine (not the loop) drives it; `send` returns an awaitable
    Kind("uplink", "uplinks", UplinkCommon, UplinkInstance, "send", UplinkRunner, False),
)
BY_KIND: Mapping[str, Kind] = {k.name: k for k in KINDS}
BY_SECTION: Mapping[str, Kind] = {k.section: k for k in KINDS}
_BY_INSTANCE: Mapping[type[PluginInstance], Kind] = {k.instance: k for k in KINDS}


def kind_of(instance: PluginInstance) -> Kind:
    """The kind of a configured instance (by its instance Struct)."""
    return _BY_INSTANCE[type(instance)]
