"""agentd with extra test plugins registered, for subprocess tests that need a slow actuator or
a sensor that hangs on demand: ``python -m tests.testplugins run ...`` is ``agentd run ...`` plus
these built-ins. Behaviour is steered by files, so a test can flip it while the daemon runs."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import msgspec

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec
from agentd.plugins.builtin import BUILTINS


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


TEST_PLUGINS = [
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

BUILTINS.extend(p for p in TEST_PLUGINS if p not in BUILTINS)

if __name__ == "__main__":
    from agentd.cli.main import main

    sys.exit(main())
