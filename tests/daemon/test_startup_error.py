"""``startup_error = "fail" | "skip" | "retry"`` in a real daemon subprocess: a file sensor whose
device file is missing at start (its start() reads the file)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.utils import AgentProcess

CONFIG = """
[agent]
interval = 0.1
[log]
heartbeat = 0.3
[store]
enabled = false
[control]
enabled = false
[sensors.system]
cpu = false
temperatures = false
[sensors.probe]
plugin = "file"
path = "{path}"
startup_error = "{policy}"
max_interval = 0.5
[actuators.log]
"""


def test_fail_refuses_to_start_with_one_line(short_tmp: Path) -> None:
    cfg = CONFIG.format(path=short_tmp / "missing", policy="fail")
    with AgentProcess(short_tmp, cfg) as agent:
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
        log = agent.log()
    lines = [ln for ln in log.splitlines() if "cannot start" in ln]
    assert len(lines) == 1
    assert re.search(
        r"cannot start: plugin 'probe' \(builtin\): failed to start: FileNotFoundError: .*missing",
        lines[0],
    )
    assert "Traceback" not in log


def test_skip_runs_without_it(short_tmp: Path) -> None:
    cfg = CONFIG.format(path=short_tmp / "missing", policy="skip")
    with AgentProcess(short_tmp, cfg) as agent:
        agent.wait_log(r"plugin 'probe' \(builtin\): failed to start: .*; running without it")
        agent.wait_log(r"tick 3: ")
        agent.wait_log(r"heartbeat: .*plugins 2/3 ok")
        (short_tmp / "missing").write_text("5\n")  # too late: skip means skipped
        agent.wait_log(r"heartbeat: .*plugins 2/3 ok", count=3)
        assert agent.stop() == 0
    assert "started after" not in agent.log()


def test_retry_keeps_trying_and_joins_the_loop(short_tmp: Path) -> None:
    device = short_tmp / "w1_slave"
    cfg = CONFIG.format(path=device, policy="retry")
    with AgentProcess(short_tmp, cfg) as agent:
        agent.wait_log(r"plugin 'probe' \(builtin\): failed to start: .*; retrying in background")
        agent.wait_log(r"tick \d+: \d+ readings, 0 errors")
        agent.wait_log(r"heartbeat: .*plugins 2/3 ok")
        device.write_text("t=21500\n")  # the device appears
        agent.wait_log(r"sensor 'probe' started after \d+ attempts", timeout=20)
        agent.wait_log(r"heartbeat: .*plugins 3/3 ok")
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_skipped_plugin_is_listed_by_agentctl_status(short_tmp: Path) -> None:
    import json
    import subprocess
    import sys

    cfg = CONFIG.format(path=short_tmp / "missing", policy="skip").replace(
        "[control]\nenabled = false\n", ""
    )
    with AgentProcess(short_tmp, cfg) as agent:
        agent.wait_log(r"tick 2: ")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentd",
                "ctl",
                "--socket",
                str(agent.runtime_dir / "agentd.sock"),
                "status",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert agent.stop() == 0
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["probe"]["state"] == "disabled"
    assert "FileNotFoundError" in plugins["probe"]["last_error"]
    assert plugins["system"]["state"] == "ok"
