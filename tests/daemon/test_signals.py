"""Signals at the daemon level: a second SIGTERM cuts the shutdown stage in progress, and the
signal handlers agentd replaced are put back when it stops."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

from agentd.config import loads
from agentd.daemon import DUPLICATE_SIGNAL_WINDOW, STOP_PLUGINS_TIMEOUT, Daemon, DaemonOptions
from agentd.plugins.registry import default_registry
from tests.utils import AgentProcess

TESTPLUGINS = [sys.executable, "-m", "tests.testplugins"]


def test_a_second_sigterm_cuts_the_stage_in_progress(short_tmp: Path) -> None:
    # an actuator whose stop() takes 4 s holds the stop_plugins stage (5 s budget); the
    # second signal must end that stage at once, not after the plugin or the stage's timeout
    config = """
[agent]
interval = 0.1
[sensors.system]
[actuators.slow]
stop_seconds = 4.0
"""
    with AgentProcess(short_tmp, config, argv=TESTPLUGINS) as agent:
        agent.wait_log(r"tick 2:")
        agent.signal(signal.SIGTERM)
        agent.wait_log(r"slow: stopping")
        time.sleep(DUPLICATE_SIGNAL_WINDOW + 0.1)
        assert agent.proc is not None
        assert agent.proc.poll() is None  # still in stop_plugins
        t0 = time.monotonic()
        agent.signal(signal.SIGTERM)
        code = agent.proc.wait(10)
        elapsed = time.monotonic() - t0
    assert code == 1
    assert elapsed < 2.0, f"{elapsed:.2f}s after the second SIGTERM (stage budget 4 s left)"
    assert STOP_PLUGINS_TIMEOUT > 4.0  # or the test would not tell the two apart
    log = agent.log()
    assert "stop_plugins: cut short by a second signal" in log
    # the stages after the cut still get their (short) turn: the store is flushed, not cut
    assert "flush_store" not in log
    # the plugin still stopping is named
    assert "still stopping after the budget, cancelled: actuator 'slow'" in log
    assert log.rstrip().endswith("agentd: stopped")


async def test_the_previous_signal_handlers_are_restored(short_tmp: Path) -> None:
    def mine(signum: int, frame: FrameType | None) -> None:
        del signum, frame

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    saved = {s: signal.signal(s, mine) for s in signals}
    try:
        config = loads(
            "[sensors.system]\n[store]\nenabled = false\n[control]\nenabled = false\n"
            "[telemetry]\nenabled = false\n",
            default_registry,
        )
        daemon = Daemon(
            config, DaemonOptions(state_dir=str(short_tmp / "s"), runtime_dir=str(short_tmp / "r"))
        )
        await daemon.startup()
        assert all(signal.getsignal(s) is not mine for s in signals)  # agentd's own, running
        await daemon.shutdown()
        assert {s: signal.getsignal(s) for s in signals} == dict.fromkeys(signals, mine)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
