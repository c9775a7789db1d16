"""Plugins: the Sensor, Policy and Actuator protocols, the registry and the built-ins."""

from agentd.plugins.base import (
    Actuator,
    ActuatorReply,
    PluginKind,
    PluginSpec,
    Policy,
    PolicyState,
    Sensor,
)
from agentd.plugins.registry import Registry, default_registry

__all__ = [
    "Actuator",
    "ActuatorReply",
    "PluginKind",
    "PluginSpec",
    "Policy",
    "PolicyState",
    "Registry",
    "Sensor",
    "default_registry",
]
