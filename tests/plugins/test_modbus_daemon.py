"""Dead Modbus devices in a real `agentd run`: a TCP device and an RTU device (on a socat pty
pair) that stop answering (their server process is stopped with SIGSTOP: connections stay
open, nothing answers) make only their own sensors degraded, while the `system` sensor is read
every tick and the loop keeps its schedule; they recover when the devices answer again; the
RTU line going away (socat killed) degrades only the RTU sensor; a write out of range is
refused by `agentctl act` in one line and never reaches the device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.control.helpers import ctl as ctl_at
from tests.plugins.modbus_helpers import stand_ins
from tests.utils import AgentProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

INTERVAL = 0.2
CONFIG = """
[agent]
interval = {interval}
[log]
heartbeat = 0
[store]
enabled = false
[sensors.system]
plugin = "system"
[sensors.tcp_meter]
plugin = "modbus"
url = "{tcp}"
request_timeout = 0.1
connect_timeout = 0.1
reconnect_max = 1.0
degraded_after = 3
max_interval = 1.0
registers = [{{ name = "power", table = "input", address = 0x34, type = "float32" }}]
[sensors.rtu_meter]
plugin = "modbus"
url = "rtu://{tty}?baud=9600"
request_timeout = 0.1
connect_timeout = 0.1
reconnect_max = 1.0
degraded_after = 3
max_interval = 1.0
registers = [{{ name = "power", table = "input", address = 0x34, type = "float32" }}]
[actuators.plc]
plugin = "modbus"
url = "{tcp}"
request_timeout = 0.5
registers = [{{ name = "setpoint", address = 100, type = "int16", scale = 0.1, max = 65.0 }}]
"""


def status(agent: AgentProcess) -> dict[str, Any]:
    proc = ctl_at(agent.runtime_dir / "agentd.sock", "--json", "status")
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def plugin(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in report["plugins"] if p["name"] == name)
    return found


def assert_system_keeps_time(agent: AgentProcess, seconds: float) -> None:
    """Over ``seconds``, the system sensor is read on every tick and the loop skips none."""
    before = status(agent)
    time.sleep(seconds)
    after = status(agent)
    ticks = after["loop"]["ticks"] - before["loop"]["ticks"]
    calls = plugin(after, "system")["calls"] - plugin(before, "system")["calls"]
    assert ticks >= 0.5 * seconds / INTERVAL, (before["loop"], after["loop"])
    assert abs(calls - ticks) <= 1, (calls, ticks)
    assert after["loop"]["skipped"] == before["loop"]["skipped"], after["loop"]
    assert plugin(after, "system")["state"] == "ok"


def test_dead_devices_degrade_only_their_own_sensors(short_tmp: Path) -> None:
    with stand_ins(short_tmp / "modbus") as devices:
        text = CONFIG.format(interval=INTERVAL, tcp=devices.tcp, tty=devices.tty)
        with AgentProcess(short_tmp, text, log_level="info") as agent:
            agent.wait_log(r"agentd \S+ started")
            sock = agent.runtime_dir / "agentd.sock"
            wait_for(lambda: ctl_at(sock, "ping").returncode == 0, 15, what="the control socket")

            def read_ok(name: str) -> bool:
                p = plugin(status(agent), name)
                return bool(p["calls"] > 2 and p["consecutive_failures"] == 0)

            wait_for(lambda: read_ok("tcp_meter") and read_ok("rtu_meter"), 20, what="reads")

            # both devices stop answering (their process is stopped)
            os.kill(devices.proc.pid, signal.SIGSTOP)
            try:
                agent.wait_log(r"sensor 'tcp_meter' degraded after 3 failures", 20)
                agent.wait_log(r"sensor 'rtu_meter' degraded after 3 failures", 20)
                assert_system_keeps_time(agent, 2.0)
                report = status(agent)
                assert plugin(report, "tcp_meter")["state"] == "degraded"
                assert "no answer within 0.1s" in plugin(report, "tcp_meter")["last_error"] or (
                    "timed out" in plugin(report, "tcp_meter")["last_error"]
                )
            finally:
                os.kill(devices.proc.pid, signal.SIGCONT)
            agent.wait_log(r"sensor 'tcp_meter' recovered", 30)
            agent.wait_log(r"sensor 'rtu_meter' recovered", 30)

            # the out-of-range write is refused in one line, before any request
            refused = ctl_at(sock, "act", "plc", "setpoint", "--param", "to=70")
            assert refused.returncode != 0
            assert "params.to: 70 is greater than the maximum of 65" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            done = ctl_at(sock, "act", "plc", "setpoint", "--param", "to=55")
            assert done.returncode == 0, done.stderr

            # the RS-485 adapter goes away: only the RTU sensor degrades
            os.kill(devices.socat, signal.SIGTERM)
            agent.wait_log(r"sensor 'rtu_meter' (failing|degraded)", 20)
            assert_system_keeps_time(agent, 2.0)
            report = status(agent)
            assert plugin(report, "tcp_meter")["consecutive_failures"] == 0
            assert plugin(report, "rtu_meter")["consecutive_failures"] > 0
            assert "rtu://" in plugin(report, "rtu_meter")["last_error"]

            assert agent.stop(15) == 0
            log = agent.log()
    assert "Traceback" not in log
    assert "pymodbus" not in log  # its own per-request warnings stay out of the journal


def test_agentctl_act_reaches_the_device(short_tmp: Path) -> None:
    with stand_ins(short_tmp / "modbus") as devices:
        text = CONFIG.format(interval=INTERVAL, tcp=devices.tcp, tty=devices.tty)
        with AgentProcess(short_tmp, text, log_level="info") as agent:
            sock = agent.runtime_dir / "agentd.sock"
            wait_for(lambda: ctl_at(sock, "ping").returncode == 0, 15, what="the control socket")
            done = ctl_at(sock, "--json", "act", "plc", "setpoint", "--param", "to=55")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["output"] == {
                "register": "setpoint",
                "address": 100,
                "to": 55,
                "raw": 550,
            }
            # read it back through a one-off sensor config with `agentd test`
            probe = short_tmp / "probe.toml"
            probe.write_text(
                f'[sensors.probe]\nplugin = "modbus"\nurl = "{devices.tcp}"\n'
                'registers = [{ name = "sp", address = 100, type = "int16", scale = 0.1 }]\n'
            )
            out = subprocess.run(
                [*agent.cmd[:3], "test", "--config", str(probe), "--ticks", "1"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert any(
                line.split()[:3] == ["probe", "sp", "55"] for line in out.stdout.splitlines()
            )
            assert agent.stop(15) == 0
