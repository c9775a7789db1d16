"""The `system` sensor reads on the event loop when nothing it reads can wait on a device or a
server (issue #18: a thread hop is three wake-ups a tick), and in a worker thread otherwise;
the `net` sensor always reads on the loop, with the same link state psutil reports."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from agentd.plugins.builtin.net import NetConfig, NetSensor, link_up
from agentd.plugins.builtin.system import SystemConfig, SystemSensor, on_local_filesystem


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def _perceive(sensor: SystemSensor | NetSensor) -> tuple[dict[str, Any], int]:
    executor = CountingExecutor()

    async def main() -> dict[str, Any]:
        asyncio.get_running_loop().set_default_executor(executor)
        return await sensor.perceive()

    try:
        return asyncio.run(main()), executor.submitted
    finally:
        executor.shutdown()


def _fstype(path: str) -> str:
    best = max(
        (p for p in psutil.disk_partitions(all=True) if path.startswith(p.mountpoint)),
        key=lambda p: len(p.mountpoint),
    )
    return best.fstype


def test_local_file_systems_are_told_from_the_others() -> None:
    assert on_local_filesystem("/proc") is False  # proc: not in the list
    assert on_local_filesystem("/proc/self") is False
    assert on_local_filesystem("/") is (_fstype("/") in {"ext4", "xfs", "btrfs", "overlay"})
    assert on_local_filesystem("/dev/shm") is True  # tmpfs


def test_procfs_and_local_disks_are_read_on_the_loop() -> None:
    sensor = SystemSensor(SystemConfig(temperatures=False, mounts={"shm": "/dev/shm"}))
    assert sensor.inline
    readings, hops = _perceive(sensor)
    assert hops == 0
    assert {"cpu.percent", "load.1m", "memory.available", "disk.shm.free"} <= set(readings)


def test_temperatures_or_another_file_system_go_to_a_thread() -> None:
    for config in (
        SystemConfig(temperatures=True, mounts={"shm": "/dev/shm"}),
        SystemConfig(temperatures=False, mounts={"proc": "/proc"}),
    ):
        sensor = SystemSensor(config)
        assert not sensor.inline
        readings, hops = _perceive(sensor)
        assert hops == 1
        assert "cpu.percent" in readings


def test_net_link_state_is_psutils_without_asking_the_driver() -> None:
    stats = psutil.net_if_stats()
    assert link_up(stats) == {name: s.isup for name, s in stats.items()}
    assert link_up(["nosuch0"]) == {}


def test_the_net_sensor_reads_on_the_loop() -> None:
    readings, hops = _perceive(NetSensor(NetConfig(interfaces=["lo"])))
    assert hops == 0
    assert readings["lo.up"] is True
    assert isinstance(readings["lo.bytes_recv"], int)
