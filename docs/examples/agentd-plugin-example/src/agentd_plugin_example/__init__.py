"""An example third-party agentd plugin package: one sensor, one actuator.

agentd imports this module through the entry point in pyproject.toml and calls ``plugins()``;
each `PluginSpec` is validated when registered (kind, config Struct, the protocol method, the
actions' params Structs). A plugin never sees the daemon: it gets its typed config and, for an
actuator, the Action; it returns data.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated

import msgspec
from msgspec import Meta

from agentd.model import Action
from agentd.plugins import ActuatorReply, PluginSpec

__all__ = ["plugins"]


class CounterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: added to the counter every reading
    step: Annotated[float, Meta(gt=0)] = 1.0


class CounterSensor:
    """Counts up by ``step`` each time it is read: ``{"value": n}``."""

    def __init__(self, config: CounterConfig) -> None:
        self.step = config.step
        self.value = 0.0

    async def perceive(self) -> dict[str, float]:
        self.value += self.step
        return {"value": self.value}


class AppendConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: a JSON-lines file each action is appended to
    path: str


class NoteParams(msgspec.Struct, kw_only=True):
    """``note`` takes a ``text``; other params are kept too."""

    text: str


class AppendActuator:
    def __init__(self, config: AppendConfig) -> None:
        self.path = config.path

    async def act(self, action: Action) -> ActuatorReply:
        line = json.dumps({"action": action.name, "params": action.params, "source": action.source})
        # file I/O goes to a thread: the loop never blocks
        await asyncio.to_thread(self._append, line)
        return ActuatorReply(output={"path": self.path})

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def plugins() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="example_counter",
            kind="sensor",
            factory=CounterSensor,
            config_type=CounterConfig,
            description="example: counts up by `step` every reading",
        ),
        PluginSpec(
            name="example_append",
            kind="actuator",
            factory=AppendActuator,
            config_type=AppendConfig,
            description="example: appends each action to a JSON-lines file",
            actions={"note": NoteParams},
        ),
    ]
