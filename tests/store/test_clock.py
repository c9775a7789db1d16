"""The store's clocks on this machine: the boot id and CLOCK_BOOTTIME are the kernel's, and the
synchronized flag is the kernel's adjtimex state, or timesyncd's flag file where adjtimex is
denied (ProtectClock=yes answers EPERM even to a read; a seccomp filter cannot be installed
here, so that one answer is simulated)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentd.store import clock
from agentd.store.clock import SystemClock, kernel_synced


def test_boot_id_and_boot_time_are_the_kernels() -> None:
    c = SystemClock()
    assert c.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert len(c.boot_id) == 36
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert abs(c.boottime() - uptime) < 5  # /proc/uptime counts suspend too (boot time)
    a = c.boottime()
    time.sleep(0.01)
    assert c.boottime() > a


def test_synced_is_the_kernels_answer() -> None:
    answer = kernel_synced()
    assert answer is not None  # adjtimex(2) read-only needs no privilege here
    assert SystemClock(timesync_flag=Path("/nonexistent")).synced() is answer


def test_denied_adjtimex_falls_back_to_timesyncds_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clock, "kernel_synced", lambda: None)
    flag = tmp_path / "synchronized"
    c = SystemClock(timesync_flag=flag)
    assert c.synced() is False
    flag.touch()
    assert c.synced() is False  # cached for a second: one syscall per second, not per row
    monkeypatch.setattr(clock, "SYNC_CACHE", 0.0)
    assert SystemClock(timesync_flag=flag).synced() is True
