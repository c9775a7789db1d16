"""The built-in plugins, registered in code so a frozen binary has them."""

from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin import log_actuator, system, threshold

__all__ = ["BUILTINS"]

BUILTINS: list[PluginSpec] = [system.SPEC, threshold.SPEC, log_actuator.SPEC]
