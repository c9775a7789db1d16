"""The ticks kept for the health check's lateness p99 (`RecentTicks`): the last ``size``
(start, lateness) pairs, oldest overwritten first, in a few bytes each (issue #18)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agentd.config import TelemetryConfig
from agentd.telemetry import Telemetry
from agentd.telemetry.produced import RecentTicks


def test_keeps_the_last_size_ticks() -> None:
    r = RecentTicks(4)
    assert r.lateness_since(0.0) == []
    for i in range(1, 4):
        r.append(float(i), i / 10)
    assert len(r) == 3
    assert sorted(r.lateness_since(2.0)) == [0.2, 0.3]
    for i in range(4, 11):  # wraps around twice and a bit
        r.append(float(i), i / 10)
    assert len(r) == 4
    assert sorted(r.lateness_since(0.0)) == [0.7, 0.8, 0.9, 1.0]
    assert sorted(r.lateness_since(9.0)) == [0.9, 1.0]
    assert r.lateness_since(11.0) == []


def test_ten_thousand_ticks_take_well_under_a_mebibyte() -> None:
    r = RecentTicks(10_000)
    for i in range(20_000):
        r.append(time.monotonic(), i / 1e6)
    size = sum(sys.getsizeof(a) for a in (r._started, r._lateness))
    assert size < 200_000  # 16 bytes a tick (a deque of tuples: about 1.1 MB)


def test_p99_over_the_window(tmp_path: Path) -> None:
    tel = Telemetry(TelemetryConfig(), tmp_path)
    now = time.monotonic()
    assert tel.recent_lateness_p99(60.0) is None
    tel.recent.append(now - 120.0, 5.0)  # outside the window
    for i in range(100):
        tel.recent.append(now - 1.0, i / 1000)
    assert tel.recent_lateness_p99(60.0) == 0.098
    assert tel.shutdown(5.0)
