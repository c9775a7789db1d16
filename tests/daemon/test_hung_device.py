"""A device that blocks a worker thread in the kernel (issue 13), as a real FIFO with no writer
under a real daemon: the call is known to be running and never started twice, the plugin is
degraded, the other thread-based plugins go on, an action reported `timeout` says it may still
happen (and a later one is not performed), and SIGTERM ends the process within its budget."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.control.helpers import TESTPLUGINS, Agent
from tests.utils import wait_for

CONFIG = """
[agent]
interval = 0.1
[log]
heartbeat = 0
[store]
enabled = false
[sensors.system]
[sensors.stuck]
plugin = "block"
fifo = "{base}/sensor.fifo"
starts = "{base}/sensor.starts"
timeout = 0.2
[actuators.dev]
plugin = "blockwrite"
fifo = "{base}/dev.fifo"
out = "{base}/dev.out"
starts = "{base}/dev.starts"
timeout = 0.3
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _unblock(fifo: Path) -> None:
    """Be the writer the blocked reader waits for."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def test_a_sensor_stuck_in_a_thread_is_called_once_and_does_not_hang_shutdown(
    short_tmp: Path,
) -> None:
    fifo = short_tmp / "sensor.fifo"
    os.mkfifo(fifo)
    os.mkfifo(short_tmp / "dev.fifo")
    with Agent(short_tmp, CONFIG.format(base=short_tmp), argv=TESTPLUGINS) as agent:
        agent.ready()
        start = agent.call("status")["loop"]["ticks"]
        time.sleep(4.0)
        status = agent.call("status")
        ticks = status["loop"]["ticks"] - start
        plugins = {p["name"]: p for p in status["plugins"]}
        # one thread call, ever: the stuck one is never started a second time
        assert _lines(short_tmp / "sensor.starts") == ["start"]
        assert plugins["stuck"]["state"] == "degraded"
        # the other thread-based sensor keeps its pace (>= 90% of the ~40 ticks' calls)
        assert plugins["system"]["state"] == "ok", plugins["system"]
        assert ticks >= 36, ticks
        assert plugins["system"]["errors"] == 0
        t0 = time.monotonic()
        assert agent.stop(timeout=15) == 0
        took = time.monotonic() - t0
    log = agent.log()
    assert took < 8.0, took
    assert "stuck in a thread past its timeout" in log
    assert "abandoning 1 plugin calls stuck in threads: sensor:stuck" in log
    assert "Traceback" not in log


def test_an_action_reported_timeout_says_it_may_still_happen_and_the_next_is_not_run(
    short_tmp: Path,
) -> None:
    fifo = short_tmp / "dev.fifo"
    os.mkfifo(fifo)
    os.mkfifo(short_tmp / "sensor.fifo")
    out = short_tmp / "dev.out"
    text = CONFIG.format(base=short_tmp).replace(f'fifo = "{short_tmp}/sensor.fifo"\n', "")
    with Agent(short_tmp, text, argv=TESTPLUGINS) as agent:
        agent.ready()
        first = agent.call("act", {"actuator": "dev", "action": "first"})
        assert first["status"] == "timeout"
        assert "may still take effect" in first["error"]
        second = agent.call("act", {"actuator": "dev", "action": "second"})
        assert second["status"] == "skipped", second
        assert "still running in a thread" in second["error"]
        # the device comes back: the call that was running completes (as its result said
        # it might); the one reported skipped never runs
        _unblock(fifo)
        wait_for(lambda: _lines(out) == ["first"], what="the first write")
        time.sleep(1.0)
        assert _lines(out) == ["first"]
        assert _lines(short_tmp / "dev.starts") == ["first"]
        third = agent.call("act", {"actuator": "dev", "action": "third"})
        assert third["status"] == "timeout"  # the FIFO blocks again: a fresh call ran
        assert agent.stop(timeout=15) == 0
