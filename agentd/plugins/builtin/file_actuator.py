"""`file` actuator: write a value to an allowlisted path — sysfs GPIO/LED/PWM style
(``/sys/class/leds/led0/brightness``, ``/sys/class/gpio/gpio17/value``). The action names a
target from the config, never a path. Writes run in a worker thread; the file is not created
unless ``create`` is set (a missing sysfs node is an error, not a new regular file).

Each target's path is resolved once (symlinks and all, as sysfs needs) when the actuator starts,
or at its first write if it did not exist yet; every write then opens the resolved path one
directory at a time with ``O_NOFOLLOW``, so a directory swapped for a symlink afterwards is
refused, not followed. The target must be a regular file (sysfs attributes are): it is opened
with ``O_NONBLOCK`` and a FIFO, socket or device in its place is refused, never waited on."""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Annotated

import msgspec
from msgspec import Meta

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec
from agentd.plugins.builtin._files import NotRegularFile, file_kind, open_nofollow

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
        #: target name -> its path with every symlink resolved, fixed once it exists
        self.resolved: dict[str, str] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self._resolve_all)

    def _resolve_all(self) -> None:
        for name in self.targets:
            self._resolve(name)

    def _resolve(self, name: str) -> str:
        """The resolved path of target ``name``; refuses one that is not a regular file."""
        fixed = self.resolved.get(name)
        if fixed is not None:
            return fixed
        path = os.path.realpath(self.targets[name].path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            # not there yet (a GPIO not exported): resolve again at the next write; with
            # create, fix the resolved directory now so the new file lands where it was meant
            if self.config.create and os.path.isdir(os.path.dirname(path)):
                self.resolved[name] = path
            return path
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is {file_kind(st.st_mode)}, not a regular file")
        self.resolved[name] = path
        return path

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
        name = action.params["target"]
        text = self._text(action.params["value"])
        await asyncio.to_thread(self._write, name, text)
        return ActuatorReply(output={"path": self.targets[name].path, "value": text})

    def _write(self, name: str, text: str) -> None:
        path = self._resolve(name)
        flags = os.O_WRONLY | os.O_TRUNC
        if self.config.create:
            flags |= os.O_CREAT
        fd = open_nofollow(path, flags, self.config.mode)
        try:
            data = (text + ("\n" if self.config.newline else "")).encode()
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"{path}: wrote {written} of {len(data)} bytes")


SPEC = PluginSpec(
    name="file",
    kind="actuator",
    factory=FileActuator,
    config_type=FileActuatorConfig,
    description="write a value to an allowlisted file (sysfs GPIO, LED, PWM)",
    actions={"write": WriteParams},
)
