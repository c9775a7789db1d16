"""check-config's reference checks (agentd/config_refs.py): what can never work, one line each
naming the key path, with a "did you mean" for a close name; run through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE = """
[sensors.system]
mounts = { root = "/" }
[sensors.tank]
plugin = "file"
path = "/etc/hostname"
metric = "celsius"
[actuators.log]
[actuators.ex]
plugin = "exec"
commands = { blink = ["/bin/echo", "--times", "{times}"], go = ["/bin/true"] }
[actuators.plc]
plugin = "modbus"
url = "tcp://127.0.0.1:1502"
registers = [
  { name = "setpoint", address = 100, type = "int16", min = 30.0, max = 65.0 },
  { name = "pump", table = "coil", address = 0 },
]
"""

CASES = {
    "sensor_typo": (
        "[policies.p]\nplugin = 'threshold'\nmetric = 'systen.cpu.percent'\nabove = 1.0\n",
        "policies.p.metric: no sensor named 'systen' is configured (did you mean 'system'?)",
    ),
    "metric_typo": (
        "[policies.p]\nplugin = 'rules'\n"
        "conditions = [{ metric = 'tank.celsus', op = '>', value = 1 }]\n",
        "policies.p.conditions[0].metric: sensor 'tank' has no metric 'celsus' "
        "(did you mean 'celsius'?) (it produces: celsius)",
    ),
    "metric_in_template": (
        "[policies.p]\nplugin = 'rules'\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 }]\n"
        "params = { message = 'disk {system.disk.data.free:.0f}' }\n",
        "policies.p.params.message: sensor 'system' has no metric 'disk.data.free'",
    ),
    "action_typo": (
        "[policies.p]\nplugin = 'rules'\nactuator = 'ex'\naction = 'blinc'\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 }]\n",
        "policies.p.action: actuator 'ex' has no action 'blinc' (did you mean 'blink'?) "
        "(offers: blink, go)",
    ),
    "action_of_a_fixed_actuator": (
        "[actuators.state]\nplugin = 'session'\n"
        "[policies.p]\nplugin = 'rules'\nactuator = 'state'\naction = 'put'\n"
        "params = { session = 'x', value = 1 }\nclear_action = 'remove'\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 }]\n",
        "policies.p.clear_action: actuator 'state' has no action 'remove' (offers: delete, put)",
    ),
    "placeholder_not_sent": (
        "[policies.p]\nplugin = 'rules'\nactuator = 'ex'\naction = 'blink'\n"
        "params = { time = 3 }\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 }]\n",
        "policies.p.params: actuator 'ex' action 'blink' needs {times}, which 'p' does not send",
    ),
    "param_outside_the_schema": (
        "[policies.p]\nplugin = 'rules'\nactuator = 'plc'\naction = 'setpoint'\n"
        "params = { to = 90 }\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 }]\n",
        "policies.p.params.to: 90 is greater than the maximum of 65 "
        "(actuator 'plc' action 'setpoint')",
    ),
    "clear_param_outside_the_schema": (
        "[policies.p]\nplugin = 'rules'\nactuator = 'plc'\naction = 'pump'\n"
        "params = { to = true }\nclear_action = 'pump'\nclear_params = { to = 'off' }\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 }]\n",
        "policies.p.clear_params.to: 'off' is not of type 'boolean' (actuator 'plc' action 'pump')",
    ),
    "actuator_typo": (
        "[policies.p]\nplugin = 'threshold'\nmetric = 'system.cpu.percent'\nabove = 1.0\n"
        "actuator = 'lg'\n",
        "policies.p.actuator: no actuator named 'lg' is configured (did you mean 'log'?)",
    ),
    "program_missing": (
        "[actuators.svc]\nplugin = 'exec'\ncommands = { restart = ['/nonexistent/bin/svc'] }\n",
        "actuators.svc.commands.restart[0]: '/nonexistent/bin/svc' does not exist",
    ),
    "program_relative": (
        "[actuators.svc]\nplugin = 'exec'\ncommands = { restart = ['systemctl', 'restart'] }\n",
        "actuators.svc.commands.restart[0]: 'systemctl' is not an absolute path",
    ),
    "program_not_executable": (
        "[actuators.svc]\nplugin = 'exec'\ncommands = { restart = ['TMP/data'] }\n",
        "actuators.svc.commands.restart[0]: 'TMP/data' is not executable",
    ),
    "sensor_program_missing": (
        "[sensors.q]\nplugin = 'command'\nargv = ['/nonexistent/queue-depth']\n",
        "sensors.q.argv[0]: '/nonexistent/queue-depth' does not exist",
    ),
}


def check(path: Path | None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "agentd", "check-config"] + ([str(path)] if path else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, env=env)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_that_can_never_work_is_one_line(tmp_path: Path, case: str) -> None:
    extra, expected = (t.replace("TMP", str(tmp_path)) for t in CASES[case])
    (tmp_path / "data").write_text("not a program\n")
    (tmp_path / "data").chmod(0o644)
    path = tmp_path / "agentd.toml"
    path.write_text(BASE + extra)
    out = check(path)
    assert out.returncode == 1, out
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert [line for line in lines if line.startswith(expected)], lines
    assert len(lines) == 1, lines
    assert "Traceback" not in out.stderr


def test_good_references_pass_and_a_template_extra_is_not_a_metric(tmp_path: Path) -> None:
    path = tmp_path / "agentd.toml"
    path.write_text(
        BASE + "[policies.p]\nplugin = 'rules'\nactuator = 'ex'\naction = 'blink'\n"
        "params = { times = '{tank.celsius:.0f}', at = '{tick}' }\nclear_action = 'go'\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 },"
        " { metric = 'system.temp.cpu_thermal.0', op = '>', value = 1 }]\n"
        "[policies.q]\nplugin = 'rate'\nmetric = 'system.disk.root.free'\nbelow = -1.0\n"
        "actuator = 'log'\nparams = { message = '{rate}' }\n"
        # a placeholder is only known when the policy fills it: not checked against the schema
        "[policies.r]\nplugin = 'rules'\nactuator = 'plc'\naction = 'setpoint'\n"
        "params = { to = '{tank.celsius:.0f}' }\nclear_action = 'setpoint'\n"
        "clear_params = { to = 45 }\n"
        "conditions = [{ metric = 'tank.celsius', op = '>', value = 1 }]\n"
    )
    out = check(path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "ok\n", "")


def test_without_a_file_it_names_the_config_it_checked(tmp_path: Path) -> None:
    env = {**os.environ, "CONFIGURATION_DIRECTORY": str(tmp_path)}
    out = check(None, env)
    assert (out.returncode, out.stdout, out.stderr) == (0, "ok: embedded default\n", "")
    (tmp_path / "agentd.toml").write_text(BASE)
    out = check(None, env)
    assert (out.returncode, out.stdout) == (0, f"ok: {tmp_path / 'agentd.toml'}\n")
