"""`file` sensor: read a number or a line from any path — a sysfs attribute
(``/sys/class/thermal/thermal_zone0/temp``, scale 0.001), a 1-wire ``w1_slave`` (regex
``t=(-?\\d+)``), a status file. Reads run in a worker thread (sysfs reads can block) and are
bounded in size. ``start()`` checks the file is readable, so ``startup_error`` applies to a
missing device. The path must be a regular file (sysfs attributes are): it is opened with
``O_NONBLOCK`` and a FIFO, socket or device in its place is refused, never waited on. Symlinks
are followed (sysfs is made of them)."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from agentd.model import Value
from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin._files import open_regular

__all__ = ["SPEC", "FileSensor", "FileSensorConfig"]

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class FileSensorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str
    #: ``number``: a float (scaled); ``line``: the text (stripped); ``bool``: non-zero / "on"
    parse: Literal["number", "line", "bool"] = "number"
    metric: str = "value"
    #: applied to a number: ``value * scale + add`` (millidegrees to degrees: 0.001)
    scale: float = 1.0
    add: float = 0.0
    #: search the contents; group ``value`` or group 1 (else the whole match) is the value
    regex: str | None = None
    #: only this line of the file (0-based; -1: the last), before the regex
    line: int | None = None
    max_bytes: Annotated[int, Meta(ge=1, le=1024 * 1024)] = 4096

    def __post_init__(self) -> None:
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"`regex` is not a valid regular expression: {exc}") from None


class FileSensor:
    def __init__(self, config: FileSensorConfig) -> None:
        self.config = config
        self.regex = re.compile(config.regex) if config.regex else None

    async def start(self) -> None:
        await asyncio.to_thread(self._read_text)

    async def perceive(self) -> dict[str, Value]:
        text = await asyncio.to_thread(self._read_text)
        return {self.config.metric: self.parse(text)}

    def _read_text(self) -> str:
        fd = open_regular(self.config.path, os.O_RDONLY)
        try:
            data = bytearray()
            while len(data) < self.config.max_bytes:
                chunk = os.read(fd, self.config.max_bytes - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        return data.decode("utf-8", "replace")

    def parse(self, text: str) -> Value:
        c = self.config
        if c.line is not None:
            lines = text.splitlines()
            try:
                text = lines[c.line]
            except IndexError:
                raise ValueError(f"{c.path} has no line {c.line} ({len(lines)} lines)") from None
        if self.regex is not None:
            m = self.regex.search(text)
            if m is None:
                raise ValueError(f"{c.path}: regex {c.regex!r} does not match {text[:60]!r}")
            if "value" in self.regex.groupindex:
                text = m.group("value")
            else:
                text = m.group(1) if self.regex.groups else m.group(0)
        text = text.strip()
        if c.parse == "line":
            return text
        if c.parse == "bool":
            return text.lower() not in ("", "0", "off", "false", "no", "disabled")
        m = _NUMBER.search(text)
        if m is None:
            raise ValueError(f"{c.path}: no number in {text[:60]!r}")
        return float(m.group()) * c.scale + c.add


SPEC = PluginSpec(
    name="file",
    kind="sensor",
    factory=FileSensor,
    config_type=FileSensorConfig,
    description="read a number or a line from a file (sysfs, 1-wire w1_slave, ...)",
)
