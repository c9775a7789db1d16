"""The `system` sensor reads on the event loop when nothing it reads can wait on a device or a
server (issue #18: a thread hop is three wake-ups a tick), and in a worker thread otherwise;
the `net` sensor always reads on the loop, with the same link state psutil reports."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from agentd.plugins.builtin.net import KeptFile, NetConfig, NetSensor, link_up, parse_net_dev
from agentd.plugins.builtin.system import (
    CpuBusy,
    SystemConfig,
    SystemSensor,
    memory_available,
    on_local_filesystem,
)


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


def test_the_kept_proc_net_dev_reads_what_psutil_reads() -> None:
    dev = KeptFile("/proc/net/dev")
    try:
        for _ in range(2):  # the second read is from the kept descriptor, at offset 0
            before = psutil.net_io_counters(pernic=True)
            ours = parse_net_dev(dev.read())
            after = psutil.net_io_counters(pernic=True)
            assert sorted(ours) == sorted(before)
            for name, counters in ours.items():
                for field in counters._fields:
                    assert (
                        getattr(before[name], field)
                        <= getattr(counters, field)
                        <= getattr(after[name], field)
                    ), (name, field)
    finally:
        dev.close()


def test_kept_files_are_reread_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("down\n")
    f = KeptFile(str(path))
    fds = len(os.listdir("/proc/self/fd"))
    assert f.read() == b"down\n"
    assert len(os.listdir("/proc/self/fd")) == fds + 1
    path.write_text("up\n")  # same file, new content: read again from offset 0
    assert f.read() == b"up\n"
    f.close()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_the_net_sensor_closes_its_files_when_stopped() -> None:
    fds = len(os.listdir("/proc/self/fd"))
    sensor = NetSensor(NetConfig())
    _perceive(sensor)
    assert len(os.listdir("/proc/self/fd")) > fds
    sensor.stop()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_cpu_and_memory_read_as_psutil_reads_them() -> None:
    busy = CpuBusy()
    psutil.cpu_percent(interval=None)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # some CPU time to measure
        sum(range(10_000))
    ours, theirs = busy.percent(), psutil.cpu_percent(interval=None)
    busy.close()
    assert 0.0 < ours <= 100.0
    assert abs(ours - theirs) <= 5.0, (ours, theirs)

    vm = psutil.virtual_memory()
    mem = memory_available(Path("/proc/meminfo").read_bytes())
    assert mem is not None
    total, avail = mem
    assert total == vm.total
    assert abs(avail - vm.available) < 64 * 2**20
    readings = SystemSensor(SystemConfig(temperatures=False)).read()
    assert abs(readings["memory.percent"] - vm.percent) <= 1.0
    assert memory_available(b"MemTotal: 1000 kB\nMemFree: 10 kB\n") is None


def test_the_system_sensor_closes_its_files_when_stopped() -> None:
    fds = len(os.listdir("/proc/self/fd"))
    sensor = SystemSensor(SystemConfig(temperatures=False))
    sensor.read()
    assert len(os.listdir("/proc/self/fd")) == fds + 2  # /proc/stat, /proc/meminfo
    sensor.stop()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_the_net_sensor_reads_the_link_state_of_the_interfaces_it_reports_only() -> None:
    sensor = NetSensor(NetConfig())
    try:
        first, _ = _perceive(sensor)
        second, _ = _perceive(sensor)
        kept = set(sensor._operstate)  # loopback's is never opened: it is not reported
    finally:
        sensor.stop()
    names = sorted(n for n in psutil.net_io_counters(pernic=True) if n != "lo")
    assert not any(k.startswith("lo.") for k in first)
    for name in names:
        assert f"{name}.up" in first
        assert f"{name}.bytes_recv" in first
        assert f"{name}.bytes_recv_per_s" in second  # a rate from the second reading on
        assert f"{name}.bytes_recv_per_s" not in first
    assert set(first) < set(second)
    assert kept == set(names)


def test_meminfo_fields_are_found_by_whole_name_anywhere_in_the_file() -> None:
    assert memory_available(b"MemTotal: 100 kB\nMemAvailable: 50 kB") == (102400, 51200)
    assert memory_available(b"MemAvailable: 3 kB\nMemTotal: 9 kB\n") == (9216, 3072)
    # a longer name that ends with ours is not ours
    assert memory_available(b"XMemTotal: 5 kB\nMemTotal: 7 kB\nMemAvailable:  3 kB\n") == (
        7168,
        3072,
    )
    assert memory_available(b"") is None
    assert memory_available(b"MemTotal: many kB\nMemAvailable: 3 kB\n") is None
