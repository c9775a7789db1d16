"""What the built-in sensors declare they produce (``produces()``, read by check-config and
`agentd test`) is what they really read, on this machine."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from agentd.config_refs import declared_metrics
from agentd.plugins.builtin.command import CommandConfig, CommandSensor
from agentd.plugins.builtin.file_sensor import FileSensor, FileSensorConfig
from agentd.plugins.builtin.net import NetConfig, NetSensor
from agentd.plugins.builtin.process import ProcessConfig, ProcessSensor
from agentd.plugins.builtin.system import SystemConfig, SystemSensor
from agentd.plugins.registry import default_registry


def _covered(metric: str, declared: dict[str, str]) -> bool:
    return metric in declared or any(
        n.endswith(".*") and metric.startswith(n[:-1]) for n in declared
    )


async def _check(sensor: object, config: object, exact: bool = True) -> None:
    declared = declared_metrics(config)
    assert declared is not None
    readings = await sensor.perceive()  # type: ignore[attr-defined]
    assert readings
    missing = [m for m in readings if not _covered(m, dict(declared))]
    assert missing == [], (missing, sorted(declared))
    if exact:  # nothing declared that it does not read (wildcards aside)
        unread = [n for n in declared if not n.endswith(".*") and n not in readings]
        assert unread == [], unread


@pytest.mark.parametrize("cpu", [True, False])
async def test_system(cpu: bool) -> None:
    config = SystemConfig(cpu=cpu, mounts={"root": "/", "tmp": "/tmp"})
    await _check(SystemSensor(config), config)


async def test_file(tmp_path: Path) -> None:
    (tmp_path / "v").write_text("3\n")
    config = FileSensorConfig(path=str(tmp_path / "v"))
    await _check(FileSensor(config), config)
    assert declared_metrics(config) == {"value": ""}
    renamed = FileSensorConfig(path=str(tmp_path / "v"), metric="celsius")
    await _check(FileSensor(renamed), renamed)


async def test_process() -> None:
    me = psutil.Process().name()
    config = ProcessConfig(processes={"me": me, "none": "no-such-process-here"})
    await _check(ProcessSensor(config), config)


async def test_net_with_interfaces_and_without() -> None:
    names = sorted(n for n in psutil.net_io_counters(pernic=True) if n != "lo") or ["lo"]
    config = NetConfig(interfaces=names[:1], rates=False)
    await _check(NetSensor(config), config)
    assert declared_metrics(NetConfig()) is None  # every interface: known only when read


async def test_command(tmp_path: Path) -> None:
    config = CommandConfig(argv=["/bin/echo", "42"], metric="depth")
    await _check(CommandSensor(config), config)
    assert declared_metrics(CommandConfig(argv=["/bin/true"], parse="json")) is None


def test_the_spec_hands_out_the_declaration(tmp_path: Path) -> None:
    spec = default_registry().get("file", "sensor")
    assert spec.metrics(FileSensorConfig(path=os.devnull, metric="m")) == {"m": ""}
    assert default_registry().get("log", "actuator").metrics(FileSensorConfig(path="/x")) is None
