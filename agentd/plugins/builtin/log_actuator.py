"""`log` actuator: writes each action to agentd's log. Accepts any action name."""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec

__all__ = ["SPEC", "LogActuator", "LogConfig", "LogParams"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "warning"
    logger: str = "agentd.actions"


class LogParams(msgspec.Struct, kw_only=True):
    """Any params are accepted and logged; ``message`` is shown first."""

    message: str = ""


class LogActuator:
    def __init__(self, config: LogConfig) -> None:
        self.level = _LEVELS[config.level]
        self.logger = logging.getLogger(config.logger)

    async def act(self, action: Action) -> ActuatorReply:
        params = {k: v for k, v in action.params.items() if k != "message"}
        message = str(action.params.get("message", ""))
        extra = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
        line = f"action {action.name}" + (f": {message}" if message else "")
        line += f" [{extra}]" if extra else ""
        if action.source:
            line += f" (from {action.source})"
        self.logger.log(self.level, "%s", line)
        return ActuatorReply(output=line)


SPEC = PluginSpec(
    name="log",
    kind="actuator",
    factory=LogActuator,
    config_type=LogConfig,
    description="write each action to agentd's log",
    actions={"*": LogParams},
)
