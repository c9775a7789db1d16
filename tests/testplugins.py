"""agentd with extra test plugins registered, for subprocess tests that need a slow actuator or
a sensor that hangs on demand: ``python -m tests.testplugins run ...`` is ``agentd run ...`` plus
these built-ins. Behaviour is steered by files, so a test can flip it while the daemon runs."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import msgspec

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec
from agentd.plugins.builtin import EXTRA


class SlowConfig(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float = 3600.0
    #: how long stop() takes (it logs "slow: stopping" first)
    stop_seconds: float = 0.0


class SlowActuator:
    def __init__(self, config: SlowConfig) -> None:
        self.seconds = config.seconds
        self.stop_seconds = config.stop_seconds

    async def act(self, action: Action) -> ActuatorReply:
        await asyncio.sleep(self.seconds)
        return ActuatorReply(output="slept")

    async def stop(self) -> None:
        if self.stop_seconds:
            logging.getLogger("agentd.test").warning("slow: stopping")
            await asyncio.sleep(self.stop_seconds)


class SwitchConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: while this file exists the sensor raises; while ``hang_file`` exists it hangs
    fail_file: str = ""
    hang_file: str = ""
    #: while this file exists a read blocks in a worker thread (a hung sysfs read)
    block_file: str = ""


def _block_while(path: Path) -> None:
    while path.exists():
        time.sleep(0.01)


class SwitchSensor:
    def __init__(self, config: SwitchConfig) -> None:
        self.config = config
        self.n = 0

    async def perceive(self) -> dict[str, float]:
        c = self.config
        if c.fail_file and Path(c.fail_file).exists():
            raise OSError(f"switched off by {c.fail_file}")
        while c.hang_file and Path(c.hang_file).exists():
            await asyncio.sleep(0.01)
        if c.block_file:
            await asyncio.to_thread(_block_while, Path(c.block_file))
        self.n += 1
        return {"n": float(self.n)}


class StallConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: while this file exists decide() does not return, and ignores its timeout: the loop hangs
    #: while the process, its event loop and the control plane stay alive
    hang_file: str = ""


class StallPolicy:
    def __init__(self, config: StallConfig) -> None:
        self.config = config

    async def decide(self, observation: object, state: object) -> list[Action]:
        while self.config.hang_file and Path(self.config.hang_file).exists():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # a hung call that swallows its cancellation
        return []


class BlockConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: a FIFO: each call opens it for reading in a thread, which blocks in the kernel until
    #: a writer comes (a hung 1-wire bus or serial device); unset: the call answers at once
    fifo: str = ""
    #: the actuator appends one line per action here once its FIFO read returned: the
    #: action was performed
    out: str = ""
    #: thread calls of the sensor are counted (one line each) here as they start
    starts: str = ""


def _append(path: str, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class BlockSensor:
    def __init__(self, config: BlockConfig) -> None:
        self.config = config

    def _read(self) -> float:
        _append(self.config.starts, "start")
        if self.config.fifo:
            with open(self.config.fifo, "rb") as f:  # blocks until a writer opens it
                f.read(1)
        return 1.0

    async def perceive(self) -> dict[str, float]:
        return {"v": await asyncio.to_thread(self._read)}


class BlockActuator:
    def __init__(self, config: BlockConfig) -> None:
        self.config = config

    def _write(self, name: str) -> None:
        _append(self.config.starts, name)
        if self.config.fifo:
            with open(self.config.fifo, "rb") as f:
                f.read(1)
        _append(self.config.out, name)

    async def act(self, action: Action) -> ActuatorReply:
        await asyncio.to_thread(self._write, action.name)
        return ActuatorReply(output="written")


TEST_PLUGINS = [
    PluginSpec(
        name="block",
        kind="sensor",
        factory=BlockSensor,
        config_type=BlockConfig,
        description="test: blocks in a thread on a FIFO",
    ),
    PluginSpec(
        name="blockwrite",
        kind="actuator",
        factory=BlockActuator,
        config_type=BlockConfig,
        actions={"*": msgspec.Struct},
        description="test: blocks in a thread on a FIFO, then writes",
    ),
    PluginSpec(
        name="slow",
        kind="actuator",
        factory=SlowActuator,
        config_type=SlowConfig,
        actions={"*": msgspec.Struct},
        description="test: sleeps",
    ),
    PluginSpec(
        name="switch",
        kind="sensor",
        factory=SwitchSensor,
        config_type=SwitchConfig,
        description="test: fails or hangs while a file exists",
    ),
    PluginSpec(
        name="stall",
        kind="policy",
        factory=StallPolicy,
        config_type=StallConfig,
        description="test: hangs the perception loop while a file exists",
    ),
]

EXTRA.extend(p for p in TEST_PLUGINS if p not in EXTRA)

if __name__ == "__main__":
    from agentd.cli.main import main

    sys.exit(main())
