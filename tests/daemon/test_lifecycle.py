"""agentd as a real subprocess: start on the default config, tick, reload on SIGHUP, stop on
SIGTERM, refuse a second instance."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.utils import AgentProcess

TESTPLUGINS = [sys.executable, "-m", "tests.testplugins"]

FAST = """
[agent]
interval = {interval}
[log]
heartbeat = 0.5
[sensors.system]
[policies.cpu]
plugin = "threshold"
metric = "system.cpu.percent"
above = -1.0          # always true: fires on tick 2, then cools down
for_ticks = 2
cooldown = 3600
params = {{ message = "cpu is warm" }}
[actuators.log]
"""


def tick_times(log: str) -> list[float]:
    """Wall times (from the log timestamps) of the debug tick lines."""
    out = []
    for m in re.finditer(
        r"^\S+ (\d\d):(\d\d):(\d\d),(\d{3}) DEBUG +agentd\.loop: tick \d+", log, re.M
    ):
        h, mi, s, ms = map(int, m.groups())
        out.append(h * 3600 + mi * 60 + s + ms / 1000)
    return out


def test_default_config_ticks_and_stops_cleanly(short_tmp: Path) -> None:
    with AgentProcess(short_tmp) as agent:  # no --config: the embedded default
        agent.wait_log(
            r"agentd 0\.1\.0 started \(pid \d+\): 1 sensors, 1 policies, 1 actuators, "
            r"interval 1s, config <default>"
        )
        agent.wait_log(r"tick 2: \d+ readings, 0 errors", timeout=10)
        t0 = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - t0 < 5.0
        log = agent.log()
    assert re.search(r"tick 1: \d+ readings, 0 errors, 0 actions", log)
    assert "received SIGTERM: stopping gracefully" in log
    assert log.rstrip().endswith("agentd: stopped")
    assert "Traceback" not in log
    assert (short_tmp / "run" / "agentd.lock").exists()


def test_policy_fires_and_log_actuator_acts(short_tmp: Path) -> None:
    with AgentProcess(short_tmp, FAST.format(interval=0.1)) as agent:
        agent.wait_log(
            r"agentd\.actions: action alert: cpu is warm \[metric=system\.cpu\.percent "
            r"threshold=-1\.0 value=[\d.]+\] \(from cpu\)"
        )
        agent.wait_log(
            r"heartbeat: \d+ ticks, lateness p50 [\d.]+ ms p99 [\d.]+ ms, 0 overruns, "
            r"0 skipped, plugins 3/3 ok"
        )
        assert agent.stop() == 0
    assert agent.log().count("action alert") == 1  # cooldown holds


@pytest.mark.slow
def test_sighup_reload_changes_interval_keeps_pid(short_tmp: Path) -> None:
    with AgentProcess(short_tmp, FAST.format(interval=0.5)) as agent:
        agent.wait_log(r"tick 3:")
        pid = agent.pid
        assert agent.config_path is not None
        agent.config_path.write_text(FAST.format(interval=0.1))
        agent.signal(signal.SIGHUP)
        agent.wait_log(r"reloaded .*agentd\.toml \(generation 1\): interval 0\.1s \(was 0\.5s\)")
        before = len(tick_times(agent.log()))
        agent.wait_log(r"tick \d+:", count=before + 10)
        times = tick_times(agent.log())[-8:]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.05 < g < 0.2 for g in gaps), gaps
        assert agent.proc is not None
        assert agent.proc.poll() is None
        assert agent.pid == pid
        # a broken config is refused in one line; the old one keeps running
        agent.config_path.write_text("[agent]\ninterval = -3\n")
        agent.signal(signal.SIGHUP)
        agent.wait_log(
            r"reload refused, still running the previous config: "
            r"agent\.interval: expected a number >= 0\.01, got -3"
        )
        n = len(tick_times(agent.log()))
        agent.wait_log(r"tick \d+:", count=n + 5)
        assert "generation 2" not in agent.log()
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_second_instance_is_refused(short_tmp: Path) -> None:
    with AgentProcess(short_tmp) as first:
        first.wait_log(r"tick 1:")
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentd",
                "run",
                "--state-dir",
                str(short_tmp / "state"),
                "--runtime-dir",
                str(short_tmp / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1
        assert f"another agentd (pid {first.pid}) is running: it holds " in second.stderr
        assert "Traceback" not in second.stderr
        assert first.stop() == 0


def test_bad_config_refuses_to_start(short_tmp: Path) -> None:
    with AgentProcess(short_tmp, "[sensors.cpu]\nplugin = 'system'\ninterval = -1\n") as agent:
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
    assert agent.log().strip() == (
        "agentd: bad config: sensors.cpu.interval: expected a number >= 0.01, got -1"
    )


def test_second_sigterm_forces_exit(short_tmp: Path) -> None:
    # an action that never finishes keeps the drain stage busy; the second signal cuts it short
    config = """
[agent]
interval = 0.1
drain_timeout = 30
[sensors.system]
[policies.p]
plugin = "threshold"
metric = "system.cpu.percent"
above = -1.0
actuator = "slow"
[actuators.slow]
timeout = 60
"""
    with AgentProcess(short_tmp, config, argv=TESTPLUGINS) as agent:
        agent.wait_log(r"tick 2:")
        agent.signal(signal.SIGTERM)
        agent.wait_log(r"stopping gracefully")
        time.sleep(0.5)
        assert agent.proc is not None
        assert agent.proc.poll() is None  # still draining the slow action (up to 30 s)
        t0 = time.monotonic()
        agent.signal(signal.SIGTERM)
        code = agent.proc.wait(10)
        assert time.monotonic() - t0 < 5
    assert code == 1
    log = agent.log()
    assert "received SIGTERM again: forcing exit" in log
    assert log.rstrip().endswith("agentd: stopped")


def test_journal_stream_log_format(short_tmp: Path) -> None:
    log_path = short_tmp / "journal.log"
    log_path.touch()
    st = log_path.stat()
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentd",
                "run",
                "--state-dir",
                str(short_tmp / "s"),
                "--runtime-dir",
                str(short_tmp / "r"),
            ],
            stdout=out,
            stderr=out,
            env={**__import__("os").environ, **env},
        )
        try:
            deadline = time.monotonic() + 15
            while "started" not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log_path.read_text().splitlines()
    assert lines[0].startswith("<6>agentd: agentd 0.1.0 started")
    assert all(re.match(r"<[0-7]>", line) for line in lines)
