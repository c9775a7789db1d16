"""`file` actuator: write a value to an allowlisted path — sysfs GPIO/LED/PWM style
(``/sys/class/leds/led0/brightness``, ``/sys/class/gpio/gpio17/value``). The action names a
target from the config, never a path. Writes run in a worker thread; the file is not created
unless ``create`` is set (a missing sysfs node is an error, not a new regular file)."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import msgspec
from msgspec import Meta

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec

__all__ = ["SPEC", "FileActuator", "FileActuatorConfig", "WriteParams"]


class Target(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    path: str
    #: if set, only these values may be written
    values: list[str] | None = None


class FileActuatorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: target name -> path (or a table with ``path`` and allowed ``values``)
    targets: Annotated[dict[str, str | Target], Meta(min_length=1)]
    #: appended to each value (sysfs accepts both; some drivers want the newline)
    newline: bool = True
    create: bool = False
    #: with create: the new file's mode
    mode: Annotated[int, Meta(ge=0, le=0o777)] = 0o644

    def __post_init__(self) -> None:
        for name, t in self.targets.items():
            path = t.path if isinstance(t, Target) else t
            if not os.path.isabs(path):
                raise ValueError(f"`targets.{name}`: {path!r} is not an absolute path")


class WriteParams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    target: str
    value: str | int | float | bool


class FileActuator:
    def __init__(self, config: FileActuatorConfig) -> None:
        self.config = config
        self.targets = {
            n: t if isinstance(t, Target) else Target(path=t) for n, t in config.targets.items()
        }

    @staticmethod
    def _text(value: object) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def validate(self, action: Action) -> str | None:
        name = action.params.get("target")
        target = self.targets.get(name) if isinstance(name, str) else None
        if target is None:
            offered = ", ".join(sorted(self.targets))
            return f"write.params.target: {name!r} is not an allowed target (allowed: {offered})"
        text = self._text(action.params.get("value"))
        if target.values is not None and text not in target.values:
            return f"write.params.value: {text!r} is not allowed for {name!r} ({target.values})"
        return None

    async def act(self, action: Action) -> ActuatorReply:
        problem = self.validate(action)
        if problem:
            raise ValueError(problem)
        target = self.targets[action.params["target"]]
        text = self._text(action.params["value"])
        await asyncio.to_thread(self._write, target.path, text)
        return ActuatorReply(output={"path": target.path, "value": text})

    def _write(self, path: str, text: str) -> None:
        flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        if self.config.create:
            flags |= os.O_CREAT
        fd = os.open(path, flags, self.config.mode)
        try:
            data = (text + ("\n" if self.config.newline else "")).encode()
            os.write(fd, data)
        finally:
            os.close(fd)


SPEC = PluginSpec(
    name="file",
    kind="actuator",
    factory=FileActuator,
    config_type=FileActuatorConfig,
    description="write a value to an allowlisted file (sysfs GPIO, LED, PWM)",
    actions={"write": WriteParams},
)
